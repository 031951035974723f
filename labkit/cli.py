"""The `labkit` command."""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from labkit import box, home as paths, labfile
from labkit.describe import explain as explain_mod, graph as graph_mod
from labkit.operate import bench as bench_mod, failover, show as show_mod, trace as trace_mod
from labkit.run import doctor, ssh as apply, vagrant as boot, verify as verify_mod
from labkit.errors import LabkitError
from labkit.labfile import Lab, LabError, Protocol, VirtualService, load_lab, with_weight
from labkit.build.render import Provider, Target, render as render_vagrantfile

app = typer.Typer(help="Linux Virtual Server labs on real virtual machines.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
box_app = typer.Typer(help="The Vagrant box labs boot from.", no_args_is_help=True)
app.add_typer(box_app, name="box")

out = Console()
err = Console(stderr=True)


class Accel(str, Enum):
    auto = "auto"
    kvm = "kvm"
    tcg = "tcg"


def handled(command):
    """Expected failures become one line on stderr and exit status 1, not a traceback."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except LabkitError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
    return run


LabArg = Annotated[str, typer.Argument(help="A lab name (nat, tun, dr), its folder, or a lab.yaml path.")]
RunningLab = Annotated[Optional[str], typer.Argument(help="The lab; may be left out when only one is up.")]
BoxOpt = Annotated[str, typer.Option("--box", help="Vagrant box to boot; any other than labkit's gets the lab packages installed.")]
ProviderOpt = Annotated[Provider, typer.Option(help="Vagrant provider.")]
AccelOpt = Annotated[Accel, typer.Option(help="libvirt: KVM, or QEMU software emulation (tcg); auto uses KVM when it works.")]


def read_lab(name_or_path: str) -> Lab:
    path = labfile.lab_file(name_or_path)
    if not path.exists():
        known = ", ".join(labfile.known_labs())
        raise LabError(f"no lab {name_or_path!r}: {path} does not exist. Known labs: {known}; "
                       "or give the path of a lab.yaml")
    return load_lab(path)


def running_lab(name: str | None) -> tuple[Lab, Path]:
    """The lab a command acts on: as named, or the only one that is up."""
    if name is None:
        up = sorted(p.name for p in (paths.home() / "labs").glob("*") if (p / "Vagrantfile").exists())
        if not up:
            raise LabkitError("no lab is up. Start one with: labkit up nat")
        if len(up) > 1:
            raise LabkitError(f"several labs are up ({', '.join(up)}): name one, e.g. labkit verify {up[0]}")
        name = up[0]
    elif not (paths.lab_dir(name) / "Vagrantfile").exists():
        name = read_lab(name).name  # a lab file's path, or a known lab that is not up
    lab_dir = paths.lab_dir(name)
    if not (lab_dir / "Vagrantfile").exists():
        raise LabkitError(f"the lab {lab_dir.name} is not up. Start it with: labkit up {lab_dir.name}")
    return load_lab(lab_dir / "lab.yaml"), lab_dir


def target_for(lab_source: Path, box_name: str, provider: Provider, accel: Accel, warn: bool) -> Target:
    driver = "kvm"
    if provider == Provider.libvirt:
        reason = boot.kvm_usable()
        if accel == Accel.tcg or (accel == Accel.auto and reason):
            driver = "qemu"
            if warn and accel == Accel.auto:
                err.print(f"[yellow]warning:[/] {reason}: using QEMU software emulation, labs will be slow",
                          soft_wrap=True)
    key = str(paths.key()) if box_name == box.DEFAULT_BOX else None
    return Target(provider=provider, box=box_name, driver=driver, private_key=key, source=labfile.shown(lab_source))


def preflight(provider: Provider, box_name: str) -> None:
    failed = [p for p in doctor.probes(provider.value, box_name, thorough=False) if p.fatal and not p.ok]
    if failed:
        lines = "\n".join(f"  - {p.what}: no. Fix: {p.fix}" for p in failed)
        raise LabkitError(f"this host cannot boot the lab yet:\n{lines}\n(labkit doctor shows every check)")


def boot_with_progress(lab: Lab, lab_dir: Path, provider: Provider) -> None:
    latest = {node: "waiting" for node in lab.nodes}
    started = time.monotonic()

    def table() -> Table:
        t = Table(title=f"booting {lab.name} ({time.monotonic() - started:.0f} s)", title_justify="left")
        t.add_column("node")
        t.add_column("vagrant says")
        for node, message in latest.items():
            t.add_row(node, message)
        return t

    if out.is_terminal:
        with Live(table(), console=out, refresh_per_second=2) as live:
            def show(node: str, message: str) -> None:
                latest[node] = message[:100]
                live.update(table())
            boot.up(lab_dir, provider.value, show)
    else:  # logs and CI: one line per event
        def show(node: str, message: str) -> None:
            out.print(f"{time.monotonic() - started:6.0f}s {node}: {message}", highlight=False, soft_wrap=True)
        boot.up(lab_dir, provider.value, show)
    out.print(f"booted {len(lab.nodes)} nodes in {time.monotonic() - started:.0f} s")


def do_provision(lab: Lab, lab_dir: Path, after_boot: bool = False) -> None:
    ssh_config = boot.ssh_config(lab_dir, refresh=after_boot)
    started = time.monotonic()

    def report(result: apply.NodeResult) -> None:
        state = "[red]failed[/]" if result.error else f"{len(result.changed)} changed"
        out.print(f"  {result.node}: {state}")
        for why in result.changed:
            out.print(f"    [dim]+ {why}[/]", highlight=False, soft_wrap=True)

    results = apply.provision(lab, ssh_config, report)
    failed = [r for r in results if r.error]
    if failed:
        raise LabkitError("provisioning failed:\n" + "\n".join(f"  {r.node}: {r.error}" for r in failed))
    total = sum(len(r.changed) for r in results)
    out.print(f"provisioned {lab.name}: {total} changes in {time.monotonic() - started:.1f} s")


@app.command()
@handled
def up(lab: LabArg, box_name: BoxOpt = box.DEFAULT_BOX, provider: ProviderOpt = Provider.libvirt,
       accel: AccelOpt = Accel.auto) -> None:
    """Boot a lab's VMs and configure them (render, boot, provision)."""
    source = labfile.lab_file(lab)
    model = read_lab(lab)
    preflight(provider, box_name)
    vagrantfile = render_vagrantfile(model, target_for(source, box_name, provider, accel, warn=True))
    lab_dir = paths.lab_dir(model.name)
    lab_dir.mkdir(parents=True, exist_ok=True)
    (lab_dir / "Vagrantfile").write_text(vagrantfile)
    shutil.copyfile(source, lab_dir / "lab.yaml")
    try:
        boot_with_progress(model, lab_dir, provider)
    except boot.BootError as exc:
        raise LabkitError(f"{exc}\nRemove what was made with: labkit down {model.name}") from None
    do_provision(model, lab_dir, after_boot=True)
    out.print(f"\n[bold]{model.name} is up.[/] Next: [bold]labkit verify {model.name}[/]")


@app.command()
@handled
def provision(lab: RunningLab = None) -> None:
    """Push the lab's configuration to its running VMs again (changes only what differs)."""
    model, lab_dir = running_lab(lab)
    if lab is not None:  # the lab file may have been edited since `up`
        edited = read_lab(lab)
        if edited.failover != model.failover:
            raise LabkitError(f"failover changed from {model.failover.value} to {edited.failover.value}: the directors "
                              f"cannot be converted in place. Run: labkit down {model.name} && labkit up {lab}")
        model = edited
        shutil.copyfile(labfile.lab_file(lab), lab_dir / "lab.yaml")
    do_provision(model, lab_dir)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@handled
def verify(ctx: typer.Context, lab: RunningLab = None,
           junitxml: Annotated[Optional[Path], typer.Option(help="Write a JUnit XML report here.")] = None) -> None:
    """Check the running lab with pytest + testinfra. Extra arguments go to pytest (e.g. -k split)."""
    _, lab_dir = running_lab(lab)
    args = list(ctx.args) + ([f"--junitxml={junitxml}"] if junitxml else [])
    code = verify_mod.verify(lab_dir / "lab.yaml", boot.ssh_config(lab_dir), args)
    raise typer.Exit(code)


@app.command()
@handled
def show(lab: RunningLab = None,
         connections: Annotated[bool, typer.Option("--connections", help="The connection tables instead.")] = False,
         as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False) -> None:
    """Both directors' IPVS tables side by side: services, real servers, weights, connections,
    counters and rates; which director is active."""
    model, lab_dir = running_lab(lab)
    commands = dict(show_mod.COMMANDS)
    if connections:
        commands["connections"] = show_mod.CONNECTIONS_COMMAND
    outputs = apply.run_on(model.directors, boot.ssh_config(lab_dir), commands)
    states = [show_mod.director_state(model, name, outputs[name]) for name in model.directors]
    if as_json:
        sys.stdout.write(json.dumps(show_mod.as_json(model, states), indent=2) + "\n")
    elif connections:
        out.print(show_mod.connections_view(model, states))
    else:
        out.print(show_mod.view(model, states))


ServiceOpt = Annotated[Optional[str], typer.Option(
    "--service", help="The service, as labkit status lists it (e.g. 'tcp 192.168.55.100:80'); default the first.")]


def pick_service(model: Lab, key: str | None) -> VirtualService:
    svc = next((s for s in model.services if key in (None, s.key) and s.protocol == Protocol.tcp), None)
    if svc is None:
        raise LabkitError(f"the lab {model.name} has no TCP service {key!r}. Its services: "
                          f"{', '.join(s.key for s in model.services)}")
    return svc


@app.command()
@handled
def bench(lab: RunningLab = None, service: ServiceOpt = None,
          requests: Annotated[int, typer.Option(min=1, max=bench_mod.MAX_REQUESTS, help="How many requests.")] = 2000,
          concurrency: Annotated[int, typer.Option(min=1, max=bench_mod.MAX_CONCURRENCY, help="How many at once.")] = 4) -> None:
    """A bounded load from the client against the VIP (ApacheBench): requests per second,
    latency percentiles, errors, and the split per real server as IPVS counted it."""
    model, lab_dir = running_lab(lab)
    svc = pick_service(model, service)
    ssh_config = boot.ssh_config(lab_dir)
    director = failover.holder(model, ssh_config) or model.active_director
    stats = {"stats": ["sudo", "-n", "ipvsadm", "-L", "-n", "--stats", "--exact"]}
    before = apply.run(director, ssh_config, stats)["stats"]
    ab = apply.run(model.clients[0], ssh_config, {"ab": bench_mod.command(svc, requests, concurrency)})["ab"]
    result = bench_mod.parse_ab(ab)
    names = {f"{rs.address}:{svc.real_port(rs)}": model.node_at(rs.address) for rs in svc.real_servers}
    deadline = time.monotonic() + 6  # the kernel's counters lag up to about 2 s
    while True:
        split = bench_mod.split(svc.key, before, apply.run(director, ssh_config, stats)["stats"], names)
        if sum(split.values()) >= result.complete or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    out.print(f"{svc.key} ({svc.scheduler}, {svc.forwarding.value}) via {director}: {requests} requests, "
              f"{concurrency} at a time, from {model.clients[0]}", highlight=False)
    out.print(f"  {result.per_second:.1f} requests/s, mean {result.mean_ms:.1f} ms; completed {result.complete}, "
              f"failed {result.failed}", highlight=False)
    out.print("  latency ms: " + ", ".join(f"p{p} {ms}" for p, ms in result.percentiles.items() if p in (50, 90, 99, 100)),
              highlight=False)
    total = sum(split.values()) or 1
    out.print("  split: " + ", ".join(f"{name} {n} ({100 * n / total:.0f}%)" for name, n in sorted(split.items())),
              highlight=False)


@app.command()
@handled
def trace(lab: RunningLab = None, service: ServiceOpt = None) -> None:
    """Send one request from the client while tcpdump listens on the director and the real
    servers; print the packet's path hop by hop."""
    model, lab_dir = running_lab(lab)
    svc = pick_service(model, service)
    ssh_config = boot.ssh_config(lab_dir)
    port = random.randint(40000, 59999)  # the client's port: a fresh one, not in TIME_WAIT
    points = trace_mod.capture_points(model, svc)
    with ThreadPoolExecutor(len(points)) as pool:
        captures = {node: pool.submit(apply.run, node, ssh_config, {"c": trace_mod.capture_command(devs, port)})
                    for node, devs in points.items()}
        time.sleep(4)  # the captures are listening (SSH, sudo and tcpdump start, under emulation too)
        url = f"http://{svc.addresses[0]}:{svc.port}/"
        answer = apply.run(model.clients[0], ssh_config,
                           {"curl": ["curl", "-sS", "-m", "5", "--local-port", str(port), url]})["curl"].strip()
        captured = {node: trace_mod.parse(f.result()["c"]) for node, f in captures.items()}
    request, reply = trace_mod.hops(model, svc, captured, port)
    out.print(f"{model.clients[0]} asked {url} from port {port}; {answer} answered ({svc.forwarding.value}).\n",
              highlight=False)
    for title, path in (("request", request), ("reply", reply)):
        out.print(f"[bold]{title}[/]")
        for hop in path:
            out.print(f"  {hop.node + ' ' + hop.interface:10} {trace_mod.describe(model, hop.packet)}", highlight=False)
            if hop.note:
                out.print(f"  {'':10} [dim]{hop.note}[/]", highlight=False)
    if not request or not reply:
        raise LabkitError("the capture missed the request or the reply: run labkit trace again")


@app.command()
@handled
def weight(lab: Annotated[str, typer.Argument(help="The running lab.")],
           real_server: Annotated[str, typer.Argument(help="A real server node, e.g. rs0.")],
           new_weight: Annotated[int, typer.Argument(metavar="WEIGHT", help="0 drains it: no new connections.")],
           service: Annotated[Optional[str], typer.Option(help="Only this service, e.g. 'tcp 192.168.55.100:80'.")] = None) -> None:
    """Change a real server's weight on the running directors, without restarting anything."""
    model, lab_dir = running_lab(lab)
    changed = with_weight(model, real_server, new_weight, service)
    ssh_config = boot.ssh_config(lab_dir)
    results = apply.provision(changed, ssh_config, nodes=changed.directors)
    failed = [r for r in results if r.error]
    if failed:
        raise LabkitError("the directors did not take the weight:\n" + "\n".join(f"  {r.node}: {r.error}" for r in failed))
    # The lab as it now runs: verify checks this split, `labkit provision <lab>` restores the file's.
    data = changed.model_dump(mode="json", exclude_defaults=True)
    (lab_dir / "lab.yaml").write_text(f"# {model.name} as it runs: labkit weight {real_server} {new_weight}\n"
                                      + yaml.safe_dump(data, sort_keys=False))
    for svc in changed.services_of(real_server):
        weights = ", ".join(f"{changed.node_at(rs.address)} {rs.weight}" for rs in svc.real_servers)
        out.print(f"{svc.key} {svc.scheduler}: {weights}", highlight=False)
    how = "keepalived reloaded" if changed.ha else "ipvsadm -e"
    out.print(f"applied on {', '.join(changed.directors)} ({how}). labkit verify {model.name} checks the new split.")


@app.command()
@handled
def fail(lab: Annotated[str, typer.Argument(help="The running lab.")],
         target: Annotated[str, typer.Argument(help="NODE (freeze its VM), NODE:SERVICE (stop keepalived or nginx), "
                                                    "NODE:NETWORK (take that link down).")],
         seconds: Annotated[float, typer.Option(min=6, max=120, help="How long the client's load runs.")] = 16) -> None:
    """Break part of a running lab under a bounded load from the client, and show what the client saw."""
    model, lab_dir = running_lab(lab)
    broken = failover.parse_target(model, target)
    out.print(f"load from {model.clients[0]} for {seconds:.0f} s; {broken.what} {failover.LEAD_SECONDS} s after it starts ...",
              highlight=False)
    report = failover.fail(model, lab_dir, boot.ssh_config(lab_dir), broken, seconds)
    for line in report.lines():
        out.print(line, highlight=False)
    out.print(f"\nStill broken. Bring it back with: [bold]labkit heal {model.name}[/]")


@app.command()
@handled
def heal(lab: RunningLab = None) -> None:
    """Undo every failure: resume frozen nodes, restart services, raise links; wait until the lab is whole."""
    model, lab_dir = running_lab(lab)
    seconds, load = failover.heal(model, lab_dir, boot.ssh_config(lab_dir))
    served = ", ".join(f"{k} {v}" for k, v in sorted(load.served().items()))
    out.print(f"{model.name} healed in {seconds:.0f} s: {len(load.requests)} requests, failed {load.failed}, "
              f"served by {served or 'nobody'}", highlight=False)


@app.command()
@handled
def status(lab: RunningLab = None) -> None:
    """Nodes of a lab, their state and addresses."""
    model, lab_dir = running_lab(lab)
    states = boot.status(lab_dir)
    table = Table(title=f"lab {model.name}: {model.description}", title_justify="left")
    table.add_column("node")
    table.add_column("role")
    table.add_column("state")
    table.add_column("addresses")
    for name, node in model.nodes.items():
        addresses = ", ".join(f"{net} {addr}" for net, addr in node.addresses.items())
        table.add_row(name, node.role.value, states.get(name, "?"), addresses)
    out.print(table)
    for svc in model.services:
        servers = ", ".join(f"{rs.address}:{svc.real_port(rs)} w{rs.weight}" for rs in svc.real_servers)
        out.print(f"{svc.key} {svc.scheduler} {svc.forwarding.value} -> {servers}", highlight=False)


@app.command()
@handled
def ssh(node: str, lab: Annotated[Optional[str], typer.Option(help="The lab, when several are up.")] = None) -> None:
    """Open a shell on a node."""
    model, lab_dir = running_lab(lab)
    if node not in model.nodes:
        raise LabkitError(f"the lab {model.name} has no node {node!r}. Its nodes: {', '.join(model.nodes)}")
    ssh_config = boot.ssh_config(lab_dir)
    os.execvp("ssh", ["ssh", "-F", str(ssh_config), node])


@app.command()
@handled
def down(lab: RunningLab = None) -> None:
    """Remove the lab's VMs, their volumes and the lab's networks."""
    model, lab_dir = running_lab(lab)
    started = time.monotonic()
    boot.destroy(lab_dir)
    out.print(f"{model.name} is down ({time.monotonic() - started:.0f} s)")


@app.command()
@handled
def render(lab: LabArg, box_name: BoxOpt = box.DEFAULT_BOX, provider: ProviderOpt = Provider.libvirt,
           accel: AccelOpt = Accel.auto) -> None:
    """Print the lab's Vagrantfile. Boots nothing."""
    model = read_lab(lab)
    sys.stdout.write(render_vagrantfile(model, target_for(labfile.lab_file(lab), box_name, provider, accel, warn=False)))


@app.command()
@handled
def explain(lab: LabArg,
            node: Annotated[Optional[str], typer.Option(help="Only this node.")] = None) -> None:
    """The commands labkit applies on each node, in order, each with its reason. Boots nothing."""
    model = read_lab(lab)
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
def graph(lab: LabArg,
          out_dir: Annotated[Path, typer.Option("--out", help="Folder for <lab>.svg and <lab>.png.")] = Path(".")) -> None:
    """Draw the lab: networks, addresses, VIPs, forwarding method, request and reply paths. Boots nothing."""
    for path in graph_mod.draw(read_lab(lab), out_dir):
        out.print(str(path), highlight=False)


@app.command("doctor")
@handled
def doctor_cmd(provider: ProviderOpt = Provider.libvirt, box_name: BoxOpt = box.DEFAULT_BOX) -> None:
    """Check that this host can boot labs; print the fix for each problem."""
    found = doctor.probes(provider.value, box_name)
    for p in found:
        mark = "[green]ok  [/]" if p.ok else ("[red]FAIL[/]" if p.fatal else "[yellow]warn[/]")
        out.print(f"{mark}  {p.what}" + ("" if p.ok else f"\n      fix: {p.fix}"), highlight=False, soft_wrap=True)
    if any(p.fatal and not p.ok for p in found):
        raise typer.Exit(1)


@box_app.command("build")
@handled
def box_build(force: Annotated[bool, typer.Option(help="Rebuild even if the box exists.")] = False,
              mirror: Annotated[Optional[str], typer.Option(help="Debian mirror; default: the one apt uses.")] = None,
              name: Annotated[str, typer.Option(help="Name of the box in Vagrant.")] = box.DEFAULT_BOX) -> None:
    """Build labkit's Debian box from Debian packages and add it to Vagrant."""
    public_key = paths.key().with_suffix(".pub").read_text()
    started = time.monotonic()
    built = box.build_box(name, public_key, mirror=mirror or box.debian_mirror(), cache_dir=paths.cache_dir(),
                          force=force, log=lambda line: out.print(line, highlight=False))
    if built:
        out.print(f"box {name} built and added in {time.monotonic() - started:.0f} s")
    else:
        out.print(f"box {name} is already in Vagrant (--force rebuilds it)")
