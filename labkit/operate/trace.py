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
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from labkit.labfile import Forwarding, Lab, Protocol, VirtualService
from labkit.labfile.model import host_port
from labkit.build.render import interfaces
from labkit.errors import LabkitError
from labkit.run.lab import RunningLab
from labkit.run.ssh import Said

SECONDS = 8  # how long each tcpdump listens


@dataclass(frozen=True)
class Packet:
    src_mac: str
    dst_mac: str
    src: str  # address.port
    dst: str
    flags: str  # tcpdump's: S for SYN, S. for SYN-ACK; UDP for a datagram
    outer: tuple[str, str] | None = None  # IP-in-IP: the outer source and destination


@dataclass(frozen=True)
class Hop:
    node: str
    interface: str
    packet: Packet
    note: str = ""


def capture_points(lab: Lab, svc: VirtualService) -> dict[str, list[str]]:
    """node -> the interfaces to listen on: every lab network of the active director and of
    the service's real servers, and tunl0 where tunnels end."""
    points = {lab.active_director: list(lab.nodes[lab.active_director].addresses)}
    for rs in svc.real_servers:
        node = lab.node_at(rs.address)
        points[node] = list(lab.nodes[node].addresses) + (["tunl0"] if svc.forwarding == Forwarding.tun else [])
    return points


CAPTURING = "labkit-capturing"  # printed once every tcpdump listens


def capture_command(devices: list[str], port: int, protocol: Protocol = Protocol.tcp) -> list[str]:
    """One shell command that listens on each device at once, says CAPTURING once every
    tcpdump is listening, and prints each capture after a `== device` line. `ip proto 4`
    catches the tunnel packets, whose TCP or UDP header is inside.

    The SECONDS of listening count from CAPTURING, not from tcpdump's start: on a loaded host
    tcpdump can take seconds to listen, and a window counted from its start could close
    before the request is sent."""
    files = [f"/tmp/labkit-trace.{dev}" for dev in devices]
    listen = " ".join(
        f"tcpdump -i {shlex.quote(dev)} -e -n -l --immediate-mode "
        f"'{protocol.value} port {port} or ip proto 4' > {f} 2> {f}.err & pids=\"$pids $!\";"
        for dev, f in zip(devices, files))
    listening = " && ".join(f"grep -q 'listening on' {f}.err" for f in files)
    ready = f"for i in $(seq 100); do {listening} && break; sleep 0.1; done; echo {CAPTURING}"
    show = "; ".join(f"echo '== {dev}'; cat {f}" for dev, f in zip(devices, files))
    return ["sudo", "-n", "sh", "-c", f"pids=; {listen} {ready}; sleep {SECONDS}; kill $pids; wait; {show}"]


# tcpdump writes an IPv4 endpoint as 192.168.55.200.43616 and an IPv6 one as fd00:55::200.43616.
ENDPOINT = r"(?:\d+\.\d+\.\d+\.\d+|[0-9a-f]*:[0-9a-f:]*)\.\d+"
LINE = re.compile(
    r"(?:(?P<src_mac>[0-9a-f:]{17}) > (?P<dst_mac>[0-9a-f:]{17}), .*?length \d+: )?"
    r"(?:IP6? )?(?:(?P<outer_src>\d+\.\d+\.\d+\.\d+) > (?P<outer_dst>\d+\.\d+\.\d+\.\d+): (?:IP )?)?"
    rf"(?P<src>{ENDPOINT}) > (?P<dst>{ENDPOINT}): "
    r"(?:Flags \[(?P<flags>[^\]]+)\]|(?P<udp>UDP), length)")


def parse(output: str) -> dict[str, list[Packet]]:
    """The capture command's output -> device -> packets."""
    out: dict[str, list[Packet]] = {}
    device = ""
    for line in output.splitlines():
        if line.startswith("== "):
            device = line[3:].strip()
            out[device] = []
        elif (m := LINE.search(line)) and device:
            outer = (m["outer_src"], m["outer_dst"]) if m["outer_src"] else None
            out[device].append(Packet(m["src_mac"] or "", m["dst_mac"] or "", m["src"], m["dst"],
                                      m["flags"] or m["udp"], outer))
    return out


def macs(lab: Lab) -> dict[str, str]:
    """MAC address -> 'node:network', from the fixed MACs labkit gives every lab NIC."""
    return {i.mac: f"{node}:{i.network}" for node in lab.nodes for i in interfaces(lab, node)}


def _first(packets: list[Packet], client_port: int, flags: str, from_client: bool) -> Packet | None:
    """The first packet with these flags from the client's port (a request), or to it (a reply):
    every method keeps the client's address and port on the way in and out."""
    for p in packets:
        end = p.src if from_client else p.dst
        if end.rsplit(".", 1)[1] == str(client_port) and p.flags == flags:
            return p
    return None


def hops(lab: Lab, svc: VirtualService, captured: dict[str, dict[str, list[Packet]]],
         client_port: int) -> tuple[list[Hop], list[Hop]]:
    """The request's hops and the reply's, in path order, with what changed at each."""
    director = lab.active_director
    asked, answered = ("UDP", "UDP") if svc.protocol == Protocol.udp else ("S", "S.")
    found = {(node, dev): p for node, devs in captured.items() for dev, packets in devs.items()
             if (p := _first(packets, client_port, asked, True))}
    replies = {(node, dev): p for node, devs in captured.items() for dev, packets in devs.items()
               if (p := _first(packets, client_port, answered, False))}
    server = next((node for node, _ in found if node != director), None)
    request: list[Hop] = []
    reply: list[Hop] = []
    client_net = next(iter(lab.nodes[lab.clients[0]].addresses))
    order = [(director, client_net)] + [(director, d) for d in lab.nodes[director].addresses if d != client_net]
    if server:
        order += [(server, d) for d in lab.nodes[server].addresses] + [(server, "tunl0")]
    for key in order:
        if key in found:
            request.append(Hop(*key, found[key], _request_note(request[-1].packet if request else None, found[key])))
    back = ([(server, d) for d in lab.nodes[server].addresses] if server else []) + \
        [(director, d) for d in lab.nodes[director].addresses if d != client_net] + [(director, client_net)]
    for key in back:
        if key in replies:
            to_client = key == (director, client_net)
            reply.append(Hop(*key, replies[key], _reply_note(svc, reply[-1].packet if reply else None, replies[key],
                                                             to_client)))
    return request, reply


def _request_note(before: Packet | None, p: Packet) -> str:
    if before is None:
        return "from the client to the VIP"
    if p.outer and not before.outer:
        return f"wrapped in IP-in-IP {p.outer[0]} > {p.outer[1]}; inside, still the client's packet to the VIP"
    if before.outer and not p.outer:
        return "unwrapped on tunl0: the client's packet to the VIP, which this real server holds"
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
        return f"source rewritten {before.src} -> {p.src}: the client sees the VIP answer"
    if to_client and svc.forwarding == Forwarding.masq and svc.one_packet:
        return ("not rewritten: one-packet scheduling dropped the director's entry once the request passed, "
                "so the client sees the real server answer, not the VIP")
    return "arrives as sent"


def describe(lab: Lab, p: Packet) -> str:
    owners = macs(lab)
    link = f"{owners.get(p.src_mac, p.src_mac)} > {owners.get(p.dst_mac, p.dst_mac)}  " if p.src_mac else ""
    outer = f"[{p.outer[0]} > {p.outer[1]} ipip] " if p.outer else ""
    return f"{link}{outer}{p.src} > {p.dst} [{p.flags}]"


@dataclass
class Trace:
    url: str
    client_port: int
    answer: str  # the body the client got: the real server's name
    request: list[Hop]
    reply: list[Hop]


# One datagram from the client's port to the VIP; prints the answer (the real server's name).
DATAGRAM = ("import socket, sys; family = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET; "
            "s = socket.socket(family, socket.SOCK_DGRAM); s.settimeout(5); "
            "s.bind(('', int(sys.argv[3]))); s.sendto(b'labkit', (sys.argv[1], int(sys.argv[2]))); "
            "print(s.recv(2048).decode())")


def trace(running: RunningLab, svc: VirtualService) -> Trace:
    """Listen on every capture point, send one request from the client once all listen, and
    read the captures back in path order."""
    lab = running.lab
    port = random.randint(40000, 59999)  # the client's port: a fresh one, not in TIME_WAIT
    points = capture_points(lab, svc)
    listening = {node: threading.Event() for node in points}
    with ThreadPoolExecutor(len(points)) as pool:
        captures = {node: pool.submit(running.run, node, capture_command(devs, port, svc.protocol),
                                      [Said(CAPTURING, listening[node])])
                    for node, devs in points.items()}
        for node, event in listening.items():
            if not event.wait(30):
                raise LabkitError(f"tcpdump on {node} did not start listening within 30 s")
        if svc.protocol == Protocol.udp:
            url = f"udp {host_port(svc.addresses[0], svc.port)}"
            ask = ["python3", "-c", DATAGRAM, str(svc.addresses[0]), str(svc.port), str(port)]
        else:
            url = f"http://{host_port(svc.addresses[0], svc.port)}/"
            # -g: the brackets of an IPv6 URL are the address's, not curl's globbing
            ask = ["curl", "-sS", "-g", "-m", "5", "--local-port", str(port), url]
        answer = running.run(lab.clients[0], ask).strip()
        captured = {node: parse(f.result()) for node, f in captures.items()}
    request, reply = hops(lab, svc, captured, port)
    return Trace(url, port, answer, request, reply)
