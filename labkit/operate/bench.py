"""`labkit bench`: a bounded load from the client with ApacheBench (Debian's apache2-utils),
and the split per real server as the director's IPVS counters saw it. bench() runs ab and
ipvsadm; building the command and reading the outputs is pure."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from labkit.errors import LabkitError
from labkit.labfile import VirtualService
from labkit.labfile.model import host_port
from labkit.operate.show import packed
from labkit.plan import ipvs
from labkit.running import RunningLab

MAX_REQUESTS = 20000
MAX_CONCURRENCY = 32


def command(svc: VirtualService, requests: int, concurrency: int) -> list[str]:
    """ab opens a new connection per request (no -k), so IPVS schedules every request.
    -l: the pages differ by real server; -s: a request that hangs fails after 5 s."""
    return [
        "ab",
        "-n",
        str(requests),
        "-c",
        str(concurrency),
        "-s",
        "5",
        "-l",
        "-r",
        f"http://{host_port(svc.addresses[0], svc.port)}/",
    ]


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


def report(
    svc: VirtualService, director: str, client: str, requests: int, concurrency: int, result: Result, width: int
) -> list[str]:
    """What `labkit bench` prints, in lines of at most `width` (a service key, a node and its count
    are never split)."""
    lines = packed(
        f"{svc.key} ({svc.scheduler}, {svc.forwarding.value}) via {director}:",
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


STATS = ["sudo", "-n", "ipvsadm", "-L", "-n", "--stats", "--exact"]


def bench(running: RunningLab, svc: VirtualService, requests: int, concurrency: int) -> tuple[str, Result]:
    """ab from the client against the service; the director that served it and the result,
    with the split per real server from its counters."""
    lab = running.lab
    director = running.holder() or lab.active_director
    before = settled(running, director)
    result = parse_ab(running.run(lab.clients[0], command(svc, requests, concurrency)))
    names = {
        host_port(rs.address, svc.real_port(rs)): lab.server_at(rs.address, svc.real_port(rs), svc.protocol)
        for rs in svc.real_servers
    }
    deadline = time.monotonic() + 6  # the kernel's counters lag up to about 2 s
    while True:
        result.split = split(svc.key, before, running.run(director, STATS), names)
        if sum(result.split.values()) >= result.complete or time.monotonic() > deadline:
            return director, result
        time.sleep(0.5)


def settled(running: RunningLab, director: str, seconds: float = 8) -> str:
    """The director's counters once they hold every connection made so far: the kernel adds each
    CPU's counts to what ipvsadm reads only every 2 s, so a reading right after other traffic
    (another bench, a check) would count part of it in this bench's split. Two readings 2.2 s
    apart that agree are settled."""
    deadline = time.monotonic() + seconds
    last = running.run(director, STATS)
    while time.monotonic() < deadline:
        time.sleep(2.2)
        now = running.run(director, STATS)
        if ipvs.parse_counters(now) == ipvs.parse_counters(last):
            return now
        last = now
    return last
