"""`labkit trace` in a routing mesh (seed 001): one request from the client to the first swarm
node's published port, captured on that node's NIC, on docker_gwbridge, in its ingress namespace,
and in every task, and told hop by hop: node -> ingress namespace -> overlay (VXLAN) -> task,
and back. trace() runs the captures and the request; the rest is pure.

A capture point inside a namespace is tcpdump started with `ip netns exec`. On the node's NIC
tcpdump listens for the client's port and for VXLAN (UDP 4789), and prints each VXLAN packet's
inner frame on the line after it; the inner packets keep the client's port (the SNAT in the
ingress namespace changes only the address), which is how they are told from the health checks.
"""

from __future__ import annotations

import random
import re
import shlex
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from labkit.labfile import Lab
from labkit.labfile.model import mesh_network
from labkit.operate.trace import LINE, Hop, Packet, read_capture, start_capture
from labkit.plan import mesh
from labkit.running import RunningLab

VXLAN = re.compile(r"(\d+\.\d+\.\d+\.\d+)\.\d+ > (\d+\.\d+\.\d+\.\d+)\.4789: VXLAN, .*?vni (\d+)")


@dataclass(frozen=True)
class Point:
    node: str
    namespace: str | None  # None: the node's own
    device: str

    @property
    def name(self) -> str:
        return f"{self.namespace}:{self.device}" if self.namespace else self.device


def points(lab: Lab) -> list[Point]:
    entry = lab.swarm_nodes[0]
    out = [Point(entry, None, mesh_network(lab)), Point(entry, None, mesh.GWBRIDGE)]
    out.append(Point(entry, mesh.SBOX, mesh.SBOX_OVERLAY_LEG))
    out += [Point(node, task, "eth0") for task, node in lab.task_nodes.items()]
    return out


def _tag(port: int, point: Point) -> str:
    return f"mesh-{port}-{point.namespace or 'node'}-{point.device}"


def start_script(lab: Lab, mine: list[Point], port: int) -> str:
    """Shell: tcpdump on each of one node's points, each in its namespace."""
    parts = []
    for p in mine:
        vxlan = " or udp port 4789" if p.namespace is None and p.device == mesh_network(lab) else ""
        script = start_capture([p.device], f"tcp port {port}{vxlan}", _tag(port, p))
        parts.append(f"ip netns exec {shlex.quote(p.namespace)} sh -c {shlex.quote(script)}" if p.namespace else script)
    return " && ".join(f"{{ {part}; }}" for part in parts)


def read_script(mine: list[Point], port: int) -> str:
    """Shell: each point's capture after a `### point` line."""
    return "; ".join(f"echo '### {p.name}'; {read_capture([p.device], _tag(port, p))}" for p in mine)


def parse(output: str) -> dict[str, list[Packet]]:
    """The read script's output -> point name -> TCP packets, a VXLAN packet's inner one with
    the outer addresses (wrap "vxlan")."""
    out: dict[str, list[Packet]] = {}
    point, outer = "", None
    for line in output.splitlines():
        if line.startswith("### "):
            point, outer = line[4:].strip(), None
            out[point] = []
            continue
        if not point or line.startswith("== "):
            continue
        if m := VXLAN.search(line):
            outer = (m[1], m[2])
            line = line[m.end() :]  # an inner frame printed on the same line
        if m := LINE.search(line):
            packet = Packet(m["src_mac"] or "", m["dst_mac"] or "", m["src"], m["dst"], m["flags"] or m["udp"])
            out[point].append(replace(packet, outer=outer, wrap="vxlan") if outer else packet)
            outer = None
    return out


def _port(endpoint: str) -> str:
    return endpoint.rsplit(".", 1)[1]


def _address(endpoint: str) -> str:
    return endpoint.rsplit(".", 1)[0]


def hops(lab: Lab, captured: dict[tuple[str, str], list[Packet]], port: int) -> tuple[list[Hop], list[Hop], str]:
    """The request's hops and the reply's, in path order, and the task that answered."""
    m = lab.mesh
    entry, net = lab.swarm_nodes[0], mesh_network(lab)
    client = f"{lab.nodes[lab.clients[0]].addresses[net]}.{port}"
    published = f"{lab.nodes[entry].addresses[net]}:{m.publish[0].port}"
    sbox = f"{mesh.SBOX}:{mesh.SBOX_OVERLAY_LEG}"

    def first(node: str, point: str, flags: str, wrapped: bool, to_client: bool) -> Packet | None:
        for p in captured.get((node, point), []):
            ours = (p.dst if to_client else p.src) == client or _port(p.dst if to_client else p.src) == str(port)
            if ours and p.flags == flags and (p.outer is not None) == wrapped:
                return p
        return None

    task = next((t for t, n in lab.task_nodes.items() if first(n, f"{t}:eth0", "S", False, False)), "")
    remote = lab.task_nodes.get(task, entry) != entry
    where = f"{lab.task_nodes.get(task, '?')}" if task else "?"
    request: list[Hop] = []
    steps = [
        (entry, net, False, "from the client to the published port, on the node's own address"),
        (entry, mesh.GWBRIDGE, False, f"DOCKER-INGRESS's DNAT: to the ingress namespace, {m.sbox_address}"),
        (entry, sbox, False, f"in {mesh.SBOX}: marked {m.publish[0].fwmark}, IPVS sent it to {task} (Masq), "
         "and the SNAT gave it the namespace's overlay address; the client's port kept"),
    ]  # fmt: skip
    if remote:
        steps.append((entry, net, True, f"on the wire to {where} inside VXLAN (UDP 4789, VNI {m.vni})"))
    steps.append((lab.task_nodes.get(task, entry), f"{task}:eth0", False, f"arrives at the task {task}"))
    for node, point, wrapped, note in steps:
        if p := first(node, point, "S", wrapped, False):
            request.append(Hop(node, point, p, note))
    reply: list[Hop] = []
    back = [(lab.task_nodes.get(task, entry), f"{task}:eth0", False, f"{task} answers the ingress namespace")]
    if remote:
        back.append((entry, net, True, f"back from {where} inside VXLAN"))
    back += [
        (entry, sbox, False, "into the ingress namespace, over the overlay"),
        (entry, mesh.GWBRIDGE, False, f"the SNAT and IPVS undone: from {m.sbox_address} to the client"),
        (entry, net, False, f"the DNAT undone: the client sees {published} answer"),
    ]
    for node, point, wrapped, note in back:
        if p := first(node, point, "S.", wrapped, True):
            reply.append(Hop(node, point, p, note))
    return request, reply, task


@dataclass
class MeshTrace:
    url: str
    client_port: int
    answer: str
    task: str
    request: list[Hop]
    reply: list[Hop]


def trace(running: RunningLab) -> MeshTrace:
    lab = running.lab
    port = random.randint(40000, 59999)  # the client's port: a fresh one, not in TIME_WAIT
    by_node: dict[str, list[Point]] = {}
    for p in points(lab):
        by_node.setdefault(p.node, []).append(p)
    sudo = ["sudo", "-n", "sh", "-c"]
    entry, net = lab.swarm_nodes[0], mesh_network(lab)
    url = f"http://{lab.nodes[entry].addresses[net]}:{lab.mesh.publish[0].port}/"
    with ThreadPoolExecutor(len(by_node)) as pool:
        list(pool.map(lambda node: running.run(node, [*sudo, start_script(lab, by_node[node], port)]), by_node))
        try:
            answer = running.run(lab.clients[0], ["curl", "-sS", "-m", "5", "--local-port", str(port), url]).strip()
        finally:
            outputs = dict(
                zip(
                    by_node,
                    pool.map(lambda node: running.run(node, [*sudo, read_script(by_node[node], port)]), by_node),
                )
            )
    captured = {(node, point): packets for node, text in outputs.items() for point, packets in parse(text).items()}
    request, reply, task = hops(lab, captured, port)
    return MeshTrace(url, port, answer, task, request, reply)
