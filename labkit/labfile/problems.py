"""What must hold between the parts of a lab file, beyond its structure: each problem as
`field: what is wrong. The fix`."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address

from labkit.labfile.model import (HOSTNAME, IFNAME, RESERVED_IFNAMES, Check, Forwarding, Lab, Protocol, Role)


def semantic_problems(lab: Lab) -> Iterator[str]:
    """Yield what is wrong with a structurally valid lab, as 'field: problem. fix' strings."""
    if not HOSTNAME.match(lab.name):
        yield f"name: {lab.name!r} is not a plain name. Use lower-case letters, digits and '-'"
    for i, (net, cidr) in enumerate(lab.networks.items()):
        if not IFNAME.match(net) or net in RESERVED_IFNAMES:
            yield (f"networks.{net}: a network name becomes an interface name in the guests. "
                   "Use 1-15 lower-case letters and digits, not lo, eth0 or tunl0")
        for other, other_cidr in list(lab.networks.items())[:i]:
            if cidr.overlaps(other_cidr):
                yield (f"networks.{net}: {cidr} overlaps networks.{other} ({other_cidr}). "
                       "Give each network its own range")
    seen: dict[IPv4Address, str] = {}
    undeclared = False
    for name, node in lab.nodes.items():
        if not HOSTNAME.match(name):
            yield (f"nodes.{name}: {name!r} is not a plain hostname. "
                   "Use lower-case letters, digits and '-', starting with a letter (e.g. lb0)")
        for net, addr in node.addresses.items():
            field = f"nodes.{name}.addresses.{net}"
            if net not in lab.networks:
                yield f"{field}: there is no network {net!r}. Declare it under networks: ({', '.join(lab.networks)})"
                undeclared = True
                continue
            cidr = lab.networks[net]
            if addr not in cidr:
                yield f"{field}: {addr} is not in network {net} ({cidr}). Use an address inside {cidr}"
            elif addr in (cidr.network_address, cidr.broadcast_address):
                yield f"{field}: {addr} is the network or broadcast address of {cidr}. Use a host address"
            if addr in seen:
                yield f"{field}: {addr} is already used by {seen[addr]}. Give every node its own address"
            seen[addr] = field
    for role in (Role.director, Role.real_server, Role.client):
        if not lab.nodes_with(role):
            yield f"nodes: the lab has no {role.value}. Add a node with role: {role.value}"
    directors = lab.directors
    if not directors or undeclared:  # what follows reads every node's networks
        return
    shared = set.intersection(*(set(lab.nodes[d].addresses) for d in directors))
    yield from _failover_problems(lab, shared, seen)
    keys: set[str] = set()
    for i, svc in enumerate(lab.services):
        field = f"services[{i}]"
        if lab.ha and svc.protocol == Protocol.udp and svc.check != Check.none:
            yield f"{field}.check: keepalived cannot check a UDP service with {svc.check.value}. Use check: none"
        if svc.key in keys:
            yield f"{field}: {svc.key} is declared twice. Merge the two services"
        keys.add(svc.key)
        if svc.fwmark is None and (svc.vip is None or svc.vips):
            yield f"{field}: a service has one vip, or a fwmark with its vips. Give vip: <address>, or fwmark: and vips:"
            continue
        if svc.fwmark is not None and (svc.vip is not None or not svc.vips):
            yield f"{field}: a fwmark service lists its addresses under vips:, not vip:. Give vips: [<address>, ...]"
            continue
        for k, vip in enumerate(svc.addresses):
            vip_field = f"{field}.vips[{k}]" if svc.fwmark else f"{field}.vip"
            if vip in seen:
                yield f"{vip_field}: {vip} is already the address of {seen[vip]}. Use a free address for the VIP"
            vip_net = lab.network_of(vip)
            if vip_net is None or vip_net not in shared:
                yield (f"{vip_field}: {vip} is on no network that all directors ({', '.join(directors)}) share. "
                       f"Use an address in {' or '.join(str(lab.networks[n]) for n in sorted(shared)) or 'a shared network'}")
            elif vip in (lab.networks[vip_net].network_address, lab.networks[vip_net].broadcast_address):
                yield f"{vip_field}: {vip} is the network or broadcast address of {lab.networks[vip_net]}. Use a host address"
        # A real server may appear on several ports: each address:port is its own IPVS destination.
        destinations: set[tuple[IPv4Address, int]] = set()
        for j, rs in enumerate(svc.real_servers):
            rs_field = f"{field}.real_servers[{j}]"
            if (rs.address, svc.real_port(rs)) in destinations:
                yield (f"{rs_field}: {rs.address}:{svc.real_port(rs)} is listed twice in this service. "
                       "List each real server once per port")
            destinations.add((rs.address, svc.real_port(rs)))
            node = lab.node_at(rs.address)
            if node is None or lab.nodes[node].role != Role.real_server:
                yield (f"{rs_field}.address: {rs.address} is not the address of a real_server node. "
                       f"Use one of: {', '.join(str(a) for n in lab.real_servers for a in lab.nodes[n].addresses.values())}")
                continue
            if svc.forwarding != Forwarding.masq and svc.real_port(rs) != svc.port:
                yield (f"{rs_field}.port: {svc.forwarding.value} cannot map port {svc.port} to {svc.real_port(rs)}: "
                       "the director does not rewrite the packet, so the real server receives it on the VIP's port "
                       "(ipvsadm accepts the rule and silently uses the VIP's port). "
                       f"Use port {svc.port}, or forwarding: masq, the mode that maps ports")
            rs_net = lab.network_of(rs.address)
            if rs_net not in shared:
                why = {
                    Forwarding.route: "direct routing rewrites only the MAC address, so the real server must be on the directors' L2 network",
                    Forwarding.tun: "the directors send the tunnel packets to it directly",
                    Forwarding.masq: "the directors are its gateway",
                }[svc.forwarding]
                yield (f"{rs_field}.address: {rs.address} ({node}) is on network {rs_net}, which not every director is on; "
                       f"{why}. Use {node}'s address on a network of the directors")
            if svc.forwarding != Forwarding.masq:
                for client in lab.clients:
                    if not lab.shared_networks(client, node):
                        yield (f"{rs_field}.address: in {svc.forwarding.value} {node} answers the client {client} directly, "
                               f"but they share no network. Give {node} an address on {client}'s network")
            else:
                for client in lab.clients:
                    both = lab.shared_networks(client, node)
                    if both:
                        yield (f"{rs_field}.address: in NAT the client {client} must reach {node} only through the director, "
                               f"but both are on network {both[0]}; replies would bypass the director. "
                               "Put the real servers on a network of their own")


def _failover_problems(lab: Lab, shared: set[str], seen: dict[IPv4Address, str]):
    nat_servers = [n for n in lab.real_servers
                   if any(s.forwarding == Forwarding.masq for s in lab.services_of(n))]
    if not lab.ha:
        if lab.gateway is not None:
            yield "gateway: only a keepalived pair has a floating gateway. Remove it, or use failover: keepalived"
        for i, svc in enumerate(lab.services):
            if svc.sorry_server is not None:
                yield f"services[{i}].sorry_server: only keepalived uses a sorry server. Remove it, or use failover: keepalived"
        return
    if len(lab.directors) > 2:
        yield (f"nodes: failover: keepalived pairs two directors, the lab has {len(lab.directors)}. "
               "Keep two directors, or use failover: none")
    if lab.gateway is None:
        if nat_servers:
            yield ("gateway: NAT real servers need a floating gateway that moves with the VIPs. "
                   "Add e.g. gateway: <a free address on the real servers' network>")
        return
    net = lab.network_of(lab.gateway)
    if net is None or net not in shared:
        yield (f"gateway: {lab.gateway} is on no network that all directors share. "
               f"Use a free address in {' or '.join(str(lab.networks[n]) for n in sorted(shared))}")
    elif lab.gateway in (lab.networks[net].network_address, lab.networks[net].broadcast_address):
        yield f"gateway: {lab.gateway} is the network or broadcast address of {lab.networks[net]}. Use a host address"
    if lab.gateway in seen or lab.gateway in lab.vips:
        yield f"gateway: {lab.gateway} is already in use. Use a free address"
    for node in nat_servers:
        if net not in lab.nodes[node].addresses:
            yield f"gateway: {lab.gateway} is not on a network of the NAT real server {node}. Use an address on its network"
    for i, svc in enumerate(lab.services):
        if svc.sorry_server is not None and lab.node_at(svc.sorry_server.address) is None:
            yield (f"services[{i}].sorry_server.address: {svc.sorry_server.address} is no node's address. "
                   "Use the address of a node that serves the page")


