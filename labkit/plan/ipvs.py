"""IPVS rules and tables: the rules file labkit loads, and ipvsadm's listings parsed.

This is the one place that knows ipvsadm's text formats. Pure: no SSH, no subprocess.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address

from labkit.errors import LabkitError
from labkit.labfile import Forwarding, Lab, Protocol, Tunnel, VirtualService
from labkit.labfile.model import host_port, service_key


def rules(lab: Lab) -> str:
    """The lab's services in ipvsadm-save -n format, ready for ipvsadm-restore."""
    return "".join(service_rules(svc) for svc in lab.services)


def service_name(svc: VirtualService) -> str:
    """How ipvsadm names a service in its options: `-t VIP:port`, `-u VIP:port` or `-f MARK`."""
    return f"-f {svc.fwmark}" if svc.fwmark else f"{svc.protocol.flag} {host_port(svc.vip, svc.port)}"


def service_rules(svc: VirtualService) -> str:
    """One service and its real servers in ipvsadm-save -n format."""
    name = service_name(svc)
    persistence = f" -p {svc.persistence}" if svc.persistence else ""
    ops = " -o" if svc.one_packet else ""  # one-packet scheduling, as ipvsadm-save writes it
    lines = [f"-A {name} -s {svc.scheduler}{persistence}{ops}"]
    tunnel = "".join(f" {word}" for word in tunnel_options(svc))
    for rs in svc.real_servers:
        # As ipvsadm-save prints it: a TUN or DR real server gets the VIP's port (listed_port).
        lines.append(
            f"-a {name} -r {host_port(rs.address, svc.listed_port(rs))} {svc.forwarding.flag} -w {rs.weight}{tunnel}"
        )
    return "\n".join(lines) + "\n"


def tunnel_options(svc: VirtualService) -> list[str]:
    """ipvsadm's tunnel options for a TUN real server, in the order ipvsadm-save (1.31, kernel
    5.2+) prints them: the type, GUE's port, and the checksum option GUE and GRE carry."""
    kind = svc.tunnel_type
    if kind is None:
        return []
    words = ["--tun-type", kind.value]
    if kind == Tunnel.gue:
        words += ["--tun-port", str(svc.tunnel_port)]
    if kind != Tunnel.ipip:
        words.append("--tun-nocsum")  # labkit asks for no checksums: the kernel's default
    return words


def tunnel_info(svc: VirtualService) -> str | None:
    """What `ipvsadm -L -n --tun-info` shows in its TunnelInfo column for the service's real
    servers: `ipip`, `gue:PORT:-c` or `gre:-c` (-c: no checksum)."""
    kind = svc.tunnel_type
    if kind is None:
        return None
    return {Tunnel.ipip: "ipip", Tunnel.gue: f"gue:{svc.tunnel_port}:-c", Tunnel.gre: "gre:-c"}[kind]


# How `ipvsadm -L -n` names each forwarding method.
LISTED = {f.listed_as: f for f in Forwarding}


@dataclass
class Destination:
    address: str
    port: int
    forward: Forwarding
    weight: int
    active: int = 0
    inactive: int = 0
    tunnel: str | None = None  # the TunnelInfo column of `--tun-info` (ipip, gue:6080:-c, ...)
    # Filled by table() from the --stats and --rate listings; None where a listing lacked the row.
    stats: Stats | None = None
    rates: Rates | None = None

    @property
    def key(self) -> str:
        return host_port(self.address, self.port)


@dataclass
class Service:
    """A virtual service: an address (protocol, VIP and port), or a firewall mark (ipvsadm -f)."""

    protocol: Protocol | None  # None for a firewall-mark service
    vip: str | None
    port: int | None
    scheduler: str
    persistence: int | None = None
    destinations: list[Destination] = field(default_factory=list)
    fwmark: int | None = None
    ops: bool = False  # one-packet scheduling (-o): every UDP datagram is scheduled on its own
    stats: Stats | None = None
    rates: Rates | None = None

    @property
    def key(self) -> str:
        return service_key(self.protocol, self.vip, self.port, self.fwmark)


def _addr_port(text: str) -> tuple[str, int]:
    """`192.168.55.100:80` or `[fd00:55::100]:80` -> the address (no brackets) and the port."""
    addr, _, port = text.rpartition(":")
    return addr.removeprefix("[").removesuffix("]"), int(port)


# print_service_entry: "%-4s %s" (protocol, address:port) or "FWM  %u", then the scheduler, then
# "(flags)" for sh/mh flags, "persistent T", "mask M", "pe NAME" and "ops", each only when set.
SERVICE = re.compile(r"^(?:(TCP|UDP|SCTP)\s+(\S+)|FWM\s+(\d+))\s+(\S+)(.*)$")


def _protocol(listed: str) -> Protocol:
    try:
        return Protocol(listed.lower())
    except ValueError:
        raise LabkitError(
            f"ipvsadm lists a {listed} service, which no labkit lab makes: remove it with ipvsadm -D"
        ) from None


def _forward(listed: str) -> Forwarding:
    if listed not in LISTED:
        raise LabkitError(
            f"ipvsadm lists a real server forwarded as {listed!r}, which no labkit lab makes "
            f"(known: {', '.join(LISTED)})"
        )
    return LISTED[listed]


# print_service_entry: "  -> %-28s %-7s %-6d %-10u %-10u" (address:port, forward, weight, active,
# inactive); with --tun-info a TunnelInfo column after the forward method ("n/a" when not a tunnel).
DEST = re.compile(r"^\s+->\s+(\S+)\s+(\w+)\s+(?:(\S*[a-z/]\S*)\s+)?(\d+)\s+(\d+)\s+(\d+)")


def parse_list(text: str) -> list[Service]:
    """Parse `ipvsadm -L -n` (seed 002's listing, for instance), with or without --tun-info."""
    services: list[Service] = []
    for line in text.splitlines():
        if m := SERVICE.match(line):
            addr, port = _addr_port(m[2]) if m[1] else (None, None)
            persistent = re.search(r"\bpersistent (\d+)", m[5])
            services.append(
                Service(
                    _protocol(m[1]) if m[1] else None,
                    addr,
                    port,
                    m[4],
                    int(persistent[1]) if persistent else None,
                    fwmark=int(m[3]) if m[3] else None,
                    ops=re.search(r"\bops\b", m[5]) is not None,
                )
            )
        elif (m := DEST.match(line)) and services:
            addr, port = _addr_port(m[1])
            services[-1].destinations.append(
                Destination(
                    addr,
                    port,
                    _forward(m[2]),
                    int(m[4]),
                    int(m[5]),
                    int(m[6]),
                    m[3] if m[3] not in (None, "n/a") else None,
                )
            )
    return services


@dataclass
class Stats:
    conns: int
    in_packets: int
    out_packets: int
    in_bytes: int
    out_bytes: int


def parse_stats(text: str) -> dict[str, Stats]:
    """Parse `ipvsadm -L -n --stats --exact` into per-service counters, keyed like Service.key."""
    return {svc: stats for (svc, dest), stats in parse_counters(text).items() if dest is None}


def expected(svc: VirtualService) -> Service:
    """What `ipvsadm -L -n` should list for a service of the lab."""
    destinations = [
        Destination(str(rs.address), svc.listed_port(rs), svc.forwarding, rs.weight) for rs in svc.real_servers
    ]
    if svc.fwmark:
        return Service(
            None, None, None, str(svc.scheduler), svc.persistence, destinations, fwmark=svc.fwmark, ops=svc.one_packet
        )
    return Service(
        svc.protocol, str(svc.vip), svc.port, str(svc.scheduler), svc.persistence, destinations, ops=svc.one_packet
    )


# ---- the listings behind `labkit show` ----------------------------------------------------
#
# The kernel does not count in the numbers ipvsadm prints at the moment it prints them: the IPVS
# estimator sums the per-CPU counters and computes the rates about every 2 s (a timer up to kernel
# 6.1, per-netns kthreads since 6.2), and --stats and --rate print its last result. A count can
# lag the traffic by up to 2 s, and a rate is a smoothed average over several periods.


@dataclass
class Rates:
    cps: int  # connections per second
    in_pps: int
    out_pps: int
    in_bps: int  # bytes per second, as ipvsadm prints it
    out_bps: int


# print_service_entry under --stats or --rate: "%-33s" (the service) or "  -> %-28s" (a real
# server), then five numbers. Without --exact ipvsadm rounds large ones to "1234K", "12M"...
COUNTERS = re.compile(r"^(?:(TCP|UDP|SCTP)\s+(\S+)|FWM\s+(\d+)|\s+->\s+(\S+))((?:\s+\S+){5})\s*$")


def _counter_rows(text: str) -> dict[tuple[str, str | None], tuple[int, ...]]:
    rows: dict[tuple[str, str | None], tuple[int, ...]] = {}
    service = None
    for line in text.splitlines():
        if not (m := COUNTERS.match(line)):
            continue
        words = m[5].split()
        if not all(w.isdigit() for w in words):
            raise LabkitError(f"ipvsadm rounded the numbers in {line.strip()!r}: list with --exact")
        if m[4]:
            rows[(service, m[4])] = tuple(int(w) for w in words)
        else:
            addr, port = _addr_port(m[2]) if m[1] else (None, None)
            service = service_key(_protocol(m[1]) if m[1] else None, addr, port, int(m[3]) if m[3] else None)
            rows[(service, None)] = tuple(int(w) for w in words)
    return rows


def parse_counters(text: str) -> dict[tuple[str, str | None], Stats]:
    """Parse `ipvsadm -L -n --stats --exact`: (Service.key, None) for a service's totals and
    (Service.key, Destination.key) for each of its real servers."""
    return {key: Stats(*row) for key, row in _counter_rows(text).items()}


def parse_rates(text: str) -> dict[tuple[str, str | None], Rates]:
    """Parse `ipvsadm -L -n --rate --exact`, keyed as parse_counters keys."""
    return {key: Rates(*row) for key, row in _counter_rows(text).items()}


def table(list_text: str, stats_text: str, rate_text: str) -> list[Service]:
    """The three listings of one director merged: `ipvsadm -L -n` with each service's and each
    real server's counters (--stats --exact) and rates (--rate --exact).

    The three are separate reads of the kernel's table; a service or real server added or removed
    between them keeps stats or rates of None rather than another's numbers.
    """
    stats, rates = parse_counters(stats_text), parse_rates(rate_text)
    services = parse_list(list_text)
    for svc in services:
        svc.stats, svc.rates = stats.get((svc.key, None)), rates.get((svc.key, None))
        for dest in svc.destinations:
            dest.stats, dest.rates = stats.get((svc.key, dest.key)), rates.get((svc.key, dest.key))
    return services


@dataclass
class Connection:
    """One entry of the connection table. A persistent service also lists its templates: client
    port 0, state NONE for TCP, protocol IP for a firewall-mark service."""

    protocol: str  # TCP, UDP, SCTP, IP
    expire: int  # seconds until the entry expires
    state: str  # ESTABLISHED, SYN_RECV, FIN_WAIT, TIME_WAIT, CLOSE, NONE, UDP ...
    source: str  # client address:port
    virtual: str  # VIP:port
    destination: str  # real server address:port


# print_conn: "%-3s %-6s %-11s %-18s %-18s %s", the expiry as minutes:seconds; columns wider than
# their field (a client at 192.168.55.200:43122) push the rest right by one space only.
CONNECTION = re.compile(r"^(\S+)\s+(\d+):(\d\d)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)")


def parse_connections(text: str) -> list[Connection]:
    """Parse `ipvsadm -L -n -c`."""
    return [
        Connection(m[1], int(m[2]) * 60 + int(m[3]), m[4], m[5], m[6], m[7])
        for line in text.splitlines()
        if (m := CONNECTION.match(line))
    ]


@dataclass
class SyncDaemon:
    """A connection synchronisation daemon: the master sends its connections to the backups,
    so a backup director taking over the VIP keeps the established connections."""

    role: str  # master or backup
    interface: str  # mcast=: the interface the sync messages leave (master) or arrive on (backup)
    syncid: int
    options: dict[str, str] = field(default_factory=dict)  # maxlen, group, port, ttl when reported


# list_daemon: "%s sync daemon (mcast=%s, syncid=%d" then ", maxlen=", ", group=", ", port=",
# ", ttl=" when the kernel reports them, then ")".
DAEMON = re.compile(r"^(master|backup) sync daemon \((.*)\)\s*$")


def parse_daemons(text: str) -> list[SyncDaemon]:
    """Parse `ipvsadm -L --daemon`: empty when no sync daemon runs."""
    daemons = []
    for line in text.splitlines():
        if m := DAEMON.match(line):
            options = dict(part.split("=", 1) for part in m[2].split(", "))
            daemons.append(SyncDaemon(m[1], options.pop("mcast"), int(options.pop("syncid")), options))
    return daemons


# ---- what a director is asked, and which VIPs it holds

# What labkit show (and failover, and a running lab) runs on each director, as words for shlex.join. --exact because without it ipvsadm
# rounds large numbers to K, M, G; -n because name lookups in an isolated lab only time out.
ADDRESSES = ["ip", "-o", "addr", "show"]  # which VIPs a director holds, IPv4 and IPv6
COMMANDS: dict[str, list[str]] = {
    "list": ["sudo", "-n", "ipvsadm", "-L", "-n"],
    "stats": ["sudo", "-n", "ipvsadm", "-L", "-n", "--stats", "--exact"],
    "rate": ["sudo", "-n", "ipvsadm", "-L", "-n", "--rate", "--exact"],
    "daemon": ["sudo", "-n", "ipvsadm", "-L", "--daemon"],
    "addresses": ADDRESSES,
}

INET = re.compile(r"\binet6? ([0-9a-f.:]+)/\d+")


def holds_vip(addr_text: str, vip: IPv4Address | IPv6Address | str) -> bool:
    """Whether `ip -o addr show` lists the VIP among the node's addresses."""
    return ip_address(str(vip)) in {ip_address(a) for a in INET.findall(addr_text)}


def held_vips(lab: Lab, addr_text: str) -> list[str]:
    """The lab's VIPs that `ip -o addr show` lists."""
    return [vip for vip in [str(vip) for vip in lab.vips] if holds_vip(addr_text, vip)]


def holders(lab: Lab, addresses: Mapping[str, str]) -> list[str]:
    """The directors whose `ip -o addr show` (director -> output) lists the first VIP."""
    return [d for d, text in addresses.items() if holds_vip(text, lab.vips[0])]
