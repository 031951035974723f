"""A lab's life: up, provision, verify, snapshot, reset, stop, status, list, ssh, down."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import sys
import textwrap
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from labkit import box, home, labfile, lock
from labkit.apply.ssh import NodeResult
from labkit.boot import booking, inventory, leftovers, libvirt, target
from labkit.boot.vagrant import Accel
from labkit.cli.common import (
    AccelOpt,
    AsOpt,
    BoxOpt,
    ConnectOpt,
    JsonOpt,
    KernelOpt,
    LabArg,
    ProviderOpt,
    RunningArg,
    columns,
    handled,
    out,
    say,
    warn,
)
from labkit.errors import LabkitError
from labkit.labfile import Lab
from labkit.labfile.model import host_port
from labkit.operate.show import Widest, left_out, packed
from labkit.render.vagrantfile import Provider
from labkit.running import RunningLab
from labkit.verify import run

app = typer.Typer()


class Progress:
    """What Vagrant says per node while the lab boots: a live table on a terminal, a line per
    event in logs and CI."""

    def __init__(self, nodes: list[str]) -> None:
        self.latest = {node: "waiting" for node in nodes}
        self.started = time.monotonic()
        self.live: Live | None = None

    def table(self) -> Table:
        t = Table(title=f"booting ({time.monotonic() - self.started:.0f} s)", title_justify="left")
        t.add_column("node")
        t.add_column("vagrant says")
        for node, message in self.latest.items():
            t.add_row(node, message)
        return t

    def __call__(self, node: str, message: str) -> None:
        self.latest[node] = message[:100]
        if self.live is not None:
            self.live.update(self.table())
        else:
            out.print(
                f"{time.monotonic() - self.started:6.0f}s {node}: {escape(message)}", highlight=False, soft_wrap=True
            )

    def __enter__(self) -> Progress:
        if out.is_terminal:
            self.live = Live(self.table(), console=out, refresh_per_second=2)
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)


def report(result: NodeResult) -> None:
    state = "[red]failed[/]" if result.error else f"{len(result.changed)} changed"
    out.print(f"  {result.node}: {state}")
    for why in result.changed:
        out.print(f"    [dim]+ {why}[/]", highlight=False, soft_wrap=True)


def provisioned(name: str, results: list[NodeResult], started: float) -> None:
    total = sum(len(r.changed) for r in results)
    out.print(f"provisioned {name}: {total} changes in {time.monotonic() - started:.1f} s")


def _snapshot(running: RunningLab) -> float | None:
    """Snapshot on libvirt: the seconds it took (None elsewhere)."""
    if not running.on_libvirt:
        return None
    started = time.monotonic()
    running.snapshot()
    seconds = round(time.monotonic() - started, 1)
    out.print(f"snapshot taken in {seconds:.0f} s (labkit reset {running.name} comes back to it)")
    return seconds


@app.command()
@handled
def up(
    lab: LabArg,
    box_name: BoxOpt = box.DEFAULT_BOX,
    kernel: KernelOpt = None,
    provider: ProviderOpt = Provider.libvirt,
    accel: AccelOpt = Accel.auto,
    as_name: AsOpt = None,
    connect: ConnectOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Progress on stderr, then the result as one JSON object on stdout.")
    ] = False,
    snapshot: Annotated[
        bool,
        typer.Option(
            "--snapshot/--no-snapshot",
            help="Take the snapshot labkit reset goes back to (seconds; a matrix cell, never reset, skips it).",
        ),
    ] = True,
) -> None:
    """Boot a lab's VMs and configure them (render, boot, provision).

    Example: labkit up tun"""
    results = sys.stdout
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():  # `out` follows sys.stdout
        source, model = labfile.lab_file(lab), labfile.read_lab(lab)
        name = target.copy_name(as_name) or model.name
        chosen = target.box_to_boot(box_name, kernel)
        booked = target.target_for(source, chosen, provider, accel, name, target.uri_for(connect), warn)
        booked = dataclasses.replace(booked, kernel=kernel)  # for the lab's record
        again = target.up_command(lab, box_name, kernel, as_name, connect)
        with lock.changing(name, "up", up=again):
            # Each node is provisioned as soon as it answers, while the others still boot.
            done: list[NodeResult] = []
            with Progress(list(model.nodes)) as progress:
                running, booted = booking.boot(
                    model, source, booked, progress, lambda line: say(f"repaired: {line}"), done.append
                )
            boot_seconds = round(booted - progress.started, 1)
            out.print(f"booted {len(model.nodes)} nodes in {boot_seconds:.0f} s")
            for result in done:
                report(result)
            after = round(time.monotonic() - booted, 1)
            changes = sum(len(r.changed) for r in done)
            out.print(f"provisioned {name}: {changes} changes, done {after:.1f} s after the boot")
            with running:
                taken = _snapshot(running) if snapshot else None
                figures = {"provision_seconds": after, "changes": changes, "snapshot_seconds": taken}
        copy = f" (a copy of {model.name})" if name != model.name else ""
        where = f" on {libvirt.shown(booked.uri)}" if booked.uri else ""
        out.print(f"\n[bold]{name} is up{copy}{where}.[/] Next: [bold]labkit verify {name}[/]", highlight=False)
    if as_json:
        made = running.booked
        facts = {"name": made.name, "lab": made.lab, "uri": made.uri, "box": made.box, "kernel": made.kernel}
        results.write(json.dumps({**facts, "release": made.release, "boot_seconds": boot_seconds, **figures}) + "\n")


@app.command()
@handled
def provision(lab: RunningArg = None) -> None:
    """Push the lab's configuration to its running VMs again (changes only what differs).

    Example: labkit provision nat"""
    with RunningLab.find(lab) as running, lock.changing(running.name, "provision"):
        if lab is not None and labfile.lab_file(lab).exists():
            running.adopt(labfile.lab_file(lab))  # the lab file may have been edited since `up`
        started = time.monotonic()
        provisioned(running.name, running.provision(on_done=report), started)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@handled
def verify(
    ctx: typer.Context,
    lab: RunningArg = None,
    junitxml: Annotated[Path | None, typer.Option(help="Write a JUnit XML report here.")] = None,
) -> None:
    """Check the running lab with pytest + testinfra. Extra arguments go to pytest (e.g. -k split).

    Example: labkit verify nat -k split"""
    running = RunningLab.find(lab)
    args = list(ctx.args) + ([f"--junitxml={junitxml}"] if junitxml else [])
    with lock.changing(running.name, "verify"):  # its failure scenarios break the lab and heal it
        code = run.verify(running.folder, running.ssh_config, args)
    if code == run.NONE_CHOSEN:
        raise LabkitError(
            f"no check of {running.name} matches {shlex.join(ctx.args)}. "
            f"List them with: labkit verify {running.name} --collect-only -q"
        )
    raise typer.Exit(code)


@app.command()
@handled
def snapshot(lab: RunningArg = None) -> None:
    """Keep the running lab's state (every VM's memory and disks) for labkit reset. labkit up takes one.

    Example: labkit snapshot nat"""
    with RunningLab.find(lab) as running, lock.changing(running.name, "snapshot"):
        started = time.monotonic()
        running.snapshot()
    out.print(
        f"{running.name}: snapshot taken in {time.monotonic() - started:.0f} s. labkit reset {running.name} goes back to it"
    )


@app.command()
@handled
def reset(lab: RunningArg = None) -> None:
    """Put the lab back as its snapshot has it (as labkit up left it): every VM's memory and disks, the IPVS tables and keepalived's state, in seconds.

    Example: labkit reset nat"""
    with RunningLab.find(lab) as running, lock.changing(running.name, "reset"):
        started = time.monotonic()
        running.reset()
    out.print(f"{running.name} reset in {time.monotonic() - started:.0f} s")


@app.command()
@handled
def stop(lab: RunningArg = None) -> None:
    """Stop the lab with every VM's memory saved to disk, freeing the host's memory and cores; labkit up resumes it as it was, in seconds.

    Example: labkit stop nat"""
    with RunningLab.find(lab) as running, lock.changing(running.name, "stop"):
        started = time.monotonic()
        nodes = running.stop()
    out.print(
        f"{running.name} stopped in {time.monotonic() - started:.0f} s, the memory of {', '.join(nodes)} "
        f"saved to disk. Resume it as it was with: [bold]labkit up {running.name}[/]",
        highlight=False,
    )


@app.command()
@handled
def status(lab: RunningArg = None) -> None:
    """Nodes of a lab, their state and addresses.

    Example: labkit status nat"""
    running = RunningLab.find(lab)
    where = "" if libvirt.is_local(running.uri) else libvirt.shown(running.uri)
    if running.on_libvirt:
        seen = running.health()
        out.print(status_view(running.lab, running.name, where, seen.vms, out.width))
        for line in running.problems(seen):
            warn(line)
    else:
        out.print(status_view(running.lab, running.name, where, running.status(), out.width))


def status_view(lab: Lab, name: str, where: str, states: dict[str, str], width: int) -> RenderableType:
    """`labkit status`: the nodes' table, a node's addresses on one line when the table fits in `width`
    and one under the other otherwise; then each service on as many lines as fit."""
    copy = f" (copy {name})" if name != lab.name else ""
    title = f"lab {lab.name}{copy}{f' on {where}' if where else ''}: {lab.description}"
    addresses = {
        node: [f"{net} {addr}" for net, addr in [*n.addresses.items(), *n.addresses6.items()]]
        for node, n in lab.nodes.items()
    }
    tables = []
    for joint in (", ", "\n"):
        table = Table(title=title, title_justify="left")
        for heading in ("node", "role", "state", "addresses"):
            table.add_column(heading, overflow="fold")
        for node, n in lab.nodes.items():
            table.add_row(node, n.role.value, states.get(node, "?"), joint.join(addresses[node]))
        tables.append((table, []))
    services = [
        packed(
            f"{svc.key} {svc.scheduler} {svc.forwarding.value} ->",
            [f"{host_port(rs.address, svc.real_port(rs))} w{rs.weight}" for rs in svc.real_servers],
            width,
            joint=",",
        )
        for svc in lab.services
    ]
    return Group(Widest(*tables), *[Text("\n".join(lines)) for lines in services])


@app.command("list")
@handled
def list_cmd(as_json: JsonOpt = False) -> None:
    """Every lab and copy on every libvirt host labkit knows (this one, those labs run on, and those in LABKIT_HOME/config.yaml): host, lab, copy, state, kernel, memory in use, age.

    Example: labkit list --json"""
    rows = inventory.inventory(list(home.hosts().values()))
    if as_json:
        sys.stdout.write(json.dumps([dataclasses.asdict(r) for r in rows], indent=2) + "\n")
        return
    if not rows:
        out.print("no lab is up. Start one with: labkit up nat (a copy: labkit up nat --as NAME)")
        return
    for line in list_lines(rows, out.width):
        say(line)


def list_lines(rows: list[inventory.Listed], width: int) -> list[str]:
    """`labkit list`'s columns in `width`: age, memory and then kernel are left out when they do not fit."""
    table = [("host", "lab", "copy", "state", "kernel", "memory", "age")]
    for r in rows:
        table.append((libvirt.shown(r.host), r.lab, r.name, r.state, r.kernel, f"{r.memory_mib} MiB", _age(r.age_s)))
    lines, dropped = columns(table, width, droppable=("age", "memory", "kernel"))
    return lines + (textwrap.wrap(left_out(dropped), width) if dropped else [])


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "not ours"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


@app.command()
@handled
def ssh(node: str, lab: Annotated[str | None, typer.Option(help="The lab, when several are up.")] = None) -> None:
    """Open a shell on a node.

    Example: labkit ssh lb0 --lab nat"""
    running = RunningLab.find(lab)
    if node not in running.lab.nodes:
        raise LabkitError(f"the lab {running.name} has no node {node!r}. Its nodes: {', '.join(running.lab.nodes)}")
    os.execvp("ssh", ["ssh", "-F", str(running.ssh_config), node])


@app.command()
@handled
def down(
    lab: RunningArg = None,
    remove_leftovers: Annotated[
        bool,
        typer.Option(
            "--leftovers", help="The lab has no folder here: remove what libvirt holds under its name anyway."
        ),
    ] = False,
    as_name: Annotated[
        str | None, typer.Option("--as", help="With --leftovers: the copy of the lab whose leftovers to remove.")
    ] = None,
    connect: ConnectOpt = None,
) -> None:
    """Remove the lab's VMs, their volumes and the lab's networks (one copy's only).

    Example: labkit down nat"""
    started = time.monotonic()
    up_here = RunningLab.names()
    if as_name is not None or (lab is not None and lab not in up_here):
        name, removed = leftovers.down(lab, as_name, up_here, connect, really=remove_leftovers)
        out.print(f"{name} was not up; removed what libvirt still held of it: {', '.join(removed)}")
        return
    running = RunningLab.find(lab)
    with lock.changing(running.name, "down"):
        running.destroy()
    out.print(f"{running.name} is down ({time.monotonic() - started:.0f} s)")
