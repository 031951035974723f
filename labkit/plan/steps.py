"""Lab + node -> the steps that configure it, and the shell script that runs them. Pure.

Every step says why it exists and carries a check: when the check succeeds the step is
already done and is skipped, so provisioning twice changes nothing the second time. Commands
are lists of words, joined with shlex: no lab value reaches the remote shell unquoted.
"""

from __future__ import annotations

import base64
import shlex
from dataclasses import dataclass
from importlib.resources import files
from ipaddress import IPv4Address, IPv6Address

from labkit.labfile import Forwarding, Lab, PortMapping, Protocol, Role, Tunnel
from labkit.labfile.model import host_cidr, host_port, mesh_network
from labkit.plan import containers, ipvs, keepalived, mesh
from labkit.plan.guest import PRELUDE
from labkit.render.vagrantfile import interfaces

Words = tuple[str, ...]

WEB_ROOT = "/var/www/labkit"
NGINX_SITE = "/etc/nginx/conf.d/labkit.conf"
BIG_FILE = f"{WEB_ROOT}/1m.bin"
BIG_FILE_SIZE = 1024 * 1024
RULES_FILE = "/etc/ipvsadm.rules"  # where Debian's ipvsadm package keeps them
RESPONDER = "/usr/local/lib/labkit/udp-responder"
RESPONDER_UNIT = "labkit-udp"
RESPONDER_UNIT_FILE = f"/etc/systemd/system/{RESPONDER_UNIT}.service"

PACKAGES = {
    Role.director: {"ipvsadm": "ipvsadm", "keepalived": "keepalived", "iptables": "iptables"},
    Role.real_server: {"nginx": "nginx"},
    Role.client: {"curl": "curl"},
    Role.swarm_node: {
        "ipvsadm": "ipvsadm",
        "keepalived": "keepalived",
        "iptables": "iptables",
        "nginx": "nginx",
        "bridge": "iproute2",
        "curl": "curl",
        "ping": "iputils-ping",
    },
}
COMMON_PACKAGES = {"ip": "iproute2", "sysctl": "procps", "tcpdump": "tcpdump"}


@dataclass(frozen=True)
class Step:
    why: str
    unless: Words  # a check: when it succeeds, the step is already done
    commands: tuple[Words, ...]


def _file(why: str, path: str, content: str | bytes, mode: str = "0644") -> Step:
    data = base64.b64encode(content.encode() if isinstance(content, str) else content).decode()
    return Step(why, ("same", path, data), (("put", path, mode, data),))


def _sysctls(why: str, settings: dict[str, str]) -> Step:
    pairs = tuple(f"{k}={v}" for k, v in settings.items())
    return Step(why, ("sysctls_are", *pairs), (("sysctl", "-q", "-w", *pairs),))


def _address(dev: str, cidr: str, why: str) -> Step:
    # An IPv6 address is usable at once with nodad: duplicate address detection would hold it
    # "tentative" for a second or more, and labkit gives every address once.
    nodad = ("nodad",) if ":" in cidr else ()
    return Step(why, ("has_addr", dev, cidr), (("ip", "addr", "replace", cidr, "dev", dev, *nodad),))


def _netem(lab: Lab, node: str, nets: list[str]) -> Step:
    """netem where the lab file's `impair:` puts it, with its handle, and on no other of the
    node's lab links: `labkit fail NETWORK --delay ...` adds one, a provision (so a heal) takes it off."""
    wanted = {net: lab.impair[net] for net in nets if net in lab.impair}
    why = [f"network {net} impaired as the lab file says ({' '.join(i.netem())})" for net, i in wanted.items()]
    if len(wanted) < len(nets):
        why.append(f"no netem on {node}'s {'other ' if wanted else ''}lab links")
    return Step(
        "; ".join(why),
        ("netem_only", *(f"{net}={i.handle()}" for net, i in wanted.items())),
        tuple(
            ("netem_put", net, wanted[net].handle(), *wanted[net].netem()) if net in wanted else ("netem_off", net)
            for net in nets
        ),
    )


def _module(name: str, why: str) -> Step:
    return Step(why, ("test", "-d", f"/sys/module/{name}"), (("modprobe", name),))


def sysctls(lab: Lab, node: str) -> dict[str, str]:
    """The kernel settings a node needs for the lab's forwarding methods (verify checks them)."""
    role = lab.nodes[node].role
    out: dict[str, str] = {}
    if role == Role.director:
        if lab.nat4:
            out["net.ipv4.ip_forward"] = "1"
        if lab.nat6:
            out["net.ipv6.conf.all.forwarding"] = "1"
        if lab.ha:
            # A connection whose first packets the sync daemon had not copied yet still
            # reaches the new active director mid-stream: let IPVS take it without a SYN.
            out["net.ipv4.vs.sloppy_tcp"] = "1"
        if any(s.forwarding != Forwarding.masq for s in lab.services):
            # DR and TUN replies bypass the director, so the last state it sees of a connection is
            # FIN_WAIT, kept 2 minutes. A client that picks the same source port again in that
            # time would reach the old real server, even one drained to weight 0; bit 2 makes
            # IPVS schedule such a SYN anew (bit 1 does it for TIME_WAIT, which NAT sees).
            out["net.ipv4.vs.conn_reuse_mode"] = "3"
    elif role == Role.real_server:
        methods = {s.forwarding for s in lab.services_of(node)}
        if methods & {Forwarding.tun, Forwarding.route}:
            for dev in ("all", *dict.fromkeys(vip_devices(lab, node).values())):
                out[f"net.ipv4.conf.{dev}.arp_ignore"] = "1"
                out[f"net.ipv4.conf.{dev}.arp_announce"] = "2"
            for dev in ["all", *request_devices(lab, node)]:
                out[f"net.ipv4.conf.{dev}.rp_filter"] = "0"
    return out


def request_devices(lab: Lab, node: str) -> list[str]:
    """Where requests from the director arrive on a TUN/DR real server: the tunnel's device for
    TUN (tunl0, or gre0 for GRE), the network of the real server's address for DR."""
    devs: list[str] = []
    for svc in lab.services_of(node):
        if svc.tunnel_type is not None:
            dev = svc.tunnel_type.device
        elif svc.forwarding == Forwarding.route:
            address = next(rs.address for rs in svc.real_servers if lab.node_at(rs.address) == node)
            dev = lab.network_of(address) or ""
        else:
            continue
        if dev not in devs:
            devs.append(dev)
    return devs


def gateway_routes(lab: Lab, node: str) -> dict[str, str]:
    """NAT real servers: each network they are not on, via the director (the pair's floating
    gateway, or the single director's DIP), so that replies go back through the director that
    rewrote the request. IPv6 NAT likewise, via the director's IPv6 address."""
    out: dict[str, str] = {}
    for via, networks, mine in (
        (lab.reply_gateway(node), lab.networks, lab.nodes[node].addresses),
        (lab.reply_gateway6(node), lab.networks6, lab.nodes[node].addresses6),
    ):
        if via is not None:
            out.update({str(cidr): str(via) for net, cidr in networks.items() if net not in mine})
    return out


def vip_devices(lab: Lab, real_server: str) -> dict[IPv4Address | IPv6Address, str]:
    """VIP -> where a TUN/DR real server holds it: on the device that unwraps the tunnel
    (tunl0, gre0 for GRE), or on lo for DR. NAT real servers never see the VIP."""
    out: dict[IPv4Address | IPv6Address, str] = {}
    for svc in lab.services_of(real_server):
        if svc.forwarding != Forwarding.masq:
            for vip in svc.addresses:
                out.setdefault(vip, svc.tunnel_type.device if svc.tunnel_type else "lo")
    return out


def real_ports(lab: Lab, node: str, protocol: Protocol) -> list[int]:
    """The ports a real server serves the lab's services of one protocol on."""
    return sorted(
        {
            svc.real_port(rs)
            for svc in lab.services_of(node)
            if svc.protocol == protocol
            for rs in svc.real_servers
            if lab.node_at(rs.address) == node
        }
    )


def responder_unit(lab: Lab, node: str) -> str:
    ports = " ".join(str(p) for p in real_ports(lab, node, Protocol.udp))
    return (
        "# Written by labkit from the lab file; labkit provision rewrites it.\n"
        "[Unit]\n"
        "Description=labkit UDP responder: answers each datagram with the real server's name\n"
        "After=network.target\n"
        "\n"
        "[Service]\n"
        f"ExecStart={RESPONDER} {node} {ports}\n"
        "DynamicUser=yes\n"
        "# the lab file may give a port below 1024\n"
        "AmbientCapabilities=CAP_NET_BIND_SERVICE\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def tunnels(lab: Lab, real_server: str) -> set[Tunnel]:
    """The encapsulations that reach a real server."""
    return {svc.tunnel_type for svc in lab.services_of(real_server) if svc.tunnel_type is not None}


def gue_ports(lab: Lab, real_server: str) -> list[int]:
    return sorted(
        {
            svc.tunnel_port
            for svc in lab.services_of(real_server)
            if svc.tunnel_type == Tunnel.gue and svc.tunnel_port is not None
        }
    )


def port_maps(lab: Lab, real_server: str) -> list[tuple[str, Words]]:
    """Why, and the iptables rule, for each VIP whose port this real server maps to its own
    (port_mapping: dnat, seed 003): a tunnel carries the client's packet as it was, to the
    VIP's port, and the real server's firewall rewrites it before the packet is delivered;
    conntrack rewrites the reply's source port back."""
    out = []
    for svc in lab.services_of(real_server):
        if svc.port_mapping != PortMapping.dnat:
            continue
        real = next(svc.real_port(rs) for rs in svc.real_servers if lab.node_at(rs.address) == real_server)
        if real == svc.port:
            continue
        for vip in svc.addresses:
            out.append(
                (
                    f"port_mapping: dnat: requests to {vip}:{svc.port} go to this real server's port {real}",
                    (
                        "-t",
                        "nat",
                        "-A",
                        "PREROUTING",
                        "-d",
                        f"{vip}/32",
                        "-p",
                        svc.protocol.value,
                        "--dport",
                        str(svc.port),
                        "-j",
                        "DNAT",
                        "--to-destination",
                        f"{vip}:{real}",
                    ),
                )
            )
    return out


def _rule(why: str, rule: Words) -> Step:
    """An iptables rule, appended (or inserted) unless the same rule is there (iptables -C)."""
    check = ("iptables", *("-C" if word in ("-A", "-I") else word for word in rule))
    return Step(why, check, (("iptables", *rule),))


def nginx_site(lab: Lab, node: str) -> str:
    ports = sorted(
        {
            (svc.real_port(rs), svc.ipv6)
            for svc in lab.services_of(node)
            if svc.protocol == Protocol.tcp
            for rs in svc.real_servers
            if lab.node_at(rs.address) == node
        }
    )
    # `listen 80` is IPv4 only; an IPv6 service's port gets `listen [::]:80` too.
    listen = "".join(f"    listen {host_port('::', port) if ipv6 else port};\n" for port, ipv6 in ports)
    # The headers name the server that answered, so a client can tell who served a download,
    # and the IPVS destination (address:port) where a server is one on several ports.
    return (
        "server {\n"
        f"{listen}"
        f"    root {WEB_ROOT};\n"
        f"    add_header X-Real-Server {node} always;\n"
        "    add_header X-Destination $server_addr:$server_port always;\n"
        "}\n"
    )


def firewall_marks(lab: Lab) -> list[tuple[str, Words]]:
    """Why, and the iptables rule, for each VIP of a fwmark service, as Docker swarm marks its
    VIPs (seed 004). Marked in PREROUTING, before IPVS looks for a service on the way in."""
    return [
        (
            f"fwmark: packets for {vip} port {svc.port} get mark {svc.fwmark}, which one IPVS service matches",
            (
                "-t",
                "mangle",
                "-A",
                "PREROUTING",
                "-d",
                f"{vip}/32",
                "-p",
                svc.protocol.value,
                "--dport",
                str(svc.port),
                "-j",
                "MARK",
                "--set-mark",
                str(svc.fwmark),
            ),
        )
        for svc in lab.services
        if svc.fwmark
        for vip in svc.addresses
    ]


def container_steps(lab: Lab, node: str) -> list[Step]:
    """The node's bridge and containers, as Docker would leave them (plan/containers.py)."""
    mine = lab.nodes[node]
    bridge = mine.bridge
    if bridge is None:
        return []
    br, gateway = bridge.name, str(bridge.address.ip)
    steps = [
        Step(
            f"{br}: the bridge the containers' veths hang on, as Docker's",
            ("test", "-d", f"/sys/class/net/{br}"),
            (("ip", "link", "add", br, "type", "bridge"),),
        ),
        _address(
            br,
            str(bridge.address),
            f"{br} holds the containers' gateway {gateway}; the kernel adds the route "
            f"{bridge.address.network} dev {br}, which is how this node reaches its containers",
        ),
        Step(f"{br} up", ("link_up", br), (("ip", "link", "set", br, "up"),)),
        _sysctls(
            "containers: the node forwards between its bridge and its networks, as Docker sets it",
            {"net.ipv4.ip_forward": "1"},
        ),
        _rule(
            "Docker's rule: what the containers start leaves with the node's address (replies are not new "
            "connections: IPVS and DNAT replies pass untouched)",
            containers.masquerade_rule(mine),
        ),
        _file(
            "systemd runs each container's web server in its namespace: systemctl status labkit-container@NAME",
            containers.UNIT_FILE,
            containers.UNIT_TEXT,
        ),
    ]
    for name, address in mine.containers.items():
        veth, cidr = containers.veth(name), f"{address}/{bridge.address.network.prefixlen}"
        steps += [
            Step(
                f"{name}: a network namespace of its own (ip netns exec {name} ... runs inside it)",
                ("test", "-e", f"/run/netns/{name}"),
                (("ip", "netns", "add", name),),
            ),
            Step(
                f"{name}: a veth pair, {veth} on {br} and eth0 inside the container",
                ("test", "-d", f"/sys/class/net/{veth}"),
                (
                    ("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name),
                    ("ip", "link", "set", veth, "master", br, "up"),
                ),
            ),
            Step(
                f"{name}: its address {cidr} on eth0, up, with lo",
                ("netns_has_addr", name, "eth0", cidr),
                (
                    ("ip", "-n", name, "addr", "replace", cidr, "dev", "eth0"),
                    ("ip", "-n", name, "link", "set", "eth0", "up"),
                    ("ip", "-n", name, "link", "set", "lo", "up"),
                ),
            ),
            Step(
                f"{name}: its default route via {br} ({gateway}), so replies go back through this node",
                ("netns_route_via", name, gateway),
                (("ip", "-n", name, "route", "replace", "default", "via", gateway),),
            ),
            _file(f"{name}: a page that names the container", f"{containers.web_root(name)}/index.html", f"{name}\n"),
            Step(
                f"{name}: a 1 MiB file to check that transfers arrive byte-identical",
                ("size_is", f"{containers.web_root(name)}/1m.bin", str(BIG_FILE_SIZE)),
                (("random_file", f"{containers.web_root(name)}/1m.bin", str(BIG_FILE_SIZE)),),
            ),
            _file(f"{name}: its nginx serves port 80", containers.config_path(name), containers.nginx_config(name)),
            Step(
                f"{name}: its web server runs with this configuration",
                ("applied", containers.unit(name), containers.config_path(name), containers.UNIT_FILE),
                (("systemctl", "daemon-reload"), ("apply_config", containers.unit(name))),
            ),
        ]
    steps += [_rule(why, rule) for why, rule in containers.publish_rules(mine)]
    return steps


def _in(ns: str, why: str, rule: Words) -> Step:
    """An iptables rule inside a namespace, appended (or inserted) unless it is there."""
    check = ("ip", "netns", "exec", ns, "iptables", *("-C" if word in ("-A", "-I") else word for word in rule))
    return Step(why, check, (("ip", "netns", "exec", ns, "iptables", *rule),))


def _netns(name: str, why: str) -> Step:
    return Step(why, ("test", "-e", f"/run/netns/{name}"), (("ip", "netns", "add", name),))


def _overlay_leg(name: str, ns: str, dev: str, cidr: str, why: str) -> list[Step]:
    """A veth pair from the overlay's bridge (ov-NAME) to `dev` inside `ns`, with its address."""
    ov = mesh.overlay_veth(name)
    mtu = str(mesh.MTU)
    return [
        Step(
            f"{why}: a veth pair, {ov} on the overlay's {mesh.BRIDGE} and {dev} inside {ns} (MTU {mtu}: "
            "the VXLAN header must fit in the NIC's 1500)",
            ("netns_link_up", mesh.OVERLAY, ov),
            (
                (
                    "ip",
                    "-n",
                    mesh.OVERLAY,
                    "link",
                    "add",
                    ov,
                    "mtu",
                    mtu,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    dev,
                    "mtu",
                    mtu,
                    "netns",
                    ns,
                ),
                ("ip", "-n", mesh.OVERLAY, "link", "set", ov, "master", mesh.BRIDGE, "up"),
            ),
        ),  # fmt: skip
        Step(
            f"{why}: its overlay address {cidr} on {dev}, up, with lo",
            ("netns_has_addr", ns, dev, cidr),
            (
                ("ip", "-n", ns, "addr", "replace", cidr, "dev", dev),
                ("ip", "-n", ns, "link", "set", dev, "up"),
                ("ip", "-n", ns, "link", "set", "lo", "up"),
            ),
        ),
    ]


def mesh_steps(lab: Lab, node: str) -> list[Step]:
    """A swarm node of the routing mesh, as Docker leaves it (plan/mesh.py)."""
    m, mine = lab.mesh, lab.nodes[node]
    prefix = m.overlay.prefixlen
    gw, sbox_gw = str(m.gwbridge.ip), f"{m.sbox_address}/{m.gwbridge.network.prefixlen}"
    local = mesh.local_address(lab, node)
    steps = [
        _module("ip_vs", "IPVS balances the published ports, inside the ingress namespace"),
        _sysctls("the node forwards the published ports to the ingress namespace", {"net.ipv4.ip_forward": "1"}),
        Step(
            f"{mesh.GWBRIDGE}: the bridge between the node and its ingress namespace, as Docker's",
            ("test", "-d", f"/sys/class/net/{mesh.GWBRIDGE}"),
            (("ip", "link", "add", mesh.GWBRIDGE, "type", "bridge"),),
        ),
        _address(mesh.GWBRIDGE, str(m.gwbridge), f"{mesh.GWBRIDGE} holds the gateway {gw} of {m.gwbridge.network}"),
        Step(f"{mesh.GWBRIDGE} up", ("link_up", mesh.GWBRIDGE), (("ip", "link", "set", mesh.GWBRIDGE, "up"),)),
        _netns(
            mesh.SBOX,
            f"{mesh.SBOX}: the ingress namespace (Docker keeps it as /var/run/docker/netns/ingress_sbox, no "
            "container of docker ps; here /run/netns/ingress_sbox: ip netns exec ingress_sbox ... runs inside)",
        ),
        Step(
            f"{mesh.SBOX}: a veth pair, {mesh.HOST_VETH} on {mesh.GWBRIDGE} and {mesh.SBOX_GW_LEG} inside",
            ("link_up", mesh.HOST_VETH),
            (
                (
                    "ip",
                    "link",
                    "add",
                    mesh.HOST_VETH,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    mesh.SBOX_GW_LEG,
                    "netns",
                    mesh.SBOX,
                ),
                ("ip", "link", "set", mesh.HOST_VETH, "master", mesh.GWBRIDGE, "up"),
            ),
        ),  # fmt: skip
        Step(
            f"{mesh.SBOX}: {sbox_gw} on {mesh.SBOX_GW_LEG}, where DOCKER-INGRESS sends the published ports",
            ("netns_has_addr", mesh.SBOX, mesh.SBOX_GW_LEG, sbox_gw),
            (
                ("ip", "-n", mesh.SBOX, "addr", "replace", sbox_gw, "dev", mesh.SBOX_GW_LEG),
                ("ip", "-n", mesh.SBOX, "link", "set", mesh.SBOX_GW_LEG, "up"),
                ("ip", "-n", mesh.SBOX, "link", "set", "lo", "up"),
            ),
        ),
        Step(
            f"{mesh.SBOX}: its default route via {gw}, so the clients' answers go back through the node",
            ("netns_route_via", mesh.SBOX, gw),
            (("ip", "-n", mesh.SBOX, "route", "replace", "default", "via", gw),),
        ),
        Step(
            f"{mesh.SBOX}: it forwards (the tasks' replies go on to the client), and IPVS keeps conntrack "
            "entries, which its SNAT rule needs (Docker sets both)",
            ("netns_sysctls_are", mesh.SBOX, "net.ipv4.ip_forward=1", "net.ipv4.vs.conntrack=1"),
            (
                (
                    "ip",
                    "netns",
                    "exec",
                    mesh.SBOX,
                    "sysctl",
                    "-q",
                    "-w",
                    "net.ipv4.ip_forward=1",
                    "net.ipv4.vs.conntrack=1",
                ),
            ),
        ),
        _netns(
            mesh.OVERLAY,
            f"{mesh.OVERLAY}: the overlay's own namespace (Docker's 1-<network id>): the node has no leg "
            f"on {m.overlay}, so it cannot ping it",
        ),
        Step(
            f"{mesh.OVERLAY}: the overlay's bridge {mesh.BRIDGE}, which the VXLAN and every leg hang on",
            ("netns_link_up", mesh.OVERLAY, mesh.BRIDGE),
            (
                ("ip", "-n", mesh.OVERLAY, "link", "add", mesh.BRIDGE, "type", "bridge"),
                ("ip", "-n", mesh.OVERLAY, "link", "set", mesh.BRIDGE, "up"),
            ),
        ),
        Step(
            f"{mesh.OVERLAY}: {mesh.VXLAN}, VNI {m.vni}, UDP {mesh.VXLAN_PORT} from {local}: made in the node's "
            f"namespace, where its socket stays, then moved into {mesh.OVERLAY} onto {mesh.BRIDGE}",
            ("netns_link_up", mesh.OVERLAY, mesh.VXLAN),
            (
                (
                    "ip",
                    "link",
                    "add",
                    mesh.VXLAN,
                    "type",
                    "vxlan",
                    "id",
                    str(m.vni),
                    "dstport",
                    str(mesh.VXLAN_PORT),
                    "local",
                    local,
                    "dev",
                    mesh_network(lab),
                ),
                ("ip", "link", "set", mesh.VXLAN, "netns", mesh.OVERLAY),
                ("ip", "-n", mesh.OVERLAY, "link", "set", mesh.VXLAN, "master", mesh.BRIDGE, "up"),
            ),
        ),  # fmt: skip
    ]
    for peer in mesh.peers(lab, node):
        steps.append(
            Step(
                f"{mesh.VXLAN}: what the overlay floods (ARP, unknown MACs) goes to the node {peer} too; "
                "the answers' MACs are learnt",
                ("netns_fdb_has", mesh.OVERLAY, mesh.VXLAN, peer),
                (("bridge", "-n", mesh.OVERLAY, "fdb", "append", "00:00:00:00:00:00", "dev", mesh.VXLAN, "dst", peer),),
            )
        )
    steps += _overlay_leg("sbox", mesh.SBOX, mesh.SBOX_OVERLAY_LEG, f"{mine.ingress}/{prefix}", mesh.SBOX)
    for p, rule in zip(m.publish, mesh.mark_rules(m)):
        steps.append(
            _in(
                mesh.SBOX,
                f"{mesh.SBOX}: packets to port {p.port} get mark {p.fwmark} ({p.fwmark:#x}), which its IPVS "
                "service matches",
                rule,
            )
        )
    steps.append(
        _in(
            mesh.SBOX,
            f"{mesh.SBOX}: what IPVS sends to a task leaves from {mine.ingress}, so the task answers through here",
            mesh.snat_rule(m, mine.ingress),
        )
    )
    steps.append(
        _file(
            "systemd runs each task's web server in its namespace: systemctl status labkit-container@TASK",
            containers.UNIT_FILE,
            containers.UNIT_TEXT,
        )
    )
    for name, address in mine.tasks.items():
        steps.append(_netns(name, f"{name}: a task, a network namespace of its own (ip netns exec {name} ...)"))
        steps += _overlay_leg(name, name, "eth0", f"{address}/{prefix}", name)
        steps += [
            _file(f"{name}: a page that names the task", f"{containers.web_root(name)}/index.html", f"{name}\n"),
            _file(
                f"{name}: its nginx serves port(s) {', '.join(map(str, mesh.target_ports(m)))}",
                containers.config_path(name),
                containers.nginx_config(name, mesh.target_ports(m)),
            ),
            Step(
                f"{name}: its web server runs with this configuration",
                ("applied", containers.unit(name), containers.config_path(name), containers.UNIT_FILE),
                (("systemctl", "daemon-reload"), ("apply_config", containers.unit(name))),
            ),
        ]
    steps += [
        _file(
            f"keepalived in {mesh.SBOX}: the IPVS firewall-mark services over every task, checked every second",
            mesh.KEEPALIVED_CONF,
            mesh.keepalived_config(lab, node),
        ),
        _file(
            f"systemd runs that keepalived inside {mesh.SBOX}: systemctl status {mesh.UNIT}",
            mesh.UNIT_FILE,
            mesh.UNIT_TEXT,
        ),
        Step(
            f"{mesh.UNIT} runs with this configuration",
            ("applied", mesh.UNIT, mesh.KEEPALIVED_CONF, mesh.UNIT_FILE),
            (("systemctl", "daemon-reload"), ("apply_config", mesh.UNIT)),
        ),
        Step(
            f"the nat chain {mesh.CHAIN}, where Docker puts its published ports",
            ("iptables", "-t", "nat", "-n", "-L", mesh.CHAIN),
            (("iptables", "-t", "nat", "-N", mesh.CHAIN),),
        ),
    ]
    for p, rule in zip(m.publish, mesh.ingress_rules(m)):
        steps.append(
            _rule(
                f"{mesh.CHAIN}: port {p.port} of every local address goes to {mesh.SBOX} ({m.sbox_address}:{p.port})",
                rule,
            )
        )
    steps.append(_rule(f"{mesh.CHAIN}: anything else goes on", ("-t", "nat", "-A", mesh.CHAIN, "-j", "RETURN")))
    steps += [_rule(f"packets to the node's own addresses pass {mesh.CHAIN} ({r[3]})", r) for r in mesh.jump_rules()]
    return steps


def own_ports(lab: Lab, node: str) -> list[int]:
    """The TCP ports a real server's own nginx serves: those not published to a container."""
    return [p for p in real_ports(lab, node, Protocol.tcp) if lab.nodes[node].published(p) is None]


def director_steps(lab: Lab, node: str) -> list[Step]:
    steps = [_rule(why, rule) for why, rule in firewall_marks(lab)]
    if lab.ha:
        return steps + [
            _file(
                "keepalived leaves the IPVS table in place when it stops: connections that still reach this "
                "director while the VIP moves are forwarded, not reset",
                keepalived.DEFAULTS,
                'DAEMON_ARGS="--dont-release-ipvs"\n',
            ),
            _file(
                "keepalived: VRRP for the VIPs (and the NAT gateway), the IPVS services with health checks, "
                "connection sync",
                keepalived.CONFIG,
                keepalived.config(lab, node),
            ),
            Step(
                "keepalived runs with this configuration (a reload keeps VRRP state and connections)",
                ("applied", "keepalived", keepalived.CONFIG),
                (("apply_config", "keepalived"),),
            ),
        ]
    if node == lab.active_director:
        for vip in lab.vips:
            dev = lab.network_of(vip)
            steps.append(_address(dev, host_cidr(vip), f"the active director answers for the VIP {vip} on {dev}"))
    steps.append(_file("the virtual services of the lab, in ipvsadm-save format", RULES_FILE, ipvs.rules(lab)))
    steps.append(
        Step(
            "load the IPVS table: edit it in place when only weights or schedulers changed, else replace it as a whole",
            ("ipvs_matches", RULES_FILE),
            (("ipvs_load", RULES_FILE),),
        )
    )
    return steps


# A VM restored from its saved memory (labkit stop, then up) or a snapshot (labkit reset) runs on
# from the time it was saved at.
CLOCK = Step("the clock is the host's: the RTC's", ("clock_is_rtc",), (("clock_from_rtc",),))


def plan(lab: Lab, node: str) -> list[Step]:
    role = lab.nodes[node].role
    needed = {**COMMON_PACKAGES, **PACKAGES[role]}
    udp_ports = real_ports(lab, node, Protocol.udp) if role == Role.real_server else []
    if udp_ports:
        needed["python3"] = "python3"  # the UDP responder
    if role == Role.real_server and port_maps(lab, node):
        needed["iptables"] = "iptables"
    if lab.nodes[node].bridge is not None:
        needed |= {"iptables": "iptables", "nginx": "nginx"}
    steps = [
        Step(
            "the box may lack the lab's tools: install them",
            ("has_commands", *needed),
            (("apt_install", *sorted(set(needed.values()))),),
        ),
        Step(f"the node is called {node}", ("hostname_is", node), (("set_hostname", node),)),
        CLOCK,
    ]
    links = interfaces(lab, node)
    for iface in links:
        net, cidr = iface.network, iface.cidr
        steps.append(
            Step(
                f"the NIC on network {net} is named {net}, so every command can name it",
                ("link_named", net, iface.mac),
                (("name_link", net, iface.mac),),
            )
        )
        steps.append(_address(net, cidr, f"{node}'s address on network {net}"))
        if net in lab.nodes[node].addresses6:
            cidr6 = f"{lab.nodes[node].addresses6[net]}/{lab.networks6[net].prefixlen}"
            steps.append(
                _sysctls(f"IPv6 on {net}: the box may boot with it off", {f"net.ipv6.conf.{net}.disable_ipv6": "0"})
            )
            steps.append(_address(net, cidr6, f"{node}'s IPv6 address on network {net}"))
    if links:
        steps.append(_netem(lab, node, [iface.network for iface in links]))

    steps += container_steps(lab, node)
    if role == Role.swarm_node:
        steps += mesh_steps(lab, node)
    elif role == Role.director:
        steps.append(_module("ip_vs", "IPVS is the kernel's load balancer"))
        if settings := sysctls(lab, node):
            why = {
                "net.ipv4.ip_forward": "NAT: the director forwards between the client's and the real servers' networks",
                "net.ipv6.conf.all.forwarding": "NAT over IPv6: the director forwards IPv6 too",
                "net.ipv4.vs.sloppy_tcp": "a pair: the new active director takes over connections it did not see open",
                "net.ipv4.vs.conn_reuse_mode": "DR/TUN: a new connection on a source port seen closing is scheduled "
                "anew, not sent to the old real server",
            }
            steps.append(_sysctls("; ".join(why[k] for k in settings), settings))
        steps += director_steps(lab, node)

    elif role == Role.real_server:
        kinds = tunnels(lab, node)
        if kinds & {Tunnel.ipip, Tunnel.gue}:
            steps.append(
                _module("ipip", "TUN: the ipip module gives tunl0, which unwraps the director's IP-in-IP packets")
            )
        if Tunnel.gue in kinds:
            steps.append(
                _module("fou", "TUN over GUE: the fou module takes the IP-in-IP packets out of their UDP wrapping")
            )
        if Tunnel.gre in kinds:
            steps.append(
                _module(
                    "ip_gre", "TUN over GRE: the ip_gre module gives gre0, which unwraps the director's GRE packets"
                )
            )
        if settings := sysctls(lab, node):
            steps.append(
                _sysctls(
                    "the VIP is local here too: never answer ARP for it (arp_ignore=1) nor use it as ARP source "
                    "(arp_announce=2); accept requests that arrive where the route back does not leave (rp_filter=0)",
                    settings,
                )
            )
        for dev in dict.fromkeys(kind.device for kind in sorted(kinds)):
            steps.append(Step(f"TUN: {dev} up", ("link_up", dev), (("ip", "link", "set", dev, "up"),)))
        for port in gue_ports(lab, node):
            steps.append(
                Step(
                    f"TUN over GUE: UDP port {port} is unwrapped (fou) and its IP-in-IP handed to tunl0",
                    ("fou_port", str(port)),
                    (("ip", "fou", "add", "port", str(port), "gue"),),
                )
            )
        for vip, dev in vip_devices(lab, node).items():
            steps.append(_address(dev, host_cidr(vip), f"the real server accepts packets for the VIP {vip} on {dev}"))
        steps += [_rule(why, rule) for why, rule in port_maps(lab, node)]
        for net, via in gateway_routes(lab, node).items():
            steps.append(
                Step(
                    f"NAT: replies to {net} go back through the director {via}",
                    ("route_via", net, via),
                    (("ip", "route", "replace", net, "via", via),),
                )
            )
        if not own_ports(lab, node) and not udp_ports:
            return steps  # its ports are all published to containers: no web server of its own
        steps.append(_file("a page that names the real server", f"{WEB_ROOT}/index.html", f"{node}\n"))
        steps.append(
            Step(
                "a 1 MiB file to check that transfers arrive byte-identical",
                ("size_is", BIG_FILE, str(BIG_FILE_SIZE)),
                (("random_file", BIG_FILE, str(BIG_FILE_SIZE)),),
            )
        )
        steps.append(
            Step(
                "nginx's own default site would also claim port 80",
                ("test", "!", "-e", "/etc/nginx/sites-enabled/default"),
                (("rm", "-f", "/etc/nginx/sites-enabled/default"),),
            )
        )
        steps.append(_file("nginx serves the lab's pages on the real server ports", NGINX_SITE, nginx_site(lab, node)))
        steps.append(
            Step(
                "nginx runs with this configuration",
                ("started_after", "nginx", NGINX_SITE),
                (("enable_unit", "nginx"), ("systemctl", "restart", "nginx")),
            )
        )
        if udp_ports:
            steps.append(
                _file(
                    "the UDP services' server: it answers every datagram with the real server's name",
                    RESPONDER,
                    files("labkit.plan").joinpath("responder.py").read_text(),
                    "0755",
                )
            )
            steps.append(
                _file(
                    f"systemd runs the responder on UDP port(s) {', '.join(map(str, udp_ports))}",
                    RESPONDER_UNIT_FILE,
                    responder_unit(lab, node),
                )
            )
            steps.append(
                Step(
                    "the UDP responder runs this program with this unit",
                    ("applied", RESPONDER_UNIT, RESPONDER_UNIT_FILE, RESPONDER),
                    (("systemctl", "daemon-reload"), ("apply_config", RESPONDER_UNIT)),
                )
            )
    return steps


def script(steps: list[Step]) -> str:
    """One shell script that runs the steps in order, printing a line for each change."""
    parts = [PRELUDE]
    for step in steps:
        why = shlex.quote(step.why)
        body = "".join(f"  {shlex.join(c)}\n" for c in step.commands)
        parts.append(f'current={why}\nif ! {shlex.join(step.unless)}; then\n{body}  changed "$current"\nfi\n')
    return "\n".join(parts)
