"""IPVS rules and tables: the rules file labkit loads, and ipvsadm's listings parsed.

This is the one place that knows ipvsadm's text formats. Pure: no SSH, no subprocess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from labkit.model import Forwarding, Lab, VirtualService


def rules(lab: Lab) -> str:
    """The lab's services in ipvsadm-save -n format, ready for ipvsadm-restore."""
    lines = []
    for svc in lab.services:
        name = f"{svc.protocol.flag} {svc.vip}:{svc.port}"
        persistence = f" -p {svc.persistence}" if svc.persistence else ""
        lines.append(f"-A {name} -s {svc.scheduler}{persistence}")
        # ipvsadm 1.31 (kernel 5.3+) names the tunnel type when it saves a tunnel rule.
        tunnel = " --tun-type ipip" if svc.forwarding == Forwarding.tun else ""
        for rs in svc.real_servers:
            lines.append(f"-a {name} -r {rs.address}:{svc.real_port(rs)} {svc.forwarding.flag} -w {rs.weight}{tunnel}")
    return "\n".join(lines) + "\n"


@dataclass
class Destination:
    address: str
    port: int
    forward: str  # Masq, Tunnel, Route, Local
    weight: int
    active: int = 0
    inactive: int = 0


@dataclass
class Service:
    protocol: str  # TCP, UDP
    vip: str
    port: int
    scheduler: str
    persistence: int | None = None
    destinations: list[Destination] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.protocol.lower()} {self.vip}:{self.port}"


def _addr_port(text: str) -> tuple[str, int]:
    addr, _, port = text.rpartition(":")
    return addr, int(port)


SERVICE = re.compile(r"^(TCP|UDP|SCTP)\s+(\S+)\s+(\S+)(?:\s+persistent\s+(\d+))?")
DEST = re.compile(r"^\s+->\s+(\S+)\s+(\w+)\s+(\d+)\s+(\d+)\s+(\d+)")


def parse_list(text: str) -> list[Service]:
    """Parse `ipvsadm -L -n` (seed 002's listing, for instance)."""
    services: list[Service] = []
    for line in text.splitlines():
        if m := SERVICE.match(line):
            addr, port = _addr_port(m[2])
            services.append(Service(m[1], addr, port, m[3], int(m[4]) if m[4] else None))
        elif (m := DEST.match(line)) and services:
            addr, port = _addr_port(m[1])
            services[-1].destinations.append(
                Destination(addr, port, m[2], int(m[3]), int(m[4]), int(m[5])))
    return services


@dataclass
class Stats:
    conns: int
    in_packets: int
    out_packets: int
    in_bytes: int
    out_bytes: int


STATS = re.compile(r"^(?:(TCP|UDP|SCTP)|\s+->)\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$")


def parse_stats(text: str) -> dict[str, Stats]:
    """Parse `ipvsadm -L -n --stats --exact` into per-service counters, keyed like Service.key."""
    out: dict[str, Stats] = {}
    for line in text.splitlines():
        m = STATS.match(line)
        if m and m[1]:
            out[f"{m[1].lower()} {m[2]}"] = Stats(*(int(x) for x in m.groups()[2:]))
    return out


def expected(svc: VirtualService) -> Service:
    """What `ipvsadm -L -n` should list for a service of the lab."""
    return Service(
        svc.protocol.value.upper(), str(svc.vip), svc.port, svc.scheduler, svc.persistence,
        [Destination(str(rs.address), svc.real_port(rs), svc.forwarding.listed_as, rs.weight)
         for rs in svc.real_servers],
    )
