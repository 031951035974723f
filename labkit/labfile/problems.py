"""What must hold between the parts of a lab file, beyond its structure: each problem as
`field: what is wrong. The fix`."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address

from labkit.labfile.model import (
    CONTAINER_NAME,
    HOSTNAME,
    IFNAME,
    RESERVED_IFNAMES,
    Check,
    Forwarding,
    Lab,
    Mesh,
    Protocol,
    Role,
    Tunnel,
    VirtualService,
    host_port,
    mesh_network,
)


def semantic_problems(lab: Lab) -> Iterator[str]:
    """Yield what is wrong with a structurally valid lab, as 'field: problem. fix' strings."""
    if not HOSTNAME.match(lab.name):
        yield f"name: {lab.name!r} is not a plain name. Use lower-case letters, digits and '-'"
    for i, (net, cidr) in enumerate(lab.networks.items()):
        if not IFNAME.match(net) or net in RESERVED_IFNAMES:
            yield (
                f"networks.{net}: a network name becomes an interface name in the guests. "
                "Use 1-15 lower-case letters and digits, not lo, eth0 or tunl0"
            )
        if net == "mgmt":
            yield "networks.mgmt: the name of the lab's management network (Vagrant's SSH path). Use another name"
        for other, other_cidr in list(lab.networks.items())[:i]:
            if cidr.overlaps(other_cidr):
                yield (
                    f"networks.{net}: {cidr} overlaps networks.{other} ({other_cidr}). Give each network its own range"
                )
    for i, (net, cidr) in enumerate(lab.networks6.items()):
        if net not in lab.networks:
            yield (
                f"networks6.{net}: there is no network {net!r}. An IPv6 prefix is given to a network declared "
                f"under networks: ({', '.join(lab.networks)}), by its name"
            )
        for other, other_cidr in list(lab.networks6.items())[:i]:
            if cidr.overlaps(other_cidr):
                yield (
                    f"networks6.{net}: {cidr} overlaps networks6.{other} ({other_cidr}). "
                    "Give each network its own prefix"
                )
    seen: dict[IPv4Address | IPv6Address, str] = {}
    undeclared = False
    for name, node in lab.nodes.items():
        if not HOSTNAME.match(name):
            yield (
                f"nodes.{name}: {name!r} is not a plain hostname. "
                "Use lower-case letters, digits and '-', starting with a letter (e.g. lb0)"
            )
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
        for net, addr in node.addresses6.items():
            field = f"nodes.{name}.addresses6.{net}"
            if net not in lab.networks6:
                yield (
                    f"{field}: network {net!r} has no IPv6 prefix. Give it one under networks6: "
                    f"({', '.join(lab.networks6) or 'none yet'})"
                )
                continue
            if net not in node.addresses:
                yield (
                    f"{field}: {name} has no IPv4 address on {net}, so it has no interface there. "
                    f"Give it one under addresses: too"
                )
            cidr = lab.networks6[net]
            if addr not in cidr:
                yield f"{field}: {addr} is not in network {net}'s prefix {cidr}. Use an address inside {cidr}"
            elif addr == cidr.network_address:
                yield f"{field}: {addr} is the subnet-router anycast address of {cidr}. Use a host address"
            if addr in seen:
                yield f"{field}: {addr} is already used by {seen[addr]}. Give every node its own address"
            seen[addr] = field
    yield from _container_problems(lab)
    if lab.mesh is not None or lab.swarm_nodes:
        yield from _mesh_problems(lab, undeclared)
        return
    if not lab.services:
        yield "services: the lab has no service. Add one (vip:, port:, forwarding:, real_servers:)"
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
        if lab.ha and svc.protocol == Protocol.udp and svc.check in (Check.http, Check.tcp):
            yield (
                f"{field}.check: keepalived cannot check a UDP service with {svc.check.value}. "
                "Use check: udp (a datagram that must be answered) or none"
            )
        if lab.ha and svc.protocol == Protocol.tcp and svc.check == Check.udp:
            yield f"{field}.check: a TCP service is not checked with datagrams. Use check: http, tcp or none"
        if svc.one_packet and svc.protocol != Protocol.udp:
            yield (
                f"{field}.one_packet: one-packet scheduling is for UDP; a TCP connection's packets must all "
                "reach one real server. Remove one_packet, or use protocol: udp"
            )
        if svc.key in keys:
            yield f"{field}: {svc.key} is declared twice. Merge the two services"
        keys.add(svc.key)
        yield from _tunnel_problems(svc, field)
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
            prefixes = lab.networks6 if vip.version == 6 else lab.networks
            if vip_net is None or vip_net not in shared:
                yield (
                    f"{vip_field}: {vip} is on no network that all directors ({', '.join(directors)}) share. "
                    f"Use an address in {' or '.join(str(prefixes[n]) for n in sorted(shared) if n in prefixes) or 'a shared network'}"
                )
            elif vip.version == 6:
                # a /128 VIP brings no route: the director answers the client through its own address there
                for director in directors:
                    if vip_net not in lab.nodes[director].addresses6:
                        yield (
                            f"{vip_field}: the director {director} has no IPv6 address on {vip_net}, so it cannot "
                            f"answer the clients there. Give {director} an addresses6 entry on {vip_net}"
                        )
            elif vip in (lab.networks[vip_net].network_address, lab.networks[vip_net].broadcast_address):
                yield f"{vip_field}: {vip} is the network or broadcast address of {lab.networks[vip_net]}. Use a host address"
        yield from _family_problems(lab, svc, field)
        # A real server may appear on several ports: each address:port is its own IPVS destination.
        destinations: set[tuple[IPv4Address | IPv6Address, int]] = set()
        for j, rs in enumerate(svc.real_servers):
            rs_field = f"{field}.real_servers[{j}]"
            if rs.address.version != svc.addresses[0].version:
                continue  # said by _family_problems
            destination = (rs.address, svc.listed_port(rs))
            if destination in destinations:
                yield (
                    f"{rs_field}: {host_port(*destination)} is listed twice in this service. "
                    "List each real server once per port"
                )
            destinations.add(destination)
            director_bridge = lab.nodes[lab.active_director].bridge
            if director_bridge is not None and rs.address in director_bridge.address.network:
                if svc.forwarding != Forwarding.masq:
                    yield (
                        f"{rs_field}.address: {rs.address} is a container behind {lab.active_director}'s bridge, "
                        f"which only NAT reaches (its replies must come back to be rewritten); "
                        f"{svc.forwarding.value} would need the VIP inside it. Use forwarding: masq"
                    )
                    continue
                if lab.server_at(rs.address, svc.real_port(rs), svc.protocol) in lab.container_nodes:
                    continue  # a container on the director's own bridge: its route reaches it
                yield (
                    f"{rs_field}.address: {rs.address} is on {lab.active_director}'s bridge "
                    f"{director_bridge.name}, but no container there has it. Use one of: "
                    f"{', '.join(str(a) for a in lab.nodes[lab.active_director].containers.values())}"
                )
                continue
            node = lab.node_at(rs.address)
            if node is None or lab.nodes[node].role != Role.real_server:
                yield (
                    f"{rs_field}.address: {rs.address} is not the address of a real_server node. "
                    f"Use one of: {', '.join(str(a) for n in lab.real_servers for a in lab.nodes[n].addresses.values())}"
                )
                continue
            if svc.forwarding != Forwarding.masq and svc.real_port(rs) != svc.port and svc.port_mapping is None:
                mapping = (
                    ", or port_mapping: dnat (each real server rewrites the port itself)"
                    if svc.forwarding == Forwarding.tun and svc.fwmark is None
                    else ""
                )
                yield (
                    f"{rs_field}.port: {svc.forwarding.value} cannot map port {svc.port} to {svc.real_port(rs)}: "
                    "the director does not rewrite the packet, so the real server receives it on the VIP's port "
                    "(ipvsadm accepts the rule and silently uses the VIP's port). "
                    f"Use port {svc.port}, or forwarding: masq, the mode that maps ports{mapping}"
                )
            rs_net = lab.network_of(rs.address)
            if rs_net not in shared:
                why = {
                    Forwarding.route: "direct routing rewrites only the MAC address, so the real server must be on the directors' L2 network",
                    Forwarding.tun: "the directors send the tunnel packets to it directly",
                    Forwarding.masq: "the directors are its gateway",
                }[svc.forwarding]
                yield (
                    f"{rs_field}.address: {rs.address} ({node}) is on network {rs_net}, which not every director is on; "
                    f"{why}. Use {node}'s address on a network of the directors"
                )
            if svc.ipv6 and svc.forwarding == Forwarding.route:
                for client in lab.clients:
                    if not set(lab.nodes[client].addresses6) & set(lab.nodes[node].addresses6):
                        yield (
                            f"{rs_field}.address: in route {node} answers the client {client} directly over IPv6, "
                            f"but they share no IPv6 network. Give {node} an addresses6 entry on {client}'s network"
                        )
            for director in directors if svc.ipv6 and rs_net in shared else []:
                if rs_net not in lab.nodes[director].addresses6:
                    yield (
                        f"{rs_field}.address: the director {director} reaches {node} over IPv6 on {rs_net}, "
                        f"but has no IPv6 address there. Give {director} an addresses6 entry on {rs_net}"
                    )
            if svc.forwarding != Forwarding.masq:
                for client in lab.clients:
                    if not lab.shared_networks(client, node):
                        yield (
                            f"{rs_field}.address: in {svc.forwarding.value} {node} answers the client {client} directly, "
                            f"but they share no network. Give {node} an address on {client}'s network"
                        )
            else:
                for client in lab.clients:
                    both = lab.shared_networks(client, node)
                    if both:
                        yield (
                            f"{rs_field}.address: in NAT the client {client} must reach {node} only through the director, "
                            f"but both are on network {both[0]}; replies would bypass the director. "
                            "Put the real servers on a network of their own"
                        )


def _family_problems(lab: Lab, svc: VirtualService, field: str) -> Iterator[str]:
    """One family per service, and what IPv6 needs that labkit offers."""
    family = svc.addresses[0].version
    for k, vip in enumerate(svc.addresses):
        if vip.version != family:
            yield f"{field}.vips[{k}]: {vip} is IPv{vip.version}, the service's first VIP IPv{family}. Use one family per service"
    for j, rs in enumerate(svc.real_servers):
        if rs.address.version != family:
            yield (
                f"{field}.real_servers[{j}].address: {rs.address} is IPv{rs.address.version}, the VIP is IPv{family}. "
                f"IPVS forwards within one family: use the real server's IPv{family} address"
            )
    if svc.sorry_server is not None and svc.sorry_server.address.version != family:
        yield (
            f"{field}.sorry_server.address: {svc.sorry_server.address} is IPv{svc.sorry_server.address.version}, "
            f"the VIP is IPv{family}. Use the sorry server's IPv{family} address"
        )
    if family != 6:
        return
    if svc.fwmark:
        yield (
            f"{field}.vips: labkit marks a fwmark service's packets with iptables, for IPv4 VIPs only. "
            "Give IPv6 VIPs their own services (vip:)"
        )
    if svc.forwarding == Forwarding.tun:
        yield f"{field}.forwarding: tun over IPv6 (ip6tnl) is not offered by labkit. Use route or masq for an IPv6 service"
    if svc.protocol == Protocol.udp:
        yield (
            f"{field}.protocol: labkit's UDP responder answers on IPv4 only. Use protocol: tcp for an IPv6 "
            "service, or an IPv4 VIP for a UDP one"
        )
    if svc.forwarding == Forwarding.masq and lab.ha:
        yield (
            f"{field}.forwarding: NAT over IPv6 needs a floating IPv6 gateway, which labkit's keepalived pair "
            "does not have. Use failover: none for IPv6 NAT, or forwarding: route"
        )
    for client in lab.clients:
        if not lab.nodes[client].addresses6:
            yield f"{field}.vip: the service is IPv6 but the client {client} has no IPv6 address. Give it addresses6:"


def _tunnel_problems(svc: VirtualService, field: str) -> Iterator[str]:
    """tunnel, tunnel_port and port_mapping: TUN only, and only where they mean something."""
    if svc.forwarding != Forwarding.tun:
        for key in ("tunnel", "tunnel_port", "port_mapping"):
            if getattr(svc, key) is not None:
                yield (
                    f"{field}.{key}: only a TUN service has it; this one is {svc.forwarding.value}. "
                    f"Remove {key}, or use forwarding: tun"
                )
        return
    if svc.tunnel == Tunnel.gue and svc.tunnel_port is None:
        yield (
            f"{field}.tunnel_port: a GUE tunnel needs the UDP port the real servers unwrap it on. "
            "Add e.g. tunnel_port: 6080"
        )
    if svc.tunnel != Tunnel.gue and svc.tunnel_port is not None:
        yield (
            f"{field}.tunnel_port: only a GUE tunnel has a port ({svc.tunnel_type.value} has none). "
            "Remove tunnel_port, or use tunnel: gue"
        )
    if svc.port_mapping is not None:
        if svc.fwmark is not None:
            yield (
                f"{field}.port_mapping: labkit maps the port of a service with vip: and port:, not of a fwmark "
                "service. Remove port_mapping, or give the service vip: and port:"
            )
        elif all(svc.real_port(rs) == svc.port for rs in svc.real_servers):
            yield (
                f"{field}.port_mapping: every real server already listens on the VIP's port {svc.port}, "
                "so there is nothing to map. Remove port_mapping, or give the real servers their port:"
            )


def _failover_problems(lab: Lab, shared: set[str], seen: dict[IPv4Address, str]):
    nat_servers = [
        n for n in lab.real_servers if any(s.forwarding == Forwarding.masq and not s.ipv6 for s in lab.services_of(n))
    ]
    if not lab.ha:
        if lab.gateway is not None:
            yield "gateway: only a keepalived pair has a floating gateway. Remove it, or use failover: keepalived"
        for i, svc in enumerate(lab.services):
            if svc.sorry_server is not None:
                yield f"services[{i}].sorry_server: only keepalived uses a sorry server. Remove it, or use failover: keepalived"
        return
    if len(lab.directors) > 2:
        yield (
            f"nodes: failover: keepalived pairs two directors, the lab has {len(lab.directors)}. "
            "Keep two directors, or use failover: none"
        )
    if lab.gateway is None:
        if nat_servers:
            yield (
                "gateway: NAT real servers need a floating gateway that moves with the VIPs. "
                "Add e.g. gateway: <a free address on the real servers' network>"
            )
        return
    net = lab.network_of(lab.gateway)
    if net is None or net not in shared:
        yield (
            f"gateway: {lab.gateway} is on no network that all directors share. "
            f"Use a free address in {' or '.join(str(lab.networks[n]) for n in sorted(shared))}"
        )
    elif lab.gateway in (lab.networks[net].network_address, lab.networks[net].broadcast_address):
        yield f"gateway: {lab.gateway} is the network or broadcast address of {lab.networks[net]}. Use a host address"
    if lab.gateway in seen or lab.gateway in lab.vips:
        yield f"gateway: {lab.gateway} is already in use. Use a free address"
    for node in nat_servers:
        if net not in lab.nodes[node].addresses:
            yield f"gateway: {lab.gateway} is not on a network of the NAT real server {node}. Use an address on its network"
    for i, svc in enumerate(lab.services):
        if svc.sorry_server is not None and lab.node_at(svc.sorry_server.address) is None:
            yield (
                f"services[{i}].sorry_server.address: {svc.sorry_server.address} is no node's address. "
                "Use the address of a node that serves the page"
            )


def _container_problems(lab: Lab) -> Iterator[str]:
    """Containers (seed 000): on a bridge of their node, inside its range, each published port
    once per node, and the bridge's range clear of the lab's networks."""
    names: dict[str, str] = {}
    for name, node in lab.nodes.items():
        field = f"nodes.{name}"
        if node.containers and node.bridge is None:
            yield (
                f"{field}.containers: {name} has containers but no bridge to put them on. "
                "Add bridge: {name: docker0, address: 172.17.0.1/16}"
            )
        if node.bridge is not None:
            bridge = node.bridge
            if (
                not IFNAME.match(bridge.name.replace("_", ""))
                or bridge.name in lab.networks
                or bridge.name in RESERVED_IFNAMES
            ):
                yield (
                    f"{field}.bridge.name: {bridge.name!r} cannot name the bridge: it must be a free interface name "
                    "of 1-15 letters and digits, not a lab network's. Use e.g. docker0"
                )
            for net, cidr in lab.networks.items():
                if bridge.address.network.overlaps(cidr):
                    yield (
                        f"{field}.bridge.address: {bridge.address.network} overlaps networks.{net} ({cidr}). "
                        "Give the bridge a range of its own, e.g. 172.17.0.1/16"
                    )
        for container, address in node.containers.items():
            c_field = f"{field}.containers.{container}"
            if not CONTAINER_NAME.match(container):
                yield f"{c_field}: {container!r} is not a plain container name. Use 1-10 lower-case letters and digits"
            if container in names or container in lab.nodes:
                yield f"{c_field}: the name {container} is taken by {names.get(container, 'a node')}. Give each container its own name"
            names[container] = f"a container on {name}"
            if node.bridge is not None:
                bridge = node.bridge
                if address not in bridge.address.network:
                    yield f"{c_field}: {address} is not on {bridge.name} ({bridge.address.network}). Use an address inside it"
                elif address in (
                    bridge.address.ip,
                    bridge.address.network.network_address,
                    bridge.address.network.broadcast_address,
                ):
                    yield f"{c_field}: {address} is {bridge.name}'s own, network or broadcast address. Use a free host address"
            if list(node.containers.values()).count(address) > 1:
                yield f"{c_field}: {address} is given to two containers on {name}. Give each its own address"
        seen: set[tuple[int, str]] = set()
        for k, published in enumerate(node.publish):
            p_field = f"{field}.publish[{k}]"
            key = (published.port, published.protocol.value)
            if key in seen:
                yield (
                    f"{p_field}.port: {published.protocol.value} port {published.port} is published twice on {name}. "
                    "Publish each port once per node"
                )
            seen.add(key)
            if published.container not in node.containers:
                yield (
                    f"{p_field}.container: {name} has no container {published.container!r}. "
                    f"Use one of: {', '.join(node.containers) or 'none yet (add containers:)'}"
                )


def _mesh_problems(lab: Lab, undeclared: bool) -> Iterator[str]:
    """A routing mesh (seed 001): swarm nodes and clients only, every swarm node with its ingress
    namespace on the overlay, each published port once, and the overlay and docker_gwbridge
    ranges clear of the lab's networks, since a node routes those through its NICs."""
    mesh = lab.mesh
    if mesh is None:
        yield (
            f"nodes.{lab.swarm_nodes[0]}.role: a swarm_node belongs to a routing mesh, and the lab has none. "
            "Add mesh: {publish: [{port: 8080}]}, or use role: real_server"
        )
        return
    if lab.services:
        yield (
            "services: a mesh balances in each node's ingress namespace, the ports under mesh.publish. "
            "Remove services:, or the mesh"
        )
    for role in (Role.swarm_node, Role.client):
        if not lab.nodes_with(role):
            yield f"nodes: the mesh has no {role.value}. Add a node with role: {role.value}"
    ports: set[int] = set()
    marks: set[int] = set()
    for k, published in enumerate(mesh.publish):
        field = f"mesh.publish[{k}]"
        if published.port in ports:
            yield f"{field}.port: port {published.port} is published twice. Publish each port once"
        if published.fwmark in marks:
            yield f"{field}.fwmark: mark {published.fwmark} is given twice. Give each published port its own mark"
        ports.add(published.port)
        marks.add(published.fwmark)
    for name, cidr in (("overlay", mesh.overlay), ("gwbridge", mesh.gwbridge.network)):
        for net, lab_cidr in lab.networks.items():
            if cidr.overlaps(lab_cidr):
                yield (
                    f"mesh.{name}: {cidr} overlaps networks.{net} ({lab_cidr}). "
                    f"Give the {name} a range of its own, e.g. {Mesh.model_fields[name].default}"
                )
    if mesh.gwbridge.network.overlaps(mesh.overlay):
        yield f"mesh.gwbridge: {mesh.gwbridge.network} overlaps the overlay {mesh.overlay}. Use e.g. 172.18.0.1/16"
    elif mesh.sbox_address in (mesh.gwbridge.network.broadcast_address,):
        yield f"mesh.gwbridge: {mesh.gwbridge} leaves no address for the ingress namespace after it. Use e.g. 172.18.0.1/16"
    seen: dict[IPv4Address, str] = {}
    names: dict[str, str] = {}
    tasks = 0
    for name, node in lab.nodes.items():
        field = f"nodes.{name}"
        if node.role != Role.swarm_node:
            if node.role != Role.client:
                yield f"{field}.role: a mesh has swarm_node and client nodes. Use role: swarm_node"
            for key in ("ingress", "tasks"):
                if getattr(node, key):
                    yield f"{field}.{key}: only a swarm_node has it. Remove {key}, or use role: swarm_node"
            continue
        if node.ingress is None:
            what = f"{name} has tasks but no ingress namespace" if node.tasks else f"{name} has no ingress namespace"
            yield (
                f"{field}.ingress: {what}, and every swarm node publishes the mesh's ports through its own. "
                f"Add ingress: <a free address in {mesh.overlay}>"
            )
        for key, address in [("ingress", node.ingress), *((f"tasks.{t}", a) for t, a in node.tasks.items())]:
            if address is None:
                continue
            if address not in mesh.overlay:
                yield f"{field}.{key}: {address} is not on the overlay {mesh.overlay}. Use an address inside it"
            elif address in (mesh.overlay.network_address, mesh.overlay.broadcast_address):
                yield f"{field}.{key}: {address} is the overlay's network or broadcast address. Use a host address"
            if address in seen:
                yield f"{field}.{key}: {address} is already used by {seen[address]}. Give each its own overlay address"
            seen[address] = f"{field}.{key}"
        for task in node.tasks:
            tasks += 1
            if not CONTAINER_NAME.match(task):
                yield f"{field}.tasks.{task}: {task!r} is not a plain task name. Use 1-10 lower-case letters and digits"
            if task in names or task in lab.nodes or task in lab.container_nodes:
                yield f"{field}.tasks.{task}: the name {task} is taken by {names.get(task, 'a node or container')}. Give each task its own name"
            names[task] = f"a task on {name}"
    if lab.swarm_nodes and not tasks:
        yield "nodes: the mesh has no task to balance to. Give a swarm node tasks: {web0: 10.255.0.5}"
    if lab.swarm_nodes and not undeclared and not mesh_network(lab):
        yield (
            f"nodes: the swarm nodes ({', '.join(lab.swarm_nodes)}) share no network for the overlay's VXLAN. "
            "Give them addresses on one network"
        )
