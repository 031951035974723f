"""Looking at a running lab, loading it, breaking and healing it: show, bench, trace, weight, fail, heal."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Annotated

import typer

from labkit import lock
from labkit.cli.common import JsonOpt, RunningArg, ServiceOpt, handled, out, say
from labkit.errors import LabkitError
from labkit.labfile import Lab
from labkit.operate import bench, failover, mesh_trace, show, trace, weight
from labkit.plan import ipvs
from labkit.running import RunningLab

app = typer.Typer()


@app.command("show")
@handled
def show_cmd(
    lab: RunningArg = None,
    connections: Annotated[bool, typer.Option("--connections", help="The connection tables instead.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Both directors' IPVS tables side by side: services, real servers, weights, connections, counters and rates; which director is active.

    Example: labkit show nat --connections"""
    with RunningLab.find(lab) as running:
        model = running.lab
        commands = dict(ipvs.COMMANDS)
        if connections:
            commands["connections"] = show.CONNECTIONS_COMMAND
        if model.mesh is not None:  # each node's table is in its ingress namespace
            outputs = running.run_on(model.swarm_nodes, show.ingress_commands(commands))
            states = [show.ingress_state(model, name, outputs[name]) for name in model.swarm_nodes]
        else:
            outputs = running.run_on(model.directors, commands)
            states = [show.director_state(model, name, outputs[name]) for name in model.directors]
    if as_json:
        sys.stdout.write(json.dumps(show.as_json(model, states), indent=2) + "\n")
    elif connections:
        out.print(show.connections_view(model, states))
    else:
        out.print(show.view(model, states))


@app.command("bench")
@handled
def bench_cmd(
    lab: RunningArg = None,
    service: ServiceOpt = None,
    requests: Annotated[int, typer.Option(min=1, max=bench.MAX_REQUESTS, help="How many requests.")] = 2000,
    concurrency: Annotated[int, typer.Option(min=1, max=bench.MAX_CONCURRENCY, help="How many at once.")] = 4,
    as_json: JsonOpt = False,
) -> None:
    """A bounded load from the client (ApacheBench) against the VIP, or a routing mesh's published port on its first node: requests per second, latency percentiles, errors, and the split per real server as IPVS counted it.

    Example: labkit bench nat --requests 5000"""
    with RunningLab.find(lab) as running:
        model = running.lab
        if model.mesh is not None and service is None:
            target = bench.mesh_target(model, model.swarm_nodes[0])
        else:
            svc = model.service(service)
            target = bench.vip_target(model, svc, running.holder() or model.active_director)
        result = bench.bench(running, target, requests, concurrency)
    if as_json:
        sys.stdout.write(
            json.dumps({"service": target.key, "director": target.director, **dataclasses.asdict(result)}) + "\n"
        )
        return
    for line in bench.report(target, model.clients[0], requests, concurrency, result, out.width):
        say(line)


@app.command("trace")
@handled
def trace_cmd(lab: RunningArg = None, service: ServiceOpt = None) -> None:
    """Send one request from the client while tcpdump listens on the director and the real servers; print the packet's path hop by hop.

    Example: labkit trace tun --service 'tcp 192.168.55.102:80'"""
    with RunningLab.find(lab) as running:
        model = running.lab
        if model.mesh is not None:
            _mesh_trace(running)
            return
        svc = model.service(service, udp=True)
        seen = trace.trace(running, svc)
    out.print(
        f"{model.clients[0]} asked {seen.url} from port {seen.client_port}; {seen.answer} answered "
        f"({svc.forwarding.value}).\n",
        highlight=False,
        markup=False,
    )
    _hops(model, seen, 10)


def _mesh_trace(running: RunningLab) -> None:
    """A routing mesh's request: node -> ingress namespace -> overlay -> task, and back."""
    model = running.lab
    seen = mesh_trace.trace(running)
    out.print(
        f"{model.clients[0]} asked {seen.url} from port {seen.client_port}; {seen.answer} answered.\n",
        highlight=False,
        markup=False,
    )
    _hops(model, seen, 24)


def _hops(model: Lab, seen: trace.Trace | mesh_trace.MeshTrace, width: int) -> None:
    """A trace's request and reply, a hop a line with the node and interface in `width` columns."""
    for title, path in (("request", seen.request), ("reply", seen.reply)):
        out.print(f"[bold]{title}[/]")
        for hop in path:
            # emoji=False: a MAC such as a6:ab:14 is no :ab: emoji
            line = f"  {hop.node + ' ' + hop.interface:{width}} {trace.describe(model, hop.packet)}"
            out.print(line, highlight=False, markup=False, emoji=False)
            if hop.note:
                out.print(f"  {'':{width}} [dim]{hop.note}[/]", highlight=False)
    if not seen.request or not seen.reply:
        raise LabkitError("the capture missed the request or the reply: run labkit trace again")


@app.command("weight")
@handled
def weight_cmd(
    lab: Annotated[str, typer.Argument(help="The running lab.")],
    real_server: Annotated[str, typer.Argument(help="A real server: its node, e.g. rs0, or its container, e.g. web0.")],
    new_weight: Annotated[int, typer.Argument(metavar="WEIGHT", help="0 drains it: no new connections.")],
    service: Annotated[str | None, typer.Option(help="Only this service, e.g. 'tcp 192.168.55.100:80'.")] = None,
) -> None:
    """Change a real server's weight on the running directors, without restarting anything.

    Example: labkit weight nat rs1 0 (a container: labkit weight containers web0 3)"""
    with RunningLab.find(lab) as running, lock.changing(running.name, "weight"):
        changed = weight.change(running, real_server, new_weight, service)
    for svc in changed.services:
        if not any(changed.is_called(svc, rs, real_server) for rs in svc.real_servers):
            continue
        weights = ", ".join(
            f"{changed.server_at(rs.address, svc.real_port(rs), svc.protocol)} {rs.weight}" for rs in svc.real_servers
        )
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
            help="NODE (freeze its VM), NODE:SERVICE (stop keepalived or nginx), NODE:NETWORK (take that link down), "
            "or NETWORK with --delay, --loss or --rate (impair its links)."
        ),
    ],
    seconds: Annotated[float, typer.Option(min=6, max=120, help="How long the client's load runs.")] = 16,
    delay: Annotated[str | None, typer.Option(help="NETWORK: delay each way, e.g. 20ms (netem).")] = None,
    loss: Annotated[str | None, typer.Option(help="NETWORK: packets lost, e.g. 1% (netem).")] = None,
    rate: Annotated[str | None, typer.Option(help="NETWORK: the links' rate, e.g. 10mbit (netem).")] = None,
) -> None:
    """Break part of a running lab under a bounded load from the client, and show what the client saw.

    Example: labkit fail nat lb0:keepalived; labkit fail dr int --delay 20ms --loss 1%"""
    with RunningLab.find(lab) as running, lock.changing(running.name, "fail"):
        if delay is not None or loss is not None or rate is not None or target in running.lab.networks:
            broken = failover.impairment_for(running.lab, target, delay, loss, rate)
        else:
            broken = failover.parse_target(running.lab, target)
        lead = failover.lead(running.lab, broken)
        out.print(
            f"load from {running.lab.clients[0]} for {seconds:.0f} s; {broken.what} "
            f"{lead:.0f} s after it starts, the load going on {seconds - lead:.0f} s "
            "after that ...",
            highlight=False,
        )
        result = failover.fail(running, broken, seconds)
    for line in result.lines():
        out.print(line, highlight=False)
    out.print(f"\nStill broken. Bring it back with: [bold]labkit heal {running.name}[/]")


@app.command()
@handled
def heal(lab: RunningArg = None) -> None:
    """Undo every failure: resume frozen nodes, restart services, raise links; wait until the lab is whole.

    Example: labkit heal nat"""
    with RunningLab.find(lab) as running, lock.changing(running.name, "heal"):
        seconds, load = failover.heal(running)
    served = ", ".join(f"{k} {v}" for k, v in sorted(load.served().items()))
    out.print(
        f"{running.name} healed in {seconds:.0f} s: {len(load.requests)} requests, failed {load.failed}, "
        f"served by {served or 'nobody'}",
        highlight=False,
    )
