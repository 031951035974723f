"""keepalived.conf for a director of a keepalived pair. Pure.

One VRRP instance per VIP, and one for the NAT gateway, all in one sync group so they move
together: the director that answers for the VIPs is the one the real servers send replies
to. The IPVS services are keepalived `virtual_server` blocks with a health check per real
server, and the connection sync daemon copies the active director's connections to the
standby, so established connections survive a failover.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from labkit.labfile import Check, Forwarding, Lab, Tunnel, VirtualService
from labkit.labfile.model import host_cidr

CONFIG = "/etc/keepalived/keepalived.conf"
DEFAULTS = "/etc/default/keepalived"  # the daemon's arguments, read by its systemd unit
ADVERT_SECONDS = 1
SYNC_ID = 1
LB_KIND = {Forwarding.masq: "NAT", Forwarding.tun: "TUN", Forwarding.route: "DR"}


@dataclass(frozen=True)
class Instance:
    name: str
    interface: str  # the lab network, which is also the interface name in the guests
    router_id: int
    address: IPv4Address | IPv6Address


def instances(lab: Lab) -> list[Instance]:
    # An IPv6 VIP gets an instance of its own too: keepalived then speaks VRRP over IPv6 for it.
    out = [
        Instance(f"VIP_{str(vip).replace('.', '_').replace(':', '_')}", lab.network_of(vip) or "", i + 1, vip)
        for i, vip in enumerate(lab.vips)
    ]
    if lab.gateway is not None:
        out.append(Instance("GATEWAY", lab.network_of(lab.gateway) or "", len(out) + 1, lab.gateway))
    return out


def priority(lab: Lab, director: str) -> int:
    """The first director in the lab file is preferred: it takes the VIPs back when it returns."""
    return 150 - 50 * lab.directors.index(director)


def sync_interface(lab: Lab) -> str:
    """Connection sync goes over a network both directors share, the VIPs' own if it must."""
    a, b = lab.directors[:2]
    shared = lab.shared_networks(a, b)
    vip_nets = {lab.network_of(vip) for vip in lab.vips}
    return next((n for n in shared if n not in vip_nets), shared[0])


def tunnel_words(svc: VirtualService) -> list[str]:
    """After `lb_kind TUN`: the tunnel type when it is not the default ipip, as keepalived.conf(5)
    writes it (`TUN type gue port P` or `TUN type gre`), without checksums as the rules file says."""
    kind = svc.tunnel_type
    if kind in (None, Tunnel.ipip):
        return []
    return ["type", kind.value, *(["port", str(svc.tunnel_port)] if kind == Tunnel.gue else []), "nocsum"]


# What UDP_CHECK sends; the lab's UDP responder answers any datagram with its server's name.
UDP_PROBE = b"labkit"


def _check(kind: Check, real_server: str, connect_port: int | None = None) -> list[str]:
    # A check every second; a server is taken out after a failed check and one failed retry,
    # and put back after one good check.
    timing = ["    connect_timeout 2", "    retry 1", "    delay_before_retry 1"]
    if connect_port is not None:
        # keepalived gives a TUN real server the VIP's port (as the kernel lists it); the check
        # goes to the port it serves on, which its firewall maps the VIP's port to.
        timing.insert(0, f"    connect_port {connect_port}")
    if kind == Check.http:
        return ["HTTP_GET {", "    url {", "        path /", "        status_code 200", "    }", *timing, "}"]
    if kind == Check.tcp:
        return ["TCP_CHECK {", *timing, "}"]
    if kind == Check.udp:
        # Without require_reply, UDP_CHECK fails only on an ICMP port unreachable, which a
        # frozen server never sends: require the server's own name, exactly (keepalived's
        # reply and probe are hex strings).
        name = real_server.encode()
        return [
            "UDP_CHECK {",
            *timing,
            f"    payload {UDP_PROBE.hex()}",
            f"    require_reply {name.hex()}",
            f"    min_reply_length {len(name)}",
            f"    max_reply_length {len(name)}",
            "}",
        ]
    return []


def _indent(lines: list[str], by: int = 1) -> list[str]:
    return [("    " * by + line) if line else line for line in lines]


def config(lab: Lab, director: str) -> str:
    found = instances(lab)
    lines = [
        "# Written by labkit from the lab file; labkit provision rewrites it.",
        "global_defs {",
        f"    router_id {director}",
        "    # start from an empty IPVS table (it is kept when keepalived stops, see DEFAULTS)",
        "    lvs_flush",
        # a single director (keepalived as its health checker) has no one to sync connections to
        *(
            [f"    lvs_sync_daemon {sync_interface(lab)} {found[0].name} id {SYNC_ID}"]
            if len(lab.directors) > 1
            else []
        ),
        "}",
        "",
    ]
    if len(found) > 1:
        lines += ["vrrp_sync_group LABKIT {", "    group {", *_indent([i.name for i in found], 2), "    }", "}", ""]
    mine = priority(lab, director)
    for inst in found:
        lines += [
            f"vrrp_instance {inst.name} {{",
            f"    state {'MASTER' if director == lab.active_director else 'BACKUP'}",
            f"    interface {inst.interface}",
            f"    virtual_router_id {inst.router_id}",
            f"    priority {mine}",
            f"    advert_int {ADVERT_SECONDS}",
            # VRRP version 2 is IPv4 only; keepalived would switch an IPv6 instance to 3 with a warning
            *(["    version 3"] if inst.address.version == 6 else []),
            "    virtual_ipaddress {",
            f"        {host_cidr(inst.address)} dev {inst.interface}",
            "    }",
            "}",
            "",
        ]
    for svc in lab.services:
        body = [
            "delay_loop 1",
            f"lb_algo {svc.scheduler}",
            f"lb_kind {' '.join([LB_KIND[svc.forwarding], *tunnel_words(svc)])}",
            f"protocol {svc.protocol.value.upper()}",
        ]
        if svc.persistence:
            body.append(f"persistence_timeout {svc.persistence}")
        if svc.one_packet:
            body += ["# one-packet scheduling: every datagram is scheduled on its own (ipvsadm -o)", "ops"]
        if svc.check != Check.none:
            body += ["# a real server joins only after a good check", "alpha"]
        if svc.sorry_server is not None:
            sorry = svc.sorry_server
            body.append(f"sorry_server {sorry.address} {sorry.port or svc.port}")
        for rs in svc.real_servers:
            listed, real = svc.listed_port(rs), svc.real_port(rs)
            checks = _check(svc.check, lab.node_at(rs.address) or "", real if real != listed else None)
            body += [f"real_server {rs.address} {listed} {{", f"    weight {rs.weight}", *_indent(checks), "}"]
        name = f"fwmark {svc.fwmark}" if svc.fwmark else f"{svc.vip} {svc.port}"
        lines += [f"virtual_server {name} {{", *_indent(body), "}", ""]
    return "\n".join(lines)


def vrrp_states(data: str) -> dict[str, str]:
    """Instance -> state, from the file keepalived writes on SIGUSR1 (/tmp/keepalived.data)."""
    states: dict[str, str] = {}
    name = None
    for line in data.splitlines():
        key, _, value = (part.strip() for part in line.partition("="))
        if key == "VRRP Instance":
            name = value
        elif key == "State" and name is not None and name not in states:
            states[name] = value
    return states


def takeover_bound(lab: Lab) -> float:
    """Seconds a standby waits before it takes over from a master that went silent (RFC 3768:
    three adverts plus a skew that is shorter the higher its priority)."""
    standby = lab.directors[1]
    return 3 * ADVERT_SECONDS + (256 - priority(lab, standby)) / 256 * ADVERT_SECONDS
