"""Lab -> a picture of its networks, nodes and packet paths, as Graphviz DOT text.

`dot` is pure (lab in, text out, tested with golden files); `draw` is the thin shell that runs
Graphviz's `dot` binary on it. The picture is made for a projector: each network a bar that its
nodes hang from, and the packets drawn along those cables, the request solid and blue, the reply
dashed and orange. The reply's way back is what tells the forwarding methods apart, so it is the
thing that stands out.
"""

from __future__ import annotations

import shutil
import subprocess
from html import escape
from pathlib import Path

from labkit.errors import LabkitError
from labkit.labfile import Forwarding, Lab, Role, Tunnel, VirtualService
from labkit.labfile.model import host_port
from labkit.plan.steps import vip_devices

FONT = "Helvetica"
# Blue and orange stay apart for colour-blind readers too; in grey print, solid and dashed do.
REQUEST = "#1864ab"
REPLY = "#e8590c"
CABLE = "#ced4da"
NETWORK = "#343a40"
VIP_FILL = "#fff3bf"
FILL = {Role.client: "#f1f3f5", Role.director: "#d0ebff", Role.real_server: "#d3f9d8", Role.swarm_node: "#e5dbff"}
ROLES = (Role.client, Role.director, Role.real_server, Role.swarm_node)

# What the active director does to a request on its way to the real server.
HOP = {
    Forwarding.masq: "dst -> RIP",
    Forwarding.tun: "IP-in-IP",
    Forwarding.route: "MAC rewritten",
}

# Every node box has the same width, and every bar a spot for each column of nodes at the same
# pitch, so all cables hang straight. Wide enough for the seed labs' longest line
# ("VIP 192.168.55.100:8080 tcp"); a longer one only bends the cables a little.
NODE_WIDTH = 3.2  # inches
GAP = 0.5  # inches between two nodes of a row
SPOT = 30  # points: the width of one arrow's spot on a bar
# A node's place on a bar is three spots side by side: request, reply, cable. So beside every
# cable the request runs left, the reply next to it, the same all over the picture.
REQUEST_SPOT, REPLY_SPOT, CABLE_SPOT = "q", "r", "c"


def _q(text: str) -> str:
    """A DOT quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _bar(net: str) -> str:
    # Hostnames cannot hold '_', so a network's node never takes a host's name.
    return f"net_{net}"


class _Layout:
    """Which row each node sits in, and its column there. A client sits above all its networks;
    any other node hangs below its first network (in file order) and above the others. So the
    seed labs come out as the README draws them: client, ext, directors, int, real servers."""

    def __init__(self, lab: Lab):
        self.rank: dict[str, int] = {c: 0 for c in lab.clients}
        self.bar_rank: dict[str, int] = {}
        for net in lab.networks:
            on = [n for n in lab.nodes if net in lab.nodes[n].addresses]
            above = [self.rank[n] for n in on if n in self.rank]
            self.bar_rank[net] = max(above, default=-1) + 1
            for n in on:
                self.rank.setdefault(n, self.bar_rank[net] + 1)
        self.rows: list[list[str]] = []
        for rank in sorted(set(self.rank.values())):
            self.rows.append([n for role in ROLES for n in lab.nodes_with(role) if self.rank[n] == rank])
        self.column = {n: row.index(n) for row in self.rows for n in row}
        self.columns = max(len(row) for row in self.rows)

    def above(self, node: str, net: str) -> bool:
        return self.rank[node] < self.bar_rank[net]

    def end(self, node: str, net: str, spot: str = CABLE_SPOT) -> str:
        """Where a node's cable, or one of its packets, meets a network's bar."""
        return f"{_q(_bar(net))}:{_q(f'{spot}{self.column[node]}')}:{'n' if self.above(node, net) else 's'}"


def _network_label(lab: Lab, net: str, layout: _Layout) -> str:
    pad = int((NODE_WIDTH + GAP) * 72 - 3 * SPOT) // 2
    prefix6 = f"  {lab.networks6[net]}" if net in lab.networks6 else ""
    cells = [f'<TD><FONT COLOR="white"><B>{net}</B>  {lab.networks[net]}{prefix6}</FONT></TD>']
    for col in range(layout.columns):
        cells.append(f'<TD WIDTH="{pad}"> </TD>')
        cells += [f'<TD PORT="{spot}{col}" WIDTH="{SPOT}"> </TD>' for spot in (REQUEST_SPOT, REPLY_SPOT, CABLE_SPOT)]
        cells.append(f'<TD WIDTH="{pad}"> </TD>')
    return f'<<TABLE BORDER="0" CELLSPACING="0" CELLPADDING="5" BGCOLOR="{NETWORK}"><TR>{"".join(cells)}</TR></TABLE>>'


def wrapping(svc: VirtualService) -> str:
    """How a TUN director wraps the service's requests, as a person would name it."""
    return {Tunnel.ipip: "IP-in-IP", Tunnel.gue: f"GUE (UDP {svc.tunnel_port})", Tunnel.gre: "GRE"}[svc.tunnel_type]


def _role(lab: Lab, node: str) -> str:
    role = lab.nodes[node].role
    if role == Role.director:
        return "director, active" if node == lab.active_director else "director, standby (no VIP)"
    return role.value.replace("_", " ")


def _service(svc: VirtualService) -> str:
    """A virtual service as ipvsadm lists it: its VIP and port (a firewall-mark service: its
    mark, then each VIP it marks), then the scheduler and forwarding method."""
    how = f"{escape(svc.scheduler)}{' ops' if svc.one_packet else ''}, {svc.forwarding.listed_as}"
    if svc.tunnel_type not in (None, Tunnel.ipip):
        how += f" in {wrapping(svc)}"
    if svc.port_mapping:
        ports = ", ".join(f":{p}" for p in dict.fromkeys(svc.real_port(rs) for rs in svc.real_servers))
        how += f"<BR/>real servers map :{svc.port} to {ports} ({svc.port_mapping.value})"
    if svc.fwmark:
        vips = "".join(f"<B>{host_port(vip, svc.port)}</B><BR/>" for vip in svc.addresses)
        return f"FWM <B>{svc.fwmark}</B> {svc.protocol.value}<BR/>{vips}{how}"
    return f"VIP <B>{host_port(svc.vip, svc.port)}</B> {svc.protocol.value}<BR/>{how}"


def _node_label(lab: Lab, node: str) -> str:
    rows = [
        f'<TR><TD><B><FONT POINT-SIZE="18">{node}</FONT></B></TD></TR>',
        f"<TR><TD><I>{_role(lab, node)}</I></TD></TR>",
    ]
    rows += [f'<TR><TD ALIGN="LEFT">{net} {addr}</TD></TR>' for net, addr in lab.nodes[node].addresses.items()]
    rows += [f'<TR><TD ALIGN="LEFT">{net} {addr}</TD></TR>' for net, addr in lab.nodes[node].addresses6.items()]
    rows += _mesh_rows(lab, node)
    if lab.directors and node == lab.active_director:
        rows += [
            f'<TR><TD BGCOLOR="{VIP_FILL}" ALIGN="LEFT" BALIGN="LEFT">{_service(svc)}</TD></TR>' for svc in lab.services
        ]
        if lab.ha and lab.gateway:
            # It moves with the VIPs, so it is drawn where they are.
            rows.append(f'<TR><TD BGCOLOR="{VIP_FILL}" ALIGN="LEFT">gateway {lab.gateway}</TD></TR>')
    bridge = lab.nodes[node].bridge
    if bridge is not None:
        # Containers sit behind the node's bridge, reached by its route; published ports are DNATed.
        rows.append(f'<TR><TD ALIGN="LEFT">{escape(bridge.name)} {bridge.address}</TD></TR>')
        rows += [
            f'<TR><TD ALIGN="LEFT">  container <B>{name}</B> {addr}</TD></TR>'
            for name, addr in lab.nodes[node].containers.items()
        ]
        rows += [
            f'<TR><TD ALIGN="LEFT">  :{p.port} → {p.container}:{p.container_port} (DNAT)</TD></TR>'
            for p in lab.nodes[node].publish
        ]
    if lab.nodes[node].role == Role.real_server:
        # TUN and DR real servers hold the VIP themselves: that is why they may answer from it.
        rows += [
            f'<TR><TD BGCOLOR="{VIP_FILL}" ALIGN="LEFT">VIP {vip} on {dev}</TD></TR>'
            for vip, dev in vip_devices(lab, node).items()
        ]
    return '<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="3">' + "".join(rows) + "</TABLE>>"


def _mesh_rows(lab: Lab, node: str) -> list[str]:
    """A swarm node's hidden parts, in the order a request meets them: the DNAT of each published
    port, the ingress namespace with its firewall-mark services, the overlay, the tasks."""
    spec, mesh = lab.nodes[node], lab.mesh
    if mesh is None or spec.ingress is None:
        return []
    row = '<TR><TD ALIGN="LEFT">{}</TD></TR>'.format
    rows = [row(f"DOCKER-INGRESS :{p.port} → {mesh.sbox_address}:{p.port} (DNAT)") for p in mesh.publish]
    rows.append(row(f"docker_gwbridge {mesh.gwbridge}"))
    rows.append(f'<TR><TD BGCOLOR="{VIP_FILL}" ALIGN="LEFT">ingress_sbox {mesh.sbox_address}, {spec.ingress}</TD></TR>')
    rows += [
        f'<TR><TD BGCOLOR="{VIP_FILL}" ALIGN="LEFT">  MARK {p.fwmark}, FWM <B>{p.fwmark}</B> {mesh.scheduler}, Masq → every task :{p.target_port}</TD></TR>'
        for p in mesh.publish
    ]
    rows.append(row(f"overlay {mesh.overlay}: vxlan0 VNI {mesh.vni}, UDP 4789"))
    rows += [row(f"  task <B>{name}</B> {address}") for name, address in spec.tasks.items()]
    return rows


def _words(words: list[tuple[str, bool]]) -> str:
    return "".join(
        f'<FONT COLOR="{REPLY if reply else REQUEST}">{escape(text)}</FONT><BR ALIGN="LEFT"/>' for text, reply in words
    )


class _Paths:
    """Packet hops, each drawn as two arrows beside the cables: node -> bar, bar -> node. Hops
    that share a piece of cable share its arrows. A hop's words go on the cable beside them:
    dot keeps room for an edge's label on its right, and the cable is the right-most line."""

    def __init__(self, lab: Lab, layout: _Layout):
        self.lab = lab
        self.layout = layout
        # (tail, head, reply) -> (drawn downwards, words on the arrow itself)
        self.arrows: dict[tuple[str, str, bool], tuple[bool, list[tuple[str, bool]]]] = {}
        self.words: dict[tuple[str, str], list[tuple[str, bool]]] = {}  # cable (node, net) -> words

    def _arrow(self, tail: str, head: str, down: bool, reply: bool, text: str = "") -> None:
        # An upward packet is drawn as a downward edge with its arrowhead at the top (dir=back):
        # dot then routes it beside its cable instead of looping it round as a back edge.
        words = self.arrows.setdefault((tail, head, reply) if down else (head, tail, reply), (down, []))[1]
        if text and (text, reply) not in words:
            words.append((text, reply))

    def _say(self, node: str, net: str, text: str, reply: bool) -> None:
        words = self.words.setdefault((node, net), [])
        if text and (text, reply) not in words:
            words.append((text, reply))

    def hop(self, src: str, dst: str, net: str, reply: bool, first: str = "", then: str = "") -> None:
        """src -> dst over network net (or, if they do not share it, one they do share);
        `first` is said on src's cable, `then` on dst's."""
        layout = self.layout
        shared = self.lab.shared_networks(src, dst)
        if not shared:
            # No cable between them (the lab leaves the route to something outside it): one arrow.
            self._arrow(_q(src), _q(dst), layout.rank[src] <= layout.rank[dst], reply, first or then)
            return
        if net not in shared:
            net = shared[0]
        spot = REPLY_SPOT if reply else REQUEST_SPOT
        self._arrow(_q(src), layout.end(src, net, spot), layout.above(src, net), reply)
        self._arrow(layout.end(dst, net, spot), _q(dst), not layout.above(dst, net), reply)
        self._say(src, net, first, reply)
        self._say(dst, net, then, reply)

    def lines(self) -> list[str]:
        out = []
        for (tail, head, reply), (down, words) in self.arrows.items():
            attrs = [f"label=<{_words(words)}>"] if words else []
            attrs += [] if down else ["dir=back"]
            attrs += [f'color="{REPLY}"', "style=dashed"] if reply else [f'color="{REQUEST}"']
            out.append(f"  {tail} -> {head} [{', '.join(attrs)}, penwidth=2.5];")
        return out

    def label(self, node: str, net: str) -> str:
        words = self.words.get((node, net))
        return f"label=<{_words(words)}>, " if words else ""


def _paths(lab: Lab, layout: _Layout) -> _Paths:
    """Request: each client -> the VIP on the active director -> each real server's RIP. Reply:
    NAT back through the director (the real servers' gateway), which must rewrite the source to
    the VIP again; TUN and DR straight from the real server, which holds the VIP and answers
    from it. A routing mesh: the client to the first node's published port, over the overlay
    (VXLAN) to the tasks on the other nodes, and back the same way."""
    paths = _Paths(lab, layout)
    if lab.mesh is not None and lab.swarm_nodes:
        entry, port = lab.swarm_nodes[0], lab.mesh.publish[0].port
        net = next(iter(lab.nodes[entry].addresses))
        others = [n for n in lab.swarm_nodes[1:] if lab.nodes[n].tasks]
        for client in lab.clients:
            paths.hop(client, entry, net, reply=False, first=f"to {lab.nodes[entry].addresses[net]}:{port}")
        for node in others:
            paths.hop(entry, node, net, reply=False, first="VXLAN (UDP 4789) to a task")
        for node in others:
            paths.hop(node, entry, net, reply=True, then="VXLAN back to ingress_sbox")
        for client in lab.clients:
            paths.hop(entry, client, net, reply=True, first=f"src -> node:{port}")
        return paths
    active = lab.active_director
    for svc in lab.services:
        for vip in svc.addresses:
            for client in lab.clients:
                paths.hop(client, active, lab.network_of(vip), reply=False, first=f"to {host_port(vip, svc.port)}")
        for rs in svc.real_servers:
            if lab.node_at(rs.address) is None:
                continue  # a container on the director's own bridge: drawn inside the director
            paths.hop(
                active,
                lab.node_at(rs.address),
                lab.network_of(rs.address),
                reply=False,
                first=wrapping(svc) if svc.tunnel_type else HOP[svc.forwarding],
            )
    for svc in lab.services:
        vip_net = lab.network_of(svc.addresses[0])
        for rs in svc.real_servers:
            node = lab.node_at(rs.address)
            if node is None:
                continue
            for client in lab.clients:
                if svc.forwarding == Forwarding.masq:
                    paths.hop(
                        node,
                        active,
                        lab.network_of(rs.address),
                        reply=True,
                        then=f"reply via {lab.reply_gateway(node)}",
                    )
                    paths.hop(active, client, vip_net, reply=True, first="src -> VIP")
                else:
                    paths.hop(node, client, vip_net, reply=True, first="reply from VIP")
    return paths


def _cables(lab: Lab, layout: _Layout, paths: _Paths) -> list[str]:
    lines = []
    for net in lab.networks:
        for node in lab.nodes:
            if net in lab.nodes[node].addresses:
                ends = (_q(node), layout.end(node, net))
                tail, head = ends if layout.above(node, net) else ends[::-1]
                lines.append(
                    f'  {tail} -> {head} [{paths.label(node, net)}dir=none, color="{CABLE}", penwidth=5, weight=10];'
                )
    return lines


def dot(lab: Lab) -> str:
    """The lab as Graphviz DOT source. Same lab, same text."""
    layout = _Layout(lab)
    title = f"<B>{escape(lab.name)}</B>" + (f": {escape(lab.description)}" if lab.description else "")
    legend = f'<FONT COLOR="{REQUEST}">&#8212;&#8212; request</FONT>      <FONT COLOR="{REPLY}">- - - reply</FONT>'
    lines = [
        f"digraph {_q(lab.name)} {{",
        f'  graph [label=<{title}<BR/>{legend}>, labelloc=t, fontname="{FONT}", fontsize=20,'
        f" rankdir=TB, nodesep=0.25, ranksep=0.9, bgcolor=white, pad=0.3];",
        f'  node [fontname="{FONT}", fontsize=14, shape=box, style="rounded,filled", color="#868e96",'
        f" width={NODE_WIDTH}];",
        f'  edge [fontname="{FONT}", fontsize=14, arrowsize=1.1];',
    ]
    lines += [f"  {_q(_bar(net))} [label={_network_label(lab, net, layout)}, shape=plain];" for net in lab.networks]
    lines += [
        f'  {_q(node)} [label={_node_label(lab, node)}, fillcolor="{FILL[spec.role]}"];'
        for node, spec in lab.nodes.items()
    ]
    lines += [f"  {{rank=same; {' '.join(_q(n) for n in row)}}}" for row in layout.rows]
    paths = _paths(lab, layout)
    lines += _cables(lab, layout, paths)
    lines += paths.lines()
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw(lab: Lab, out_dir: Path) -> list[Path]:
    """Write <lab>.svg and <lab>.png into out_dir with Graphviz's `dot`; return their paths."""
    exe = shutil.which("dot")
    if exe is None:
        raise LabkitError("graphviz's dot is not installed, so the lab cannot be drawn: apt-get install graphviz")
    out_dir.mkdir(parents=True, exist_ok=True)
    source = dot(lab)
    written = []
    # 144 dpi keeps the PNG sharp on a projector; the SVG scales by itself.
    for fmt, extra in (("svg", []), ("png", ["-Gdpi=144"])):
        path = out_dir / f"{lab.name}.{fmt}"
        proc = subprocess.run([exe, f"-T{fmt}", *extra, "-o", str(path)], input=source, capture_output=True, text=True)
        if proc.returncode != 0:
            raise LabkitError(f"dot could not draw {lab.name} as {fmt}: {proc.stderr.strip()}")
        written.append(path)
    return written
