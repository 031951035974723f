"""`labkit trace`: one request from the client, captured with tcpdump on the active director
and the real servers, told hop by hop. trace() runs the captures and the request; the rest is pure.

Every capture point is one interface of one node. Clocks differ between VMs, so the hops are
put in the order a packet must take (client -> director -> real server and back), not sorted
by time. The request's first packet (SYN, or the datagram) and the reply's first packet (SYN-ACK,
or the answering datagram) are shown.
"""

from __future__ import annotations

import random
import re
import shlex
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from labkit.labfile import Forwarding, Lab, Protocol, Tunnel, VirtualService
from labkit.labfile.model import host_port
from labkit.render.vagrantfile import interfaces
from labkit.running import RunningLab

LIMIT = 60  # seconds: a capture that is never stopped ends by itself


@dataclass(frozen=True)
class Packet:
    src_mac: str
    dst_mac: str
    src: str  # address.port
    dst: str
    flags: str  # tcpdump's: S for SYN, S. for SYN-ACK; UDP for a datagram
    outer: tuple[str, str] | None = None  # a tunnel packet: the outer source and destination
    wrap: str = ""  # the tunnel: ipip, gre, or gue (then outer carries the UDP ports)


@dataclass(frozen=True)
class Hop:
    node: str
    interface: str
    packet: Packet
    note: str = ""


def capture_points(lab: Lab, svc: VirtualService) -> dict[str, list[str]]:
    """node -> the interfaces to listen on: every lab network of the active director and of
    the service's real servers, and the device where its tunnel ends (tunl0, gre0)."""
    points = {lab.active_director: list(lab.nodes[lab.active_director].addresses)}
    for rs in svc.real_servers:
        # a container on the director's bridge has no node of its own: its packets cross the director
        node = lab.node_at(rs.address) or lab.active_director
        points.setdefault(node, list(lab.nodes[node].addresses))
        points[node] += [svc.tunnel_type.device] if svc.tunnel_type else []
    for node, devices in points.items():
        # a node's containers are reached over its bridge: the DNATed or forwarded request shows there
        bridge = lab.nodes[node].bridge
        if bridge is not None and any(
            lab.server_at(rs.address, svc.real_port(rs)) in lab.nodes[node].containers for rs in svc.real_servers
        ):
            devices.append(bridge.name)
        points[node] = list(dict.fromkeys(devices))
    return points


def capture_filter(port: int, protocol: Protocol = Protocol.tcp, gue_port: int | None = None) -> str:
    """The client's port, and the tunnel packets, whose TCP or UDP header is inside: IP-in-IP
    (protocol 4), GRE (47), and GUE's UDP port. A GUE packet is printed in hex too (-x), since
    tcpdump does not read what a GUE port carries."""
    return f"{protocol.value} port {port} or ip proto 4 or ip proto 47" + (
        f" or udp dst port {gue_port}" if gue_port else ""
    )


def start_capture(devices: list[str], tcpdump_filter: str, tag: str, hex_too: bool = False) -> str:
    """Shell: tcpdump on each device in the background (LIMIT seconds at most), done once every
    one listens (an emulated guest under load may take many seconds to start tcpdump, so no
    fixed time fits); false, with tcpdump's errors, if one never does. read_capture() prints the
    captures and ends them. Used by trace and by the checks that watch the wire."""
    files = [f"/tmp/labkit-{tag}.{dev}" for dev in devices]
    listen = " ".join(
        f"timeout {LIMIT} tcpdump -i {shlex.quote(dev)} -t -e -n -l{' -x' if hex_too else ''} --immediate-mode "
        f"{shlex.quote(tcpdump_filter)} > {f} 2> {f}.err < /dev/null & echo $! >> /tmp/labkit-{tag}.pids;"
        for dev, f in zip(devices, files)
    )
    listening = " && ".join(f"grep -q 'listening on' {f}.err" for f in files)
    errors = " ".join(f"{f}.err" for f in files)
    return (
        f"rm -f /tmp/labkit-{tag}.*; {listen} for i in $(seq 300); do {listening} && break; sleep 0.1; done; "
        f"{listening} || {{ cat {errors} >&2; false; }}"
    )


def read_capture(devices: list[str], tag: str) -> str:
    """Shell: each device's capture after a `== device` line, then the captures ended. tcpdump
    -l has written every packet already, so there is nothing to wait for."""
    show = "; ".join(f"echo '== {dev}'; cat /tmp/labkit-{tag}.{dev}" for dev in devices)
    return f"{show}; kill -INT $(cat /tmp/labkit-{tag}.pids) 2>/dev/null; rm -f /tmp/labkit-{tag}.*"


MACS = r"(?:(?P<src_mac>[0-9a-f:]{17}) > (?P<dst_mac>[0-9a-f:]{17}), .*?length \d+: )?(?:IP6? )?"
IP = r"\d+\.\d+\.\d+\.\d+"
# tcpdump writes an IPv4 endpoint as 192.168.55.200.43616 and an IPv6 one as fd00:55::200.43616.
ENDPOINT = rf"(?:{IP}|[0-9a-f]*:[0-9a-f:]*)\.\d+"
LINE = re.compile(
    MACS + rf"(?:(?P<outer_src>{IP}) > (?P<outer_dst>{IP}): (?P<gre>GREv0, (?:.*?, )?length \d+: )?(?:IP )?)?"
    rf"(?P<src>{ENDPOINT}) > (?P<dst>{ENDPOINT}): (?:Flags \[(?P<flags>[^\]]+)\]|(?P<udp>UDP), length)"
)
HEX_LINE = re.compile(r"^\s+0x[0-9a-f]{4}:\s+((?:[0-9a-f]{2,4}\s?)+)")
# tcpdump's letters for the TCP flags, in the order it prints them (S. is SYN-ACK).
TCP_FLAGS = ((0x01, "F"), (0x02, "S"), (0x04, "R"), (0x08, "P"), (0x10, "."), (0x20, "U"), (0x40, "E"), (0x80, "W"))


def _ip(data: bytes) -> str:
    return ".".join(str(b) for b in data)


def inner_of_gue(data: bytes) -> tuple[str, str, str] | None:
    """The client's TCP packet inside a GUE packet (outer IP, UDP, GUE header, IP, TCP): its
    source and destination (address.port) and tcpdump's flags; None if it holds something else."""
    try:
        at = (data[0] & 0x0F) * 4 + 8  # after the outer IP and UDP headers
        guehdr = data[at]
        if guehdr >> 6 != 0 or data[at + 1] != 4:  # GUE version 0 carrying IP-in-IP
            return None
        inner = at + 4 + (guehdr & 0x1F) * 4
        if data[inner] >> 4 != 4 or data[inner + 9] != 6:  # IPv4 carrying TCP
            return None
        tcp = inner + (data[inner] & 0x0F) * 4
        ports = [int.from_bytes(data[tcp + i : tcp + i + 2], "big") for i in (0, 2)]
        bits = data[tcp + 13]
        flags = "".join(c for bit, c in TCP_FLAGS if bits & bit)
        return (
            f"{_ip(data[inner + 12 : inner + 16])}.{ports[0]}",
            f"{_ip(data[inner + 16 : inner + 20])}.{ports[1]}",
            flags,
        )
    except IndexError:
        return None


def parse(output: str) -> dict[str, list[Packet]]:
    """The capture command's output -> device -> packets."""
    out: dict[str, list[Packet]] = {}
    device = ""
    udp: tuple[re.Match, bytearray] | None = None  # a UDP line, and its hex lines while they are read

    def udp_done() -> None:
        nonlocal udp
        if udp is not None:
            m, data = udp
            if inner := inner_of_gue(bytes(data)):
                out[device].append(Packet(m["src_mac"] or "", m["dst_mac"] or "", *inner, (m["src"], m["dst"]), "gue"))
            else:
                out[device].append(Packet(m["src_mac"] or "", m["dst_mac"] or "", m["src"], m["dst"], "UDP"))
        udp = None

    for line in output.splitlines():
        if udp is not None and (h := HEX_LINE.match(line)):
            udp[1].extend(bytes.fromhex(h[1].replace(" ", "")))
            continue
        udp_done()
        if line.startswith("== "):
            device = line[3:].strip()
            out[device] = []
        elif not device:
            continue
        elif m := LINE.search(line):
            outer = (m["outer_src"], m["outer_dst"]) if m["outer_src"] else None
            wrap = ("gre" if m["gre"] else "ipip") if outer else ""
            if m["udp"] and not outer:  # a datagram, or a GUE packet if hex lines follow (-x)
                udp = (m, bytearray())
            else:
                out[device].append(
                    Packet(
                        m["src_mac"] or "", m["dst_mac"] or "", m["src"], m["dst"], m["flags"] or m["udp"], outer, wrap
                    )
                )
    udp_done()
    return out


def macs(lab: Lab) -> dict[str, str]:
    """MAC address -> 'node:network', from the fixed MACs labkit gives every lab NIC."""
    return {i.mac: f"{node}:{i.network}" for node in lab.nodes for i in interfaces(lab, node)}


def _first(packets: list[Packet], client: set[str], flags: str, from_client: bool) -> Packet | None:
    """The first packet with these flags from the client's address and port (a request), or to
    it (a reply): every method keeps both on the way in and out. The port alone is not enough:
    a health check between two lab nodes may happen to use the same one."""
    for p in packets:
        if (p.src if from_client else p.dst) in client and p.flags == flags:
            return p
    return None


def hops(
    lab: Lab, svc: VirtualService, captured: dict[str, dict[str, list[Packet]]], client_port: int
) -> tuple[list[Hop], list[Hop]]:
    """The request's hops and the reply's, in path order, with what changed at each."""
    director = lab.active_director
    asked, answered = ("UDP", "UDP") if svc.protocol == Protocol.udp else ("S", "S.")
    client = {f"{address}.{client_port}" for address in lab.nodes[lab.clients[0]].all_addresses()}
    found = {
        (node, dev): p
        for node, devs in captured.items()
        for dev, packets in devs.items()
        if (p := _first(packets, client, asked, True))
    }
    replies = {
        (node, dev): p
        for node, devs in captured.items()
        for dev, packets in devs.items()
        if (p := _first(packets, client, answered, False))
    }
    server = next((node for node, _ in found if node != director), None)
    request: list[Hop] = []
    reply: list[Hop] = []
    client_net = next(iter(lab.nodes[lab.clients[0]].addresses))

    def bridge(node: str) -> list[str]:
        # where a node's containers are reached: the request arrives last there, the reply leaves first
        return [lab.nodes[node].bridge.name] if lab.nodes[node].bridge is not None else []

    order = [(director, client_net)] + [(director, d) for d in lab.nodes[director].addresses if d != client_net]
    order += [(director, d) for d in bridge(director)]
    if server:
        order += [(server, d) for d in lab.nodes[server].addresses]
        order += [(server, svc.tunnel_type.device)] if svc.tunnel_type else []
        order += [(server, d) for d in bridge(server)]
    for key in order:
        if key in found:
            request.append(
                Hop(*key, found[key], _request_note(svc, key[1], request[-1].packet if request else None, found[key]))
            )
    back = (
        ([(server, d) for d in bridge(server) + list(lab.nodes[server].addresses)] if server else [])
        + [(director, d) for d in bridge(director)]
        + [(director, d) for d in lab.nodes[director].addresses if d != client_net]
        + [(director, client_net)]
    )
    for key in back:
        if key in replies:
            to_client = key == (director, client_net)
            reply.append(
                Hop(*key, replies[key], _reply_note(svc, reply[-1].packet if reply else None, replies[key], to_client))
            )
    return request, reply


WRAPS = {"ipip": "IP-in-IP", "gre": "GRE"}


def _request_note(svc: VirtualService, device: str, before: Packet | None, p: Packet) -> str:
    if before is None:
        return "from the client to the VIP"
    if p.outer and not before.outer:
        wrap = f"GUE (UDP {p.outer[1].rsplit('.', 1)[1]})" if p.wrap == "gue" else WRAPS[p.wrap]
        return f"wrapped in {wrap} {p.outer[0]} > {p.outer[1]}; inside, still the client's packet to the VIP"
    if before.outer and not p.outer:
        note = f"unwrapped on {device}: the client's packet to the VIP, which this real server holds"
        if svc.port_mapping and p.dst.rsplit(".", 1)[1] == str(svc.port):
            real = {svc.real_port(rs) for rs in svc.real_servers} - {svc.port}
            note += f"; its firewall then maps port {svc.port} to {', '.join(map(str, sorted(real)))} (DNAT)"
        return note
    if (p.src, p.dst, p.outer) == (before.src, before.dst, before.outer):
        if p.dst_mac != before.dst_mac:
            return "only the destination MAC rewritten: the IP packet is still the client's, to the VIP"
        return "arrives as sent"
    if p.dst != before.dst:
        return f"destination rewritten {before.dst} -> {p.dst}; the client's port kept"
    return ""


def _reply_note(svc: VirtualService, before: Packet | None, p: Packet, to_client: bool = False) -> str:
    if before is None:
        if svc.forwarding == Forwarding.masq:
            return "the real server answers the client, through its gateway (the director)"
        return "the real server answers from the VIP straight to the client, bypassing the director"
    if p.src != before.src:
        # a published port's node rewrites it first (conntrack undoes its DNAT), the director last
        return f"source rewritten {before.src} -> {p.src}" + (": the client sees the VIP answer" if to_client else "")
    if to_client and svc.forwarding == Forwarding.masq and svc.one_packet:
        return (
            "not rewritten: one-packet scheduling dropped the director's entry once the request passed, "
            "so the client sees the real server answer, not the VIP"
        )
    return "arrives as sent"


def describe(lab: Lab, p: Packet) -> str:
    owners = macs(lab)
    link = f"{owners.get(p.src_mac, p.src_mac)} > {owners.get(p.dst_mac, p.dst_mac)}  " if p.src_mac else ""
    outer = f"[{p.outer[0]} > {p.outer[1]} {p.wrap}] " if p.outer else ""
    return f"{link}{outer}{p.src} > {p.dst} [{p.flags}]"


@dataclass
class Trace:
    url: str
    client_port: int
    answer: str  # the body the client got: the real server's name
    request: list[Hop]
    reply: list[Hop]


# One datagram from the client's port to the VIP; prints the answer (the real server's name).
DATAGRAM = (
    "import socket, sys; family = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET; "
    "s = socket.socket(family, socket.SOCK_DGRAM); s.settimeout(5); "
    "s.bind(('', int(sys.argv[3]))); s.sendto(b'labkit', (sys.argv[1], int(sys.argv[2]))); "
    "print(s.recv(2048).decode())"
)


def free_port(sockets: str) -> int:
    """The client's port for the traced request: one no socket of the client holds, in TIME_WAIT
    included (after a bench there are thousands), since curl and bind() would refuse it. SOCKETS is
    what `ss -Htanu` printed there."""
    held = {int(m) for m in re.findall(r"^\S+\s+\S+\s+\d+\s+\d+\s+\S*:(\d+)\s", sockets, re.M)}
    return random.choice([p for p in range(40000, 60000) if p not in held])


def trace(running: RunningLab, svc: VirtualService) -> Trace:
    """Listen on every capture point, send one request from the client once all listen, and
    read the captures back in path order."""
    lab = running.lab
    port = free_port(running.run(lab.clients[0], ["ss", "-Htanu"]))
    points = capture_points(lab, svc)
    gue_port = svc.tunnel_port if svc.tunnel_type == Tunnel.gue else None
    tag = f"trace-{port}"
    tcpdump_filter = capture_filter(port, svc.protocol, gue_port)
    sudo = ["sudo", "-n", "sh", "-c"]
    with ThreadPoolExecutor(len(points)) as pool:
        list(
            pool.map(
                lambda node: running.run(
                    node, [*sudo, start_capture(points[node], tcpdump_filter, tag, hex_too=gue_port is not None)]
                ),
                points,
            )
        )
        try:
            if svc.protocol == Protocol.udp:
                url = f"udp {host_port(svc.addresses[0], svc.port)}"
                ask = ["python3", "-c", DATAGRAM, str(svc.addresses[0]), str(svc.port), str(port)]
            else:
                url = f"http://{host_port(svc.addresses[0], svc.port)}/"
                # -g: the brackets of an IPv6 URL are the address's, not curl's globbing
                ask = ["curl", "-sS", "-g", "-m", "5", "--local-port", str(port), url]
            answer = running.run(lab.clients[0], ask).strip()
        finally:
            outputs = dict(
                zip(points, pool.map(lambda node: running.run(node, [*sudo, read_capture(points[node], tag)]), points))
            )
    captured = {node: parse(text) for node, text in outputs.items()}
    request, reply = hops(lab, svc, captured, port)
    return Trace(url, port, answer, request, reply)
