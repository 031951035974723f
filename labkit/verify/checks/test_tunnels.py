"""TUN's encapsulations where a user can see them: the directors' IPVS table names each real
server's tunnel type, and the real servers' network carries the client's requests wrapped that
way (IP-in-IP, GUE's UDP port, GRE) from the director.

The client's split, the 1 MiB download and the reply path (test_lab.py) already run through
every TUN service, whatever its tunnel and port mapping.
"""

from __future__ import annotations

import re
import shlex

import pytest

from labkit.labfile import Lab, Protocol, Tunnel, VirtualService
from labkit.operate.trace import parse, read_capture, start_capture
from labkit.plan import ipvs
from labkit.verify.checks import state


def missing_support(kind: Tunnel, release: str) -> str:
    """Why a kernel (its `uname -r`) cannot send `kind`, or '' when it is new enough."""
    found = re.match(r"(\d+)\.(\d+)", release)
    if found and (int(found[1]), int(found[2])) < kind.since:
        return (
            f" Kernel {release} predates IPVS {kind.value} tunnels (Linux {kind.since[0]}.{kind.since[1]}+): "
            f"use a newer kernel box (labkit up LAB --kernel bookworm-backports)"
        )
    return ""


def test_ipvs_names_the_tunnel_type(hosts, lab: Lab, tun_director):
    """Each TUN real server is listed with the lab file's tunnel type (`ipvsadm -L -n
    --tun-info`): ipip, gue with its port, or gre, all without checksums."""
    out = hosts(tun_director).check_output("uname -r; sudo -n ipvsadm -L -n --tun-info")
    release, _, listing = out.partition("\n")
    seen = {s.key: s for s in ipvs.parse_list(listing)}
    wrong = []
    for svc in (s for s in lab.services if s.tunnel_type is not None):
        want = ipvs.tunnel_info(svc)
        got = {d.key: d.tunnel for d in seen[svc.key].destinations} if svc.key in seen else {}
        expected = {f"{rs.address}:{svc.listed_port(rs)}": want for rs in svc.real_servers}
        if got != expected:
            wrong.append(
                f"{svc.key} ({svc.tunnel_type.value}): expected {expected}, ipvsadm lists {got or 'nothing'}."
                + missing_support(svc.tunnel_type, release)
            )
    assert not wrong, f"{tun_director} (kernel {release}):\n" + "\n".join(wrong) + f"\n{listing}"


def wire_filter(lab: Lab) -> str:
    """Tunnel packets only: IP-in-IP, GRE and every GUE port of the lab."""
    ports = sorted({s.tunnel_port for s in lab.services if s.tunnel_type == Tunnel.gue})
    return " or ".join(["ip proto 4", "ip proto 47", *(f"udp dst port {p}" for p in ports)])


@pytest.fixture(scope="module")
def wire(hosts, lab: Lab):
    """One capture for every TUN service: tcpdump listens on each real server's network while
    the client asks each service twice per real server, and stops when the client is done. Returns
    (real server -> the packets its network carried, service key -> who answered)."""
    services = [
        s for s in lab.services if s.tunnel_type is not None and s.protocol == Protocol.tcp and s.fwmark is None
    ]
    devices = {lab.node_at(rs.address): lab.network_of(rs.address) for s in services for rs in s.real_servers}
    for node, dev in sorted(devices.items()):
        started = hosts(node).run(
            f"sudo -n sh -c {shlex.quote(start_capture([dev], wire_filter(lab), 'wire', hex_too=True))}"
        )
        assert started.rc == 0, f"tcpdump on {node} did not start listening: {started.stdout}{started.stderr}"
    # One curl per service, a new connection per URL (each is scheduled on its own)
    asks = "; ".join(
        f"echo '== {s.key}'; {state.ask_pages([f'http://{s.vip}:{s.port}/'] * 2 * len(s.real_servers), seconds=3)}"
        for s in services
    )
    try:
        answers = hosts(lab.clients[0]).run(f"sh -c {shlex.quote(asks)}").stdout
    finally:
        captured = {
            node: hosts(node).check_output(f"sudo -n sh -c {shlex.quote(read_capture([dev], 'wire'))}")
            for node, dev in devices.items()
        }
    packets = {node: parse(text)[devices[node]] for node, text in captured.items()}
    answered = {}
    for part in answers.split("== ")[1:]:
        key, _, pages = part.partition("\n")
        answered[key] = state.pages(pages)
    return packets, answered


def test_requests_travel_wrapped(wire, lab: Lab, tunnel_service: VirtualService, hosts):
    """Every real server that answered the client got the requests from the active director
    wrapped as the lab file says: IP-in-IP, GRE, or GUE to its UDP port, with the client's
    packet to VIP:port inside."""
    packets, answered = wire
    svc = tunnel_service
    kind = svc.tunnel_type
    vip = f"{svc.vip}.{svc.port}"
    director = lab.nodes[lab.active_director].addresses
    servers = {lab.node_at(rs.address): rs.address for rs in svc.real_servers}
    said = answered.get(svc.key, [])
    assert said and set(said) <= set(servers), (
        f"{svc.key}: the client was answered by {said}, expected {sorted(servers)}"
    )
    dips = {str(address) for address in director.values()}

    def host(end: str) -> str:  # GUE's outer ends are address.port
        return end.rsplit(".", 1)[0] if kind == Tunnel.gue else end

    for node in sorted(set(said)):
        rip = str(servers[node])
        mine = [p for p in packets[node] if p.dst == vip]
        wraps = {p.wrap for p in mine}
        ends = {(host(p.outer[0]), host(p.outer[1])) for p in mine if p.outer}
        ports = {p.outer[1].rsplit(".", 1)[1] for p in mine if p.outer and kind == Tunnel.gue}
        release = "" if mine else hosts(lab.active_director).check_output("uname -r")
        assert mine, (
            f"{svc.key}: {node} answered, but no {kind.value} packet to {vip} crossed its network."
            + missing_support(kind, release)
        )
        assert wraps == {kind.value}, f"{svc.key}: requests to {node} arrived as {sorted(wraps)}, expected {kind.value}"
        assert all(src in dips and dst == rip for src, dst in ends), (
            f"{svc.key}: outer addresses {sorted(ends)}, expected from {lab.active_director} ({', '.join(sorted(dips))}) to {rip}"
        )
        if kind == Tunnel.gue:
            assert ports == {str(svc.tunnel_port)}, (
                f"{svc.key}: GUE to UDP ports {sorted(ports)}, expected {svc.tunnel_port}"
            )
