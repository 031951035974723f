"""The `labkit` command: arguments in, what happened printed. The work is done by the lab's
modules: labfile (the lab file), build (what it needs), run (a running lab), operate, describe."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from labkit import box, home, labfile, lock
from labkit.apply.ssh import NodeResult
from labkit.boot import booking, doctor, inventory, libvirt
from labkit.boot.vagrant import Accel, driver
from labkit.describe import explain as explain_mod
from labkit.describe import graph as graph_mod
from labkit.errors import LabkitError
from labkit.labfile import Lab, LabError, Protocol, VirtualService, with_weight
from labkit.labfile import read_lab as read
from labkit.labfile.model import HOSTNAME, host_port
from labkit.operate import (
    bench as bench_mod,
)
from labkit.operate import (
    failover,
    matrix_report,
)
from labkit.operate import (
    matrix as matrix_mod,
)
from labkit.operate import (
    show as show_mod,
)
from labkit.operate import (
    trace as trace_mod,
)
from labkit.render.vagrantfile import TCG_EMULATOR, Provider, Target
from labkit.render.vagrantfile import render as render_vagrantfile
from labkit.running import RunningLab
from labkit.verify import run as verify_mod

app = typer.Typer(
    help="Linux Virtual Server labs on real virtual machines.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
box_app = typer.Typer(help="The Vagrant box labs boot from.", no_args_is_help=True)
app.add_typer(box_app, name="box")

out = Console()
err = Console(stderr=True)


def handled(command):
    """Expected failures become their message on stderr and their exit status, not a
    traceback; each problem of a lab file is a line of its own."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except LabkitError as exc:
            lines = str(exc).splitlines() if isinstance(exc, LabError) else [str(exc)]
            for line in lines:
                err.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True, markup=True)
            raise typer.Exit(exc.code) from None

    return run


LabArg = Annotated[str, typer.Argument(help="A lab name (nat, tun, dr, fwmark), its folder, or a lab.yaml path.")]
RunningArg = Annotated[str | None, typer.Argument(help="The lab; may be left out when only one is up.")]
BoxOpt = Annotated[
    str, typer.Option("--box", help="Vagrant box to boot; any other than labkit's gets the lab packages installed.")
]
ProviderOpt = Annotated[Provider, typer.Option(help="Vagrant provider.")]
AccelOpt = Annotated[
    Accel, typer.Option(help="libvirt: KVM, or QEMU software emulation (tcg); auto uses KVM when it works.")
]
KERNEL_HELP = (
    f"A Debian suite whose linux-image-amd64 to use ({', '.join(box.SUITES)}) or the path of a linux-image-*.deb."
)
KernelOpt = Annotated[
    str | None, typer.Option(help=KERNEL_HELP + " Boots the box labkit box build --kernel made for it.")
]
AsOpt = Annotated[
    str | None,
    typer.Option(
        "--as",
        help="Run a copy of the lab under this name: its own VMs and networks; every command then takes the name.",
    ),
]
ConnectOpt = Annotated[
    str | None,
    typer.Option(
        "--connect",
        help="Another host's libvirt, qemu+ssh://user@host/system, or a host named in LABKIT_HOME/config.yaml.",
    ),
]
ServiceOpt = Annotated[
    str | None,
    typer.Option(
        "--service", help="The service, as labkit status lists it (e.g. 'tcp 192.168.55.100:80'); default the first."
    ),
]


def box_to_boot(box_name: str, kernel: str | None) -> str:
    if kernel is None:
        return box_name
    if box_name != box.DEFAULT_BOX:
        raise LabkitError(f"--kernel {kernel} and --box {box_name} both choose the box: give one of them")
    return box.box_for_kernel(kernel)


def copy_name(name: str | None) -> str | None:
    if name is not None and not HOSTNAME.match(name):
        raise LabkitError(
            f"--as {name}: a copy's name becomes part of its VMs' and networks' names. "
            "Use lower-case letters, digits and '-'"
        )
    return name


def uri_for(connect: str | None) -> str:
    return libvirt.uri_for(connect, home.hosts()) if connect else libvirt.LOCAL


def target_for(
    source: Path,
    box_name: str,
    provider: Provider,
    accel: Accel,
    warn: bool,
    name: str | None = None,
    uri: str = libvirt.LOCAL,
) -> Target:
    domain, fallback = driver(provider, accel, uri)
    if warn and fallback:
        err.print(f"[yellow]warning:[/] {fallback}: using QEMU software emulation, labs will be slow", soft_wrap=True)
    key = home.key() if box.is_labkit_box(box_name) else None
    # type and key only: the comment is free text, and the key is all the guest needs
    public = " ".join(key.with_suffix(".pub").read_text().split()[:2]) if key else None
    local = libvirt.is_local(uri)
    wrapper = os.access(TCG_EMULATOR, os.X_OK) if local else libvirt.has_emulator(uri, TCG_EMULATOR)
    emulator = TCG_EMULATOR if domain == "qemu" and wrapper else None
    return Target(
        provider=provider,
        box=box_name,
        driver=domain,
        emulator=emulator,
        private_key=str(key) if key else None,
        public_key=public,
        source=labfile.shown(source),
        name=name,
        uri=None if local else uri,
    )


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


# What an interrupted command leaves, and the command that goes on from there.
LEFT = {
    "provision": "{name}'s nodes may be partly configured. Finish with: labkit provision {name}",
    "weight": "{name}'s directors may be partly reconfigured. Finish with: labkit provision {name}",
    "verify": "a failure scenario may have left {name} broken. Bring it back with: labkit heal {name}",
    "fail": "{name} may be broken (the load on the client stopped with labkit). Bring it back with: labkit heal {name}",
    "heal": "{name} may be partly healed. Finish with: labkit heal {name}",
    "down": "{name} is partly removed. Finish with: labkit down {name}",
    "snapshot": "{name}'s snapshot may be partial. Take it again with: labkit snapshot {name}",
    "reset": "{name} may be partly reset. Reset it again with: labkit reset {name}",
}


def writing(running: RunningLab, command: str):
    return lock.writing(running.name, command, LEFT[command].format(name=running.name))


def pick_service(model: Lab, key: str | None, udp: bool = False) -> VirtualService:
    """The service named by its key, or the first TCP one; UDP services only where `udp`."""
    usable = (Protocol.tcp, Protocol.udp) if udp and key is not None else (Protocol.tcp,)
    svc = next((s for s in model.services if key in (None, s.key) and s.protocol in usable), None)
    if svc is None:
        raise LabkitError(
            f"the lab {model.name} has no {' or '.join(p.value.upper() for p in usable)} service {key!r}. "
            f"Its services: {', '.join(s.key for s in model.services)}"
        )
    return svc


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
) -> None:
    """Boot a lab's VMs and configure them (render, boot, provision)."""
    source = labfile.lab_file(lab)
    model = read(lab)
    name = copy_name(as_name) or model.name
    target = target_for(
        source, box_to_boot(box_name, kernel), provider, accel, warn=True, name=name, uri=uri_for(connect)
    )
    same = f" --kernel {kernel}" if kernel else (f" --box {box_name}" if box_name != box.DEFAULT_BOX else "")
    same += (f" --as {name}" if as_name else "") + (f" --connect {connect}" if connect else "")
    with lock.writing(
        name,
        "up",
        f"{name} is partly up. Continue with: labkit up {lab}{same}; or remove what was made: labkit down {name}",
    ):
        with Progress(list(model.nodes)) as progress:
            running = booking.boot(model, source, target, progress)
        out.print(f"booted {len(model.nodes)} nodes in {time.monotonic() - progress.started:.0f} s")
        with running:
            started = time.monotonic()
            provisioned(name, running.provision(on_done=report), started)
            if running.on_libvirt:
                started = time.monotonic()
                running.snapshot()
                out.print(
                    f"snapshot taken in {time.monotonic() - started:.0f} s (labkit reset {name} comes back to it)"
                )
    copy = f" (a copy of {model.name})" if name != model.name else ""
    where = f" on {libvirt.shown(target.uri)}" if target.uri else ""
    out.print(f"\n[bold]{name} is up{copy}{where}.[/] Next: [bold]labkit verify {name}[/]", highlight=False)


@app.command()
@handled
def provision(lab: RunningArg = None) -> None:
    """Push the lab's configuration to its running VMs again (changes only what differs)."""
    with RunningLab.find(lab) as running, writing(running, "provision"):
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
    """Check the running lab with pytest + testinfra. Extra arguments go to pytest (e.g. -k split)."""
    running = RunningLab.find(lab)
    args = list(ctx.args) + ([f"--junitxml={junitxml}"] if junitxml else [])
    with writing(running, "verify"):  # its failure scenarios break the lab and heal it
        code = verify_mod.verify(running.folder, running.ssh_config, args)
    raise typer.Exit(code)


@app.command()
@handled
def show(
    lab: RunningArg = None,
    connections: Annotated[bool, typer.Option("--connections", help="The connection tables instead.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Both directors' IPVS tables side by side: services, real servers, weights, connections,
    counters and rates; which director is active."""
    with RunningLab.find(lab) as running:
        model = running.lab
        commands = dict(show_mod.COMMANDS)
        if connections:
            commands["connections"] = show_mod.CONNECTIONS_COMMAND
        outputs = running.run_on(model.directors, commands)
    states = [show_mod.director_state(model, name, outputs[name]) for name in model.directors]
    if as_json:
        sys.stdout.write(json.dumps(show_mod.as_json(model, states), indent=2) + "\n")
    elif connections:
        out.print(show_mod.connections_view(model, states))
    else:
        out.print(show_mod.view(model, states))


@app.command()
@handled
def bench(
    lab: RunningArg = None,
    service: ServiceOpt = None,
    requests: Annotated[int, typer.Option(min=1, max=bench_mod.MAX_REQUESTS, help="How many requests.")] = 2000,
    concurrency: Annotated[int, typer.Option(min=1, max=bench_mod.MAX_CONCURRENCY, help="How many at once.")] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """A bounded load from the client against the VIP (ApacheBench): requests per second,
    latency percentiles, errors, and the split per real server as IPVS counted it."""
    with RunningLab.find(lab) as running:
        model = running.lab
        svc = pick_service(model, service)
        director, result = bench_mod.bench(running, svc, requests, concurrency)
    if as_json:
        sys.stdout.write(json.dumps({"service": svc.key, "director": director, **dataclasses.asdict(result)}) + "\n")
        return
    out.print(
        f"{svc.key} ({svc.scheduler}, {svc.forwarding.value}) via {director}: {requests} requests, "
        f"{concurrency} at a time, from {model.clients[0]}",
        highlight=False,
        markup=False,
    )
    out.print(
        f"  {result.per_second:.1f} requests/s, mean {result.mean_ms:.1f} ms; completed {result.complete}, "
        f"failed {result.failed}",
        highlight=False,
    )
    out.print(
        "  latency ms: " + ", ".join(f"p{p} {ms}" for p, ms in result.percentiles.items() if p in (50, 90, 99, 100)),
        highlight=False,
    )
    total = sum(result.split.values()) or 1
    out.print(
        "  split: " + ", ".join(f"{name} {n} ({100 * n / total:.0f}%)" for name, n in sorted(result.split.items())),
        highlight=False,
        markup=False,
    )


@app.command()
@handled
def trace(lab: RunningArg = None, service: ServiceOpt = None) -> None:
    """Send one request from the client while tcpdump listens on the director and the real
    servers; print the packet's path hop by hop."""
    with RunningLab.find(lab) as running:
        model = running.lab
        svc = pick_service(model, service, udp=True)
        seen = trace_mod.trace(running, svc)
    out.print(
        f"{model.clients[0]} asked {seen.url} from port {seen.client_port}; {seen.answer} answered "
        f"({svc.forwarding.value}).\n",
        highlight=False,
        markup=False,
    )
    for title, path in (("request", seen.request), ("reply", seen.reply)):
        out.print(f"[bold]{title}[/]")
        for hop in path:
            out.print(f"  {hop.node + ' ' + hop.interface:10} {trace_mod.describe(model, hop.packet)}", highlight=False)
            if hop.note:
                out.print(f"  {'':10} [dim]{hop.note}[/]", highlight=False)
    if not seen.request or not seen.reply:
        raise LabkitError("the capture missed the request or the reply: run labkit trace again")


@app.command()
@handled
def weight(
    lab: Annotated[str, typer.Argument(help="The running lab.")],
    real_server: Annotated[str, typer.Argument(help="A real server node, e.g. rs0.")],
    new_weight: Annotated[int, typer.Argument(metavar="WEIGHT", help="0 drains it: no new connections.")],
    service: Annotated[str | None, typer.Option(help="Only this service, e.g. 'tcp 192.168.55.100:80'.")] = None,
) -> None:
    """Change a real server's weight on the running directors, without restarting anything."""
    with RunningLab.find(lab) as running, writing(running, "weight"):
        changed = with_weight(running.lab, real_server, new_weight, service)
        running.provision(changed, nodes=changed.directors)
        # The lab as it now runs: verify checks this split, `labkit provision <lab>` restores the file's.
        running.record(changed, f"labkit weight {real_server} {new_weight}")
    for svc in changed.services_of(real_server):
        weights = ", ".join(f"{changed.node_at(rs.address)} {rs.weight}" for rs in svc.real_servers)
        out.print(f"{svc.key} {svc.scheduler}: {weights}", highlight=False, markup=False)
    how = "keepalived reloaded" if changed.ha else "ipvsadm -e"
    out.print(f"applied on {', '.join(changed.directors)} ({how}). labkit verify {changed.name} checks the new split.")


@app.command()
@handled
def fail(
    lab: Annotated[str, typer.Argument(help="The running lab.")],
    target: Annotated[
        str,
        typer.Argument(
            help="NODE (freeze its VM), NODE:SERVICE (stop keepalived or nginx), NODE:NETWORK (take that link down)."
        ),
    ],
    seconds: Annotated[float, typer.Option(min=6, max=120, help="How long the client's load runs.")] = 16,
) -> None:
    """Break part of a running lab under a bounded load from the client, and show what the client saw."""
    with RunningLab.find(lab) as running, writing(running, "fail"):
        broken = failover.parse_target(running.lab, target)
        out.print(
            f"load from {running.lab.clients[0]} for {seconds:.0f} s; {broken.what} "
            f"{failover.LEAD_SECONDS} s after it starts ...",
            highlight=False,
        )
        result = failover.fail(running, broken, seconds)
    for line in result.lines():
        out.print(line, highlight=False)
    out.print(f"\nStill broken. Bring it back with: [bold]labkit heal {running.name}[/]")


@app.command()
@handled
def heal(lab: RunningArg = None) -> None:
    """Undo every failure: resume frozen nodes, restart services, raise links; wait until the lab is whole."""
    with RunningLab.find(lab) as running, writing(running, "heal"):
        seconds, load = failover.heal(running)
    served = ", ".join(f"{k} {v}" for k, v in sorted(load.served().items()))
    out.print(
        f"{running.name} healed in {seconds:.0f} s: {len(load.requests)} requests, failed {load.failed}, "
        f"served by {served or 'nobody'}",
        highlight=False,
    )


@app.command()
@handled
def snapshot(lab: RunningArg = None) -> None:
    """Keep the running lab's state (every VM's memory and disks) for labkit reset. labkit up takes one."""
    with RunningLab.find(lab) as running, writing(running, "snapshot"):
        started = time.monotonic()
        running.snapshot()
    out.print(
        f"{running.name}: snapshot taken in {time.monotonic() - started:.0f} s. labkit reset {running.name} goes back to it"
    )


@app.command()
@handled
def reset(lab: RunningArg = None) -> None:
    """Put the lab back as its snapshot has it (as labkit up left it): every VM's memory and disks,
    the IPVS tables and keepalived's state, in seconds."""
    with RunningLab.find(lab) as running, writing(running, "reset"):
        started = time.monotonic()
        running.reset()
    out.print(f"{running.name} reset in {time.monotonic() - started:.0f} s")


@app.command()
@handled
def status(lab: RunningArg = None) -> None:
    """Nodes of a lab, their state and addresses."""
    running = RunningLab.find(lab)
    model, states = running.lab, running.status()
    copy = f" (copy {running.name})" if running.name != model.name else ""
    where = "" if libvirt.is_local(running.uri) else f" on {libvirt.shown(running.uri)}"
    table = Table(title=f"lab {model.name}{copy}{where}: {model.description}", title_justify="left")
    table.add_column("node")
    table.add_column("role")
    table.add_column("state")
    table.add_column("addresses")
    for name, node in model.nodes.items():
        addresses = ", ".join(f"{net} {addr}" for net, addr in [*node.addresses.items(), *node.addresses6.items()])
        table.add_row(name, node.role.value, states.get(name, "?"), addresses)
    out.print(table)
    for svc in model.services:
        servers = ", ".join(f"{host_port(rs.address, svc.real_port(rs))} w{rs.weight}" for rs in svc.real_servers)
        out.print(f"{svc.key} {svc.scheduler} {svc.forwarding.value} -> {servers}", highlight=False, markup=False)


@app.command()
@handled
def ssh(node: str, lab: Annotated[str | None, typer.Option(help="The lab, when several are up.")] = None) -> None:
    """Open a shell on a node."""
    running = RunningLab.find(lab)
    if node not in running.lab.nodes:
        raise LabkitError(f"the lab {running.name} has no node {node!r}. Its nodes: {', '.join(running.lab.nodes)}")
    os.execvp("ssh", ["ssh", "-F", str(running.ssh_config), node])


@app.command()
@handled
def down(
    lab: RunningArg = None,
    leftovers: Annotated[
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
    """Remove the lab's VMs, their volumes and the lab's networks (one copy's only)."""
    started = time.monotonic()
    if as_name is not None or (lab is not None and lab not in RunningLab.names()):
        # Not up as far as this installation knows. libvirt may hold what a lost lab made, or
        # another installation's lab of the same name: only an explicit --leftovers removes it.
        if lab is None:
            raise LabkitError("name the lab whose copy it is: labkit down LAB --as NAME --leftovers")
        model = read(lab)
        name = copy_name(as_name) or model.name
        if name in RunningLab.names():
            raise LabkitError(f"{name} is up here: remove it with labkit down {name}")
        with lock.writing(name, "down", LEFT["down"].format(name=name)):
            removed = leftovers.remove_lost(name, model, uri_for(connect), really=leftovers)
        out.print(f"{name} was not up; removed what libvirt still held of it: {', '.join(removed)}")
        return
    running = RunningLab.find(lab)
    with writing(running, "down"):
        running.destroy()
    out.print(f"{running.name} is down ({time.monotonic() - started:.0f} s)")


@app.command("list")
@handled
def list_cmd(as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False) -> None:
    """Every lab and copy on every libvirt host labkit knows (this one, those labs run on, and
    those in LABKIT_HOME/config.yaml): host, lab, copy, state, kernel, memory in use, age."""
    rows = inventory.inventory(list(home.hosts().values()))
    if as_json:
        sys.stdout.write(json.dumps([dataclasses.asdict(r) for r in rows], indent=2) + "\n")
        return
    if not rows:
        out.print("no lab is up. Start one with: labkit up nat (a copy: labkit up nat --as NAME)")
        return
    lines = [("host", "lab", "copy", "state", "kernel", "memory", "age")]
    for r in rows:
        age = (
            "not ours"
            if r.age_s is None
            else f"{r.age_s / 3600:.1f} h"
            if r.age_s >= 3600
            else f"{r.age_s / 60:.0f} min"
        )
        host = libvirt.shown(r.host)
        lines.append((host, r.lab, r.name, r.state, r.kernel, f"{r.memory_mib} MiB", age))
    columns(lines)


def columns(rows: list[tuple[str, ...]]) -> None:
    """Plain columns, never cut: names, hosts and kernel releases are what matter."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(),
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


@app.command()
@handled
def render(
    lab: LabArg,
    box_name: BoxOpt = box.DEFAULT_BOX,
    kernel: KernelOpt = None,
    provider: ProviderOpt = Provider.libvirt,
    accel: AccelOpt = Accel.auto,
    as_name: AsOpt = None,
    connect: ConnectOpt = None,
) -> None:
    """Print the lab's Vagrantfile (its management network as on first use). Boots nothing."""
    model = read(lab)
    target = target_for(
        labfile.lab_file(lab),
        box_to_boot(box_name, kernel),
        provider,
        accel,
        warn=False,
        name=copy_name(as_name),
        uri=uri_for(connect),
    )
    sys.stdout.write(render_vagrantfile(model, target))


@app.command()
@handled
def explain(lab: LabArg, node: Annotated[str | None, typer.Option(help="Only this node.")] = None) -> None:
    """The commands labkit applies on each node, in order, each with its reason. Boots nothing."""
    model = read(lab)
    if node is not None and node not in model.nodes:
        raise LabkitError(f"the lab {model.name} has no node {node!r}. Its nodes: {', '.join(model.nodes)}")
    for name in [node] if node else list(model.nodes):
        out.print(f"[bold]## {name}[/] ({model.nodes[name].role.value})", highlight=False)
        for i, (why, commands) in enumerate(explain_mod.walkthrough(model, name), 1):
            out.print(f"\n# {i}. {why}", style="dim", highlight=False, soft_wrap=True)
            for line in commands:
                out.print(line, highlight=False, markup=False, soft_wrap=True)
        out.print()


@app.command()
@handled
def graph(
    lab: LabArg, out_dir: Annotated[Path, typer.Option("--out", help="Folder for <lab>.svg and <lab>.png.")] = Path(".")
) -> None:
    """Draw the lab: networks, addresses, VIPs, forwarding method, request and reply paths. Boots nothing."""
    for path in graph_mod.draw(read(lab), out_dir):
        out.print(str(path), highlight=False)


@app.command()
@handled
def matrix(
    labs: Annotated[list[str], typer.Argument(help="The labs, e.g. nat tun dr.")],
    kernel: Annotated[
        list[str], typer.Option(help=KERNEL_HELP + " Give it once per kernel; the first is the baseline.")
    ],
    report: Annotated[Path, typer.Option(help="The report folder.")] = Path("labkit-matrix"),
    again: Annotated[bool, typer.Option("--again", help="Run the cells already done again.")] = False,
) -> None:
    """Every lab on every kernel (up, verify with the failure scenarios, bench, down), and a
    report comparing each kernel with the first. Exit status 1 when a kernel regresses."""
    try:
        records = matrix_mod.run(
            labs, kernel, report, again, lambda line: out.print(line, highlight=False, markup=False)
        )
    except matrix_mod.Interrupted as exc:
        err.print(
            f"interrupted ({exc}): the cell that ran was removed; the cells done are kept in {report}. "
            "Continue with the same command",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        raise typer.Exit(128 + exc.signum) from None
    regressions = matrix_report.write(report, records, kernel)
    for line in regressions:
        out.print(f"regression: {line}", highlight=False, markup=False, soft_wrap=True)
    out.print(f"report: {report / 'matrix.md'}, {report / 'matrix.html'}, {report / 'matrix.json'}", highlight=False)
    if regressions:
        raise typer.Exit(1)


@app.command("doctor")
@handled
def doctor_cmd(
    provider: ProviderOpt = Provider.libvirt, box_name: BoxOpt = box.DEFAULT_BOX, connect: ConnectOpt = None
) -> None:
    """Check that this host (or with --connect, that libvirt host) can boot labs; print the fix for each problem."""
    found = doctor.probes(provider, box_name, uri=uri_for(connect))
    for p in found:
        mark = "[green]ok  [/]" if p.ok else ("[red]FAIL[/]" if p.fatal else "[yellow]warn[/]")
        out.print(f"{mark}  {p.what}" + ("" if p.ok else f"\n      fix: {p.fix}"), highlight=False, soft_wrap=True)
    if any(p.fatal and not p.ok for p in found):
        raise typer.Exit(1)


@box_app.command("build")
@handled
def box_build(
    kernel: Annotated[str, typer.Option(help=KERNEL_HELP)] = "bookworm",
    force: Annotated[bool, typer.Option(help="Rebuild even if the box exists.")] = False,
    mirror: Annotated[str | None, typer.Option(help="Debian mirror; default: the one apt uses.")] = None,
    name: Annotated[
        str | None,
        typer.Option(
            help=f"Name of the box in Vagrant; default {box.DEFAULT_BOX}, or labkit/linux-RELEASE for another kernel."
        ),
    ] = None,
) -> None:
    """Build labkit's box from Debian packages, or the same box with another kernel."""
    spec = box.parse_kernel(kernel)
    started = time.monotonic()
    built = box.build_box(
        mirror=mirror or box.debian_mirror(),
        cache_dir=home.cache_dir(),
        kernel=spec,
        name=name,
        force=force,
        log=lambda line: out.print(line, highlight=False),
    )
    if built:
        out.print(
            f"box {built} built and added in {time.monotonic() - started:.0f} s. "
            f"Boot a lab on it: labkit up LAB --kernel {kernel}",
            highlight=False,
        )
    else:
        out.print(f"the box for kernel {kernel} is already in Vagrant (--force rebuilds it)", highlight=False)


def _shared_line(what: str, shared: box.Shared, file: Path) -> str:
    where = "to" if what == "exported" else "from"
    return (
        f"{what} box {shared.name} {shared.version} (kernel {shared.kernel or '?'}) {where} {file}: "
        f"{shared.size / 1024**2:.0f} MiB in {shared.seconds:.1f} s"
    )


@box_app.command("export")
@handled
def box_export(
    file: Annotated[Path, typer.Argument(help="The file to write, e.g. labkit-bookworm.box.")],
    box_name: BoxOpt = box.DEFAULT_BOX,
) -> None:
    """Write a box to one file that another installation imports (labkit box import FILE)."""
    shared = box.export_box(file, box_name)
    out.print(_shared_line("exported", shared, file), highlight=False, soft_wrap=True)


@box_app.command("import")
@handled
def box_import(
    file: Annotated[Path, typer.Argument(help="A file labkit box export wrote.")],
    force: Annotated[bool, typer.Option(help="Replace another version of the same box.")] = False,
) -> None:
    """Check a box file labkit box export wrote and add the box to Vagrant."""
    shared = box.import_box(file, force=force, log=lambda line: out.print(line, highlight=False))
    if shared.added:
        out.print(_shared_line("imported", shared, file), highlight=False, soft_wrap=True)
    else:
        out.print(
            f"box {shared.name} {shared.version} is already in Vagrant, identical: nothing to do",
            highlight=False,
            soft_wrap=True,
        )


@box_app.command("list")
@handled
def box_list() -> None:
    """The boxes labkit built, with their kernels and where each came from."""
    boxes = box.labkit_boxes()
    if not boxes:
        out.print("no labkit box yet: labkit box build (and labkit box build --kernel SPEC for another kernel)")
        return
    rows = [("box", "version", "kernel", "from", "ipvsadm", "keepalived", "built")]
    rows += [
        (b.name, b.version, b.kernel or "?", b.spec or "?", b.ipvsadm or "?", b.keepalived or "?", b.built or "?")
        for b in boxes
    ]
    columns(rows)
