"""`labkit bench`: a bounded load from the client with ApacheBench (Debian's apache2-utils),
and the split per real server as the director's IPVS counters saw it. bench() runs ab and
ipvsadm; building the command and reading the outputs is pure."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from labkit.errors import LabkitError
from labkit.labfile import Lab, VirtualService
from labkit.labfile.model import host_port, service_key
from labkit.operate.show import ingress_commands, packed
from labkit.plan import ipvs
from labkit.plan.mesh import SBOX
from labkit.running import RunningLab

MAX_REQUESTS = 20000
MAX_CONCURRENCY = 32


def command(url: str, requests: int, concurrency: int) -> list[str]:
    """ab opens a new connection per request (no -k), so IPVS schedules every request.
    -l: the pages differ by real server; -s: a request that hangs fails after 5 s."""
    return ["ab", "-n", str(requests), "-c", str(concurrency), "-s", "5", "-l", "-r", url]


STATS = ["sudo", "-n", "ipvsadm", "-L", "-n", "--stats", "--exact"]


@dataclass
class Target:
    """What a bench loads, and whose IPVS counters split it."""

    title: str  # the service as report() names it
    url: str
    director: str  # the node whose IPVS table schedules the load
    key: str  # the service, as service_key() names it: "tcp VIP:port" or "fwm MARK"
    names: dict[str, str]  # each real server as IPVS lists it (address:port) -> its name
    stats: list[str] = field(default_factory=lambda: STATS)


def vip_target(lab: Lab, svc: VirtualService, director: str) -> Target:
    """A virtual service's VIP, scheduled by the active director."""
    return Target(
        title=f"{svc.key} ({svc.scheduler}, {svc.forwarding.value})",
        url=f"http://{host_port(svc.addresses[0], svc.port)}/",
        director=director,
        key=svc.key,
        names={
            host_port(rs.address, svc.real_port(rs)): lab.server_at(rs.address, svc.real_port(rs), svc.protocol)
            for rs in svc.real_servers
        },
    )


def mesh_target(lab: Lab, node: str) -> Target:
    """A routing mesh's first published port on one node: its ingress namespace schedules it
    over the tasks of every node, so the split is read there."""
    published, mesh = lab.mesh.publish[0], lab.mesh
    address = next(iter(lab.nodes[node].addresses.values()))
    return Target(
        title=f"port {published.port} of {node} ({mesh.scheduler}, fwmark {published.fwmark} in {SBOX})",
        url=f"http://{address}:{published.port}/",
        director=node,
        key=service_key(None, None, None, published.fwmark),
        names={
            f"{a}:{published.target_port}": task
            for t_node in lab.swarm_nodes
            for task, a in lab.nodes[t_node].tasks.items()
        },
        stats=ingress_commands({"stats": STATS})["stats"],
    )


@dataclass
class Result:
    complete: int
    failed: int
    per_second: float
    mean_ms: float
    percentiles: dict[int, int] = field(default_factory=dict)  # 50 -> ms
    split: dict[str, int] = field(default_factory=dict)  # real server -> new connections


def _number(pattern: str, text: str) -> float:
    m = re.search(pattern, text, re.M)
    if not m:
        raise LabkitError(f"ab printed no {pattern!r}:\n{text[-500:]}")
    return float(m[1])


def parse_ab(text: str) -> Result:
    return Result(
        complete=int(_number(r"^Complete requests:\s+(\d+)", text)),
        failed=int(_number(r"^Failed requests:\s+(\d+)", text)),
        per_second=_number(r"^Requests per second:\s+([\d.]+)", text),
        mean_ms=_number(r"^Time per request:\s+([\d.]+) \[ms\] \(mean\)$", text),
        percentiles={int(p): int(ms) for p, ms in re.findall(r"^\s+(\d+)%\s+(\d+)", text, re.M)},
    )


def split(svc_key: str, before: str, after: str, names: dict[str, str]) -> dict[str, int]:
    """New connections per real server between two `ipvsadm -L -n --stats --exact` listings;
    `names` maps 'address:port' to the node's name."""
    was, now = ipvs.parse_counters(before), ipvs.parse_counters(after)
    return {
        names.get(dest, dest): stats.conns - (was[(key, dest)].conns if (key, dest) in was else 0)
        for (key, dest), stats in now.items()
        if key == svc_key and dest is not None
    }


def report(target: Target, client: str, requests: int, concurrency: int, result: Result, width: int) -> list[str]:
    """What `labkit bench` prints, in lines of at most `width` (a service key, a node and its count
    are never split)."""
    lines = packed(
        f"{target.title} via {target.director}:",
        [f"{requests} requests,", f"{concurrency} at a time,", f"from {client}"],
        width,
    )
    lines += packed(
        f"  {result.per_second:.1f} requests/s,",
        [f"mean {result.mean_ms:.1f} ms;", f"completed {result.complete},", f"failed {result.failed}"],
        width,
    )
    latency = [f"p{p} {ms}" for p, ms in result.percentiles.items() if p in (50, 90, 99, 100)]
    lines += packed("  latency ms:", latency, width, joint=",")
    total = sum(result.split.values()) or 1
    split = [f"{name} {n} ({100 * n / total:.0f}%)" for name, n in sorted(result.split.items())]
    return lines + packed("  split:", split, width, joint=",")


def bench(running: RunningLab, target: Target, requests: int, concurrency: int) -> Result:
    """ab from the client against the target, with the split per real server from the counters."""
    before = settled(running, target)
    result = parse_ab(running.run(running.lab.clients[0], command(target.url, requests, concurrency)))
    deadline = time.monotonic() + 6  # the kernel's counters lag up to about 2 s
    while True:
        result.split = split(target.key, before, running.run(target.director, target.stats), target.names)
        if sum(result.split.values()) >= result.complete or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def settled(running: RunningLab, target: Target, seconds: float = 8) -> str:
    """The director's counters once they hold every connection made so far: the kernel adds each
    CPU's counts to what ipvsadm reads only every 2 s, so a reading right after other traffic
    (another bench, a check) would count part of it in this bench's split. Two readings 2.2 s
    apart that agree are settled."""
    deadline = time.monotonic() + seconds
    last = running.run(target.director, target.stats)
    while time.monotonic() < deadline:
        time.sleep(2.2)
        now = running.run(target.director, target.stats)
        if ipvs.parse_counters(now) == ipvs.parse_counters(last):
            return now
        last = now
    return last
