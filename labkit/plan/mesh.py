"""A swarm node of the routing mesh (seed 001), wired as Docker wires it, without Docker. Pure.

What `docker service create -p 8080:80` leaves on every node of a swarm, part by part:
- the node's nat chain DOCKER-INGRESS, jumped to from PREROUTING and OUTPUT for local
  addresses, DNATs the published port to the ingress namespace (172.18.0.2 on docker_gwbridge);
- the ingress namespace `ingress_sbox` (Docker keeps it under /var/run/docker/netns/, labkit under
  /run/netns/) has eth1 on docker_gwbridge and eth0 on the ingress overlay. There a mangle rule
  marks the port's packets, an IPVS firewall-mark service sends them, masqueraded, to the tasks
  on every node, and a SNAT rule for IPVS'd packets gives them the namespace's overlay address as
  source, so the tasks' replies come back the way they went;
- the overlay lives in a namespace of its own (Docker's `1-<network id>`): a bridge br0 and a
  VXLAN device on it, whose packets (UDP 4789) go to the other nodes' addresses. The node itself
  has no leg on it, which is why it cannot ping 10.255.0.0/16;
- each task is a namespace with eth0 on the overlay (MTU 1450: the VXLAN header takes 50 bytes)
  and one nginx, the unit `labkit-container@TASK` as in the containers lab.
Swarm's manager takes a stopped task out of the IPVS services; here keepalived does it, running
as a health checker only inside each ingress namespace (the unit `labkit-ingress`).
"""

from __future__ import annotations

from labkit.labfile import Check, Forwarding, Lab
from labkit.labfile.model import Mesh, mesh_network
from labkit.plan.keepalived import LB_KIND, _check, _indent

SBOX = "ingress_sbox"  # Docker's name for the ingress namespace
OVERLAY = "1-ingress"  # Docker names it 1- and the start of the network's id
GWBRIDGE = "docker_gwbridge"
BRIDGE = "br0"  # the overlay's bridge, inside OVERLAY
VXLAN = "vxlan0"
VXLAN_PORT = 4789  # IANA's VXLAN port, which Docker uses
MTU = 1450  # 1500 less the VXLAN, UDP, IP and Ethernet headers
SBOX_GW_LEG = "eth1"  # inside SBOX, on docker_gwbridge
SBOX_OVERLAY_LEG = "eth0"  # inside SBOX, on the overlay
HOST_VETH = "veth-sbox"  # the node's end of the sbox's leg on docker_gwbridge
CHAIN = "DOCKER-INGRESS"
UNIT = "labkit-ingress"
UNIT_FILE = f"/etc/systemd/system/{UNIT}.service"
KEEPALIVED_CONF = "/etc/labkit/mesh/keepalived.conf"


def overlay_veth(name: str) -> str:
    """The overlay's end (on br0) of a task's or the sbox's leg: ov-web0, ov-sbox."""
    return f"ov-{name}"


def peers(lab: Lab, node: str) -> list[str]:
    """The other swarm nodes' addresses: where this node's VXLAN sends what its overlay floods."""
    net = mesh_network(lab)
    return [str(lab.nodes[n].addresses[net]) for n in lab.swarm_nodes if n != node]


def local_address(lab: Lab, node: str) -> str:
    return str(lab.nodes[node].addresses[mesh_network(lab)])


def target_ports(mesh: Mesh) -> tuple[int, ...]:
    return tuple(sorted({p.target_port for p in mesh.publish}))


def ingress_rules(mesh: Mesh) -> list[tuple[str, ...]]:
    """Docker's DNAT for each published port, in the node's nat table (iptables -t nat -S
    DOCKER-INGRESS lists them as the seed quotes them)."""
    return [
        ("-t", "nat", "-I", CHAIN, "-p", "tcp", "--dport", str(p.port), "-j", "DNAT",
         "--to-destination", f"{mesh.sbox_address}:{p.port}")
        for p in mesh.publish
    ]  # fmt: skip


def jump_rules() -> list[tuple[str, ...]]:
    """Every packet to one of the node's own addresses passes DOCKER-INGRESS: from outside
    (PREROUTING) and from the node itself (OUTPUT)."""
    return [
        ("-t", "nat", "-A", hook, "-m", "addrtype", "--dst-type", "LOCAL", "-j", CHAIN)
        for hook in ("PREROUTING", "OUTPUT")
    ]


def mark_rules(mesh: Mesh) -> list[tuple[str, ...]]:
    """Inside the ingress namespace: each published port's packets get the mark its IPVS service matches."""
    return [
        (
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "--dport",
            str(p.port),
            "-j",
            "MARK",
            "--set-mark",
            str(p.fwmark),
        )
        for p in mesh.publish
    ]


def snat_rule(mesh: Mesh, ingress: object) -> tuple[str, ...]:
    """Inside the ingress namespace: what IPVS sends to a task leaves from the namespace's overlay
    address, so the task answers it and not the client (Docker's rule, verbatim)."""
    return ("-t", "nat", "-A", "POSTROUTING", "-d", str(mesh.overlay), "-m", "ipvs", "--ipvs", "-j", "SNAT",
            "--to-source", str(ingress))  # fmt: skip


def keepalived_config(lab: Lab, node: str) -> str:
    """keepalived as health checker only, inside the ingress namespace: one IPVS firewall-mark
    service per published port, its real servers every task of the swarm on the target port."""
    mesh = lab.mesh
    lines = [
        "# Written by labkit from the lab file; labkit provision rewrites it.",
        "# keepalived runs inside the ingress namespace: the IPVS table it keeps is the namespace's.",
        "global_defs {",
        f"    router_id {node}-{SBOX}",
        "    lvs_flush",
        "}",
        "",
    ]
    for p in mesh.publish:
        body = [
            "delay_loop 1",
            f"lb_algo {mesh.scheduler}",
            f"lb_kind {LB_KIND[Forwarding.masq]}",
            "protocol TCP",
            "# a task joins only after a good check",
            "alpha",
        ]
        for name, node_name in lab.task_nodes.items():
            address = lab.nodes[node_name].tasks[name]
            body += [
                f"real_server {address} {p.target_port} {{",
                "    weight 1",
                *_indent(_check(Check.http, name)),
                "}",
            ]
        lines += [f"virtual_server fwmark {p.fwmark} {{", *_indent(body), "}", ""]
    return "\n".join(lines)


UNIT_TEXT = (
    "# Written by labkit: swarm's manager, as far as the routing mesh needs one: the IPVS services\n"
    f"# of the ingress namespace, with a health check of every task.\n"
    "[Unit]\n"
    f"Description=labkit ingress: keepalived's health checker inside the namespace {SBOX}\n"
    "After=network.target\n"
    "\n"
    "[Service]\n"
    f"ExecStart=/usr/sbin/ip netns exec {SBOX} /usr/sbin/keepalived --dont-fork --log-console --check"
    f" --use-file {KEEPALIVED_CONF} --pid /run/{UNIT}.pid --checkers_pid /run/{UNIT}-checkers.pid\n"
    "ExecReload=/bin/kill -HUP $MAINPID\n"
    "\n"
    "[Install]\n"
    "WantedBy=multi-user.target\n"
)
