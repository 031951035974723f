"""The lab file's types: a Lab and what it is made of, as pydantic models.

Its structure is checked here (types, ranges, unknown fields); what must hold between its parts
is checked in problems.py; load.py reads a file into a Lab and reports every problem at once.
"""

from __future__ import annotations

import re
import zlib
from enum import Enum
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, IPvAnyAddress, field_validator, model_validator

from labkit.errors import LabkitError


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class LabError(LabkitError):
    """A lab file that cannot be used: each problem (`field: what is wrong. The fix`) on a line
    of its own, naming the file."""

    def __init__(self, problems: str | list[str], source: str = "") -> None:
        self.source = source
        # Names from the file are quoted into the messages: a newline in one must not split a line.
        self.problems = [_printable(p) for p in ([problems] if isinstance(problems, str) else problems)]
        super().__init__("\n".join(f"{source}: {p}" if source else p for p in self.problems))


class Role(str, Enum):
    director = "director"
    real_server = "real_server"
    client = "client"
    # A node of a Docker swarm's routing mesh (seed 001): a director in its ingress namespace
    # and the host of its tasks (the real servers), all at once.
    swarm_node = "swarm_node"


class Forwarding(str, Enum):
    """LVS forwarding methods, named as ipvsadm names them."""

    masq = "masq"  # NAT: -m, listed as "Masq"
    tun = "tun"  # IP-in-IP tunnel: -i, listed as "Tunnel"
    route = "route"  # direct routing: -g, listed as "Route"

    @property
    def flag(self) -> str:
        return {"masq": "-m", "tun": "-i", "route": "-g"}[self.value]

    @property
    def listed_as(self) -> str:
        return {"masq": "Masq", "tun": "Tunnel", "route": "Route"}[self.value]


class Tunnel(str, Enum):
    """How a TUN director wraps each request for the real server (ipvsadm --tun-type)."""

    ipip = "ipip"  # IP-in-IP (IP protocol 4), every kernel: the real server unwraps it on tunl0
    gue = "gue"  # Generic UDP Encapsulation: IP-in-IP inside UDP to tunnel_port (Linux 5.2+), unwrapped by fou
    gre = "gre"  # GRE (IP protocol 47, Linux 5.3+): the real server unwraps it on gre0

    @property
    def since(self) -> tuple[int, int]:
        """The first Linux release whose IPVS sends this type."""
        return {"ipip": (2, 6), "gue": (5, 2), "gre": (5, 3)}[self.value]  # ipip: IPVS entered mainline in 2.6

    @property
    def device(self) -> str:
        """Where the real server's kernel hands over the unwrapped request: GUE's payload is
        IP-in-IP, so it ends on tunl0 too."""
        return "gre0" if self == Tunnel.gre else "tunl0"


class PortMapping(str, Enum):
    """How the real servers of a TUN service map the VIP's port to theirs."""

    dnat = "dnat"  # each real server's firewall rewrites VIP:port to VIP:its port (seed 003)


class Protocol(str, Enum):
    tcp = "tcp"
    udp = "udp"

    @property
    def flag(self) -> str:
        return {"tcp": "-t", "udp": "-u"}[self.value]


class Failover(str, Enum):
    """How the directors share the work."""

    keepalived = "keepalived"  # a VRRP pair: keepalived moves the VIPs and runs the IPVS services
    none = "none"  # one director, rules pushed with ipvsadm, as the seeds teach it


class Check(str, Enum):
    """keepalived's health check of each real server."""

    http = "http"  # HTTP_GET of / answered with 200
    tcp = "tcp"  # TCP_CHECK: the port accepts a connection
    udp = "udp"  # UDP_CHECK: a datagram to the port is answered with the real server's name
    none = "none"  # never taken out


class Scheduler(str, Enum):
    """Every scheduler ipvsadm(8) offers, by the name ipvsadm gives it."""

    rr = "rr"
    wrr = "wrr"
    lc = "lc"
    wlc = "wlc"
    lblc = "lblc"
    lblcr = "lblcr"
    dh = "dh"
    sh = "sh"
    sed = "sed"
    nq = "nq"
    mh = "mh"
    fo = "fo"
    ovf = "ovf"

    def __str__(self) -> str:
        return self.value


SCHEDULERS = tuple(s.value for s in Scheduler)

HOSTNAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
# Network names become interface names in the guests (`ip -br a` shows `ext`, `int`).
IFNAME = re.compile(r"^[a-z][a-z0-9]{0,14}$")
RESERVED_IFNAMES = {"lo", "eth0", "tunl0", "gre0", "ip_vs"}

Port = Annotated[int, Field(ge=1, le=65535)]

# A VIP or a real server: IPv4 or IPv6, one family per service.
Address = IPvAnyAddress


def host_port(address: object, port: int) -> str:
    """`address:port` as ipvsadm, curl and URLs write it: an IPv6 address in brackets."""
    return f"[{address}]:{port}" if ":" in str(address) else f"{address}:{port}"


def host_cidr(address: IPv4Address | IPv6Address) -> str:
    """The address alone, as a prefix: /32 or /128."""
    return f"{address}/{address.max_prefixlen}"


def _ipv4_only(kind: str, where: str):
    """An IPv6 value under an IPv4 key is told where it goes, rather than that it is no IPv4 value."""

    def check(value: object) -> object:
        try:
            version = ip_network(str(value), strict=False).version
        except ValueError:
            return value  # not an address at all: the IPv4 type says so
        if version == 6:
            raise ValueError(f"{value} is an IPv6 {kind}, and this key holds IPv4. {where}")
        return value

    return BeforeValidator(check)


IPv4Only = Annotated[
    IPv4Address, _ipv4_only("address", "Give it under the node's addresses6:, by the same network name")
]
IPv4OnlyNetwork = Annotated[IPv4Network, _ipv4_only("prefix", "Give it under networks6:, by the same network name")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RealServer(Strict):
    address: Address
    port: Port | None = None  # defaults to the service's port
    weight: Annotated[int, Field(ge=0, le=65535)] = 1


class SorryServer(Strict):
    address: Address
    port: Port | None = None  # defaults to the service's port


def service_key(protocol: Protocol | None, vip: object, port: int | None, fwmark: int | None) -> str:
    """How labkit names a service everywhere (lab file, `labkit show`, --service): `tcp VIP:port`,
    or `fwm MARK` for a firewall-mark service; an IPv6 VIP in brackets: `tcp [fd00:55::100]:80`."""
    return f"fwm {fwmark}" if fwmark is not None else f"{protocol.value} {host_port(vip, port)}"


class VirtualService(Strict):
    vip: Address | None = None
    port: Port = 80
    # A firewall-mark service (Docker swarm's pattern): the directors' firewall marks packets
    # for each of these VIPs on `port`, and one IPVS service schedules everything marked.
    fwmark: Annotated[int, Field(ge=1, le=2**32 - 1)] | None = None
    vips: list[Address] = []
    protocol: Protocol = Protocol.tcp
    scheduler: Scheduler = Scheduler.rr
    forwarding: Forwarding
    persistence: Annotated[int, Field(ge=1)] | None = None  # seconds, ipvsadm -p
    # UDP only: schedule every datagram on its own (ipvsadm -o), not every client port once.
    one_packet: bool = False
    check: Check = Check.http  # failover: keepalived only; a UDP service's default is udp
    sorry_server: SorryServer | None = None  # answers when every real server is down (keepalived)
    real_servers: list[RealServer] = Field(min_length=1)
    # TUN only: the encapsulation (default ipip), GUE's UDP port, and how real servers map ports.
    tunnel: Tunnel | None = None
    tunnel_port: Port | None = None
    port_mapping: PortMapping | None = None

    @model_validator(mode="before")
    @classmethod
    def _check_fits_protocol(cls, data: object) -> object:
        # A UDP service has no HTTP to ask: unless told otherwise, it is checked with a datagram.
        if isinstance(data, dict) and "check" not in data and data.get("protocol") == Protocol.udp.value:
            return {**data, "check": Check.udp.value}
        return data

    @field_validator("scheduler", mode="before")
    @classmethod
    def _known_scheduler(cls, value: object) -> object:
        if value not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {value!r}. ipvsadm offers: {' '.join(SCHEDULERS)}")
        return value

    def real_port(self, rs: RealServer) -> int:
        return rs.port if rs.port is not None else self.port

    @property
    def tunnel_type(self) -> Tunnel | None:
        """The encapsulation of a TUN service (ipip unless the lab file says otherwise)."""
        return (self.tunnel or Tunnel.ipip) if self.forwarding == Forwarding.tun else None

    def listed_port(self, rs: RealServer) -> int:
        """The real server's port as IPVS keeps it. Only NAT rewrites ports, so ipvsadm and
        keepalived give every other real server of an address service the VIP's port (seed
        003 adds RIP:80 to VIP:8099 and ipvsadm lists RIP:8099)."""
        return self.port if self.forwarding != Forwarding.masq and self.fwmark is None else self.real_port(rs)

    @property
    def addresses(self) -> list[IPv4Address | IPv6Address]:
        """The VIPs the service answers on."""
        return list(self.vips) if self.fwmark else [self.vip]

    @property
    def ipv6(self) -> bool:
        """An IPv6 service: its VIPs and real servers are IPv6 (one family per service)."""
        return any(vip is not None and vip.version == 6 for vip in self.addresses)

    @property
    def key(self) -> str:
        """As ipvsadm names the service: `tcp VIP:port`, or `fwm MARK`."""
        return service_key(self.protocol, self.vip, self.port, self.fwmark)


# A container's name also names its network namespace, its systemd unit and, with a prefix, its
# veth (`veth-web0`): an interface name has at most 15 characters.
CONTAINER_NAME = re.compile(r"^[a-z][a-z0-9]{0,9}$")


class Bridge(Strict):
    """A node's container bridge, wired as Docker wires docker0: the bridge holds the gateway
    address, and the kernel's route for its range (`172.17.0.0/16 dev docker0 scope link`) is
    how the node reaches its containers."""

    name: str = "docker0"
    address: IPv4Interface = IPv4Interface("172.17.0.1/16")


class Published(Strict):
    """A port the node publishes for one of its containers (`docker run -p 18280:80`): the node's
    firewall rewrites requests to any of its addresses on `port` to the container's `container_port`."""

    port: Port
    container: str
    container_port: Port = 80
    protocol: Protocol = Protocol.tcp


class MeshPort(Strict):
    """A port the swarm publishes on every node (`docker service create -p 8080:80`): each
    node's DOCKER-INGRESS chain sends it to the ingress namespace, which marks it `fwmark` and
    balances it over the tasks' `target_port`."""

    port: Port
    target_port: Port = 80
    fwmark: Annotated[int, Field(ge=1, le=2**32 - 1)] = 256  # Docker numbers its marks from 256


class Mesh(Strict):
    """Docker swarm's routing mesh (seed 001), wired as Docker wires it, without Docker: the
    ingress overlay network (a VXLAN between the nodes' lab addresses) and, on each node, the
    docker_gwbridge bridge that leads to the ingress namespace."""

    publish: list[MeshPort] = Field(min_length=1)
    overlay: IPv4OnlyNetwork = IPv4Network("10.255.0.0/16")  # Docker's ingress network
    vni: Annotated[int, Field(ge=1, le=2**24 - 1)] = 4096  # the VXLAN id Docker gives the ingress network
    # docker_gwbridge holds the gateway; the ingress namespace's leg on it is the next address.
    gwbridge: IPv4Interface = IPv4Interface("172.18.0.1/16")
    scheduler: Scheduler = Scheduler.rr

    @property
    def sbox_address(self) -> IPv4Address:
        """The ingress namespace's address on docker_gwbridge, where DOCKER-INGRESS sends the ports."""
        return self.gwbridge.ip + 1


class Node(Strict):
    role: Role
    addresses: dict[str, IPv4Only] = Field(min_length=1)
    # IPv6 addresses on some of the same networks (each also in the lab's networks6).
    addresses6: dict[str, IPv6Address] = {}
    # Containers (seed 000): each a network namespace with one web server, behind the bridge.
    bridge: Bridge | None = None
    containers: dict[str, IPv4Only] = {}
    publish: list[Published] = []
    # The routing mesh (seed 001): the ingress namespace's address on the overlay, and the tasks
    # (a namespace each, with one web server) on the overlay.
    ingress: IPv4Only | None = None
    tasks: dict[str, IPv4Only] = {}

    def published(self, port: int, protocol: Protocol = Protocol.tcp) -> str | None:
        """The container behind one of the node's published ports."""
        return next((p.container for p in self.publish if p.port == port and p.protocol == protocol), None)

    def all_addresses(self) -> list[IPv4Address | IPv6Address]:
        return [*self.addresses.values(), *self.addresses6.values()]


NETEM_DELAY = re.compile(r"^(\d+(\.\d+)?)(us|ms|s)$")
NETEM_LOSS = re.compile(r"^(\d+(\.\d+)?)%$")
NETEM_RATE = re.compile(r"^(\d+(\.\d+)?)(bit|kbit|mbit|gbit)$")


class Impairment(Strict):
    """netem on one network's links (tc qdisc ... netem), as tc writes its values."""

    delay: str | None = None  # each way: "20ms"
    loss: str | None = None  # "1%"
    rate: str | None = None  # "10mbit"

    @field_validator("delay", "loss", "rate", mode="before")
    @classmethod
    def _netem_value(cls, value: object, info) -> object:
        text = str(value).strip() if value is not None else None
        if text is None:
            return None
        how = {
            "delay": (NETEM_DELAY, "a time of 0 or more, such as 20ms (us, ms or s)"),
            "loss": (NETEM_LOSS, "a share from 0% to 100%, such as 1%"),
            "rate": (NETEM_RATE, "a rate such as 10mbit (bit, kbit, mbit or gbit)"),
        }[info.field_name]
        found = how[0].match(text)
        if not found or (info.field_name == "loss" and float(found[1]) > 100):
            raise ValueError(f"{info.field_name} {text!r}: give {how[1]}")
        return text

    def netem(self) -> list[str]:
        """The words after `netem` in tc."""
        words = []
        for name in ("delay", "loss", "rate"):
            if getattr(self, name) is not None:
                words += [name, getattr(self, name)]
        return words

    def handle(self) -> str:
        """The qdisc handle labkit gives this impairment ("1a2b:", from 1: to 7fff:), made from its
        values: tc keeps it, so a check tells the lab file's netem from another on the same link."""
        return f"{zlib.crc32(' '.join(self.netem()).encode()) % 0x7FFF + 1:x}:"


class Lab(Strict):
    name: str
    description: str = ""
    memory: Annotated[int, Field(ge=256)] = 512  # MiB per VM
    cpus: Annotated[int, Field(ge=1)] = 1
    failover: Failover = Failover.keepalived
    # NAT with keepalived: the floating address the real servers route replies through. It moves
    # with the VIPs, so replies always reach the director that rewrote the request.
    gateway: IPv4Address | None = None
    networks: dict[str, IPv4OnlyNetwork] = Field(min_length=1)
    # IPv6 prefixes of some of these networks, by the same names: the guests' interfaces carry both.
    networks6: dict[str, IPv6Network] = {}
    nodes: dict[str, Node]
    # A routing mesh's IPVS services live in its ingress namespaces (mesh:); any other lab has one or more.
    services: list[VirtualService] = []
    mesh: Mesh | None = None
    # netem on a network's links (each node's interface on it): delay, loss, rate
    impair: dict[str, Impairment] = {}

    @model_validator(mode="after")
    def _impaired_networks_exist(self) -> Lab:
        unknown = [net for net in self.impair if net not in self.networks]
        if unknown:
            raise ValueError(
                f"impair: there is no network {unknown[0]!r}. Impair one of the lab's networks ({', '.join(self.networks)})"
            )
        return self

    # Derived views. Order follows the lab file, so lb0 (the first director) is the active one.

    def nodes_with(self, role: Role) -> list[str]:
        return [name for name, node in self.nodes.items() if node.role == role]

    @property
    def directors(self) -> list[str]:
        return self.nodes_with(Role.director)

    @property
    def active_director(self) -> str:
        return self.directors[0]

    @property
    def ha(self) -> bool:
        return self.failover == Failover.keepalived

    @property
    def vips(self) -> list[IPv4Address]:
        return list(dict.fromkeys(vip for s in self.services for vip in s.addresses))

    @property
    def nat(self) -> bool:
        return any(s.forwarding == Forwarding.masq for s in self.services)

    @property
    def nat4(self) -> bool:
        return any(s.forwarding == Forwarding.masq and not s.ipv6 for s in self.services)

    @property
    def nat6(self) -> bool:
        return any(s.forwarding == Forwarding.masq and s.ipv6 for s in self.services)

    def reply_gateway(self, real_server: str) -> IPv4Address | None:
        """Where a NAT real server sends replies: the floating gateway of a keepalived pair,
        or the active director's address on a network they share."""
        if not any(s.forwarding == Forwarding.masq and not s.ipv6 for s in self.services_of(real_server)):
            return None
        if self.ha:
            return self.gateway
        director = self.nodes[self.active_director].addresses
        return next(director[n] for n in self.nodes[real_server].addresses if n in director)

    def reply_gateway6(self, real_server: str) -> IPv6Address | None:
        """Where a real server of an IPv6 NAT service sends replies: the (single) active
        director's IPv6 address on a network they share."""
        if not any(s.forwarding == Forwarding.masq and s.ipv6 for s in self.services_of(real_server)):
            return None
        director = self.nodes[self.active_director].addresses6
        return next((director[n] for n in self.nodes[real_server].addresses6 if n in director), None)

    @property
    def real_servers(self) -> list[str]:
        return self.nodes_with(Role.real_server)

    @property
    def clients(self) -> list[str]:
        return self.nodes_with(Role.client)

    def node_at(self, address: IPv4Address | IPv6Address) -> str | None:
        for name, node in self.nodes.items():
            if address in node.all_addresses():
                return name
        return None

    @property
    def swarm_nodes(self) -> list[str]:
        return self.nodes_with(Role.swarm_node)

    @property
    def task_nodes(self) -> dict[str, str]:
        """Task -> the swarm node it runs on."""
        return {t: name for name, node in self.nodes.items() for t in node.tasks}

    @property
    def container_nodes(self) -> dict[str, str]:
        """Container -> the node it runs on."""
        return {c: name for name, node in self.nodes.items() for c in node.containers}

    def server_at(self, address: IPv4Address | IPv6Address, port: int, protocol: Protocol = Protocol.tcp) -> str | None:
        """What answers a real server's address and port: a container on the active director's
        bridge, the container behind a node's published port, or the node itself. Every node
        has a bridge of its own, as with Docker, so a container address is the director's."""
        if self.mesh is not None and address in self.mesh.overlay:  # a task, on the overlay
            return next((t for t, n in self.task_nodes.items() if self.nodes[n].tasks[t] == address), None)
        director = self.nodes[self.active_director] if self.directors else None
        if director is not None and director.bridge is not None and address in director.bridge.address.network:
            return next((c for c, a in director.containers.items() if a == address), None)
        node = self.node_at(address)
        if node is not None and (container := self.nodes[node].published(port, protocol)) is not None:
            return container
        return node

    def network_of(self, address: IPv4Address | IPv6Address) -> str | None:
        for name, net in (self.networks6 if address.version == 6 else self.networks).items():
            if address in net:
                return name
        return None

    def shared_networks(self, a: str, b: str) -> list[str]:
        return [n for n in self.nodes[a].addresses if n in self.nodes[b].addresses]

    def services_of(self, real_server: str) -> list[VirtualService]:
        return [s for s in self.services if any(self.node_at(rs.address) == real_server for rs in s.real_servers)]

    def is_called(self, svc: VirtualService, rs: RealServer, name: str) -> bool:
        """Whether a service's real server is `name`: its node, or the container that answers it
        (as show and bench name it)."""
        return name in (self.node_at(rs.address), self.server_at(rs.address, svc.real_port(rs), svc.protocol))

    def require_vip(self) -> None:
        """Raises, for a routing mesh, what a command that needs a VIP or a director says."""
        if self.mesh is not None:
            raise LabkitError(
                f"the lab {self.name} is a routing mesh: its IPVS services live in each node's ingress namespace, "
                f"with no VIP to ask. See them with: labkit show {self.name}; follow a request with: labkit trace {self.name}"
            )

    def service(self, key: str | None, udp: bool = False) -> VirtualService:
        """The service named by its key (as `labkit status` lists it), or the first TCP one;
        UDP services only where `udp` (a load or a page needs TCP)."""
        self.require_vip()
        usable = (Protocol.tcp, Protocol.udp) if udp and key is not None else (Protocol.tcp,)
        svc = next((s for s in self.services if key in (None, s.key) and s.protocol in usable), None)
        if svc is None:
            raise LabkitError(
                f"the lab {self.name} has no {' or '.join(p.value.upper() for p in usable)} service {key!r}. "
                f"Its services: {', '.join(s.key for s in self.services)}"
            )
        return svc


def mesh_network(lab: Lab) -> str | None:
    """The lab network the swarm nodes all share: the overlay's VXLAN runs between their addresses there."""
    nodes = lab.swarm_nodes
    if not nodes:
        return None
    return next((n for n in lab.nodes[nodes[0]].addresses if all(n in lab.nodes[o].addresses for o in nodes)), None)


def with_weight(lab: Lab, real_server: str, weight: int, service: str | None = None) -> Lab:
    """The lab with a real server's weight changed in every service (or the one named by its
    key, e.g. "tcp 192.168.55.100:80") that lists it."""
    lab.require_vip()
    # each real server's node, and what show names it (a container, for one)
    named = {lab.server_at(rs.address, s.real_port(rs), s.protocol) for s in lab.services for rs in s.real_servers}
    known = sorted((named | set(lab.real_servers)) - {None})
    if real_server not in known:
        raise LabError(f"{real_server!r} is not a real server of the lab {lab.name}. Real servers: {', '.join(known)}")
    if not 0 <= weight <= 65535:
        raise LabError(f"weight {weight} is out of range. Use 0 (drain) to 65535")
    keys = [s.key for s in lab.services if any(lab.is_called(s, rs, real_server) for rs in s.real_servers)]
    if service is not None and service not in keys:
        raise LabError(f"{real_server} is in no service {service!r}. Its services: {', '.join(keys)}")
    data = lab.model_dump(mode="json", exclude_defaults=True)
    for svc, raw in zip(lab.services, data["services"]):
        if service in (None, svc.key):
            for rs, raw_rs in zip(svc.real_servers, raw["real_servers"]):
                if lab.is_called(svc, rs, real_server):
                    raw_rs["weight"] = weight
    return Lab.model_validate(data)
