"""The lab file: `labs/<name>/lab.yaml`, loaded and validated into a Lab.

Everything after this module trusts a Lab: the checks here are the only place where a
user's mistake is caught, so each one names the file, the field and the fix.
"""

from __future__ import annotations

import re
from enum import Enum
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Annotated

import yaml
from labkit.errors import LabkitError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class LabError(LabkitError):
    """A lab file that cannot be used, with the reason and the fix."""


class Role(str, Enum):
    director = "director"
    real_server = "real_server"
    client = "client"


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
    none = "none"  # never taken out


# Every scheduler ipvsadm(8) offers.
SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf")

HOSTNAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
# Network names become interface names in the guests (`ip -br a` shows `ext`, `int`).
IFNAME = re.compile(r"^[a-z][a-z0-9]{0,14}$")
RESERVED_IFNAMES = {"lo", "eth0", "tunl0", "ip_vs"}

Port = Annotated[int, Field(ge=1, le=65535)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RealServer(Strict):
    address: IPv4Address
    port: Port | None = None  # defaults to the service's port
    weight: Annotated[int, Field(ge=0, le=65535)] = 1


class SorryServer(Strict):
    address: IPv4Address
    port: Port | None = None  # defaults to the service's port


class VirtualService(Strict):
    vip: IPv4Address | None = None
    port: Port = 80
    # A firewall-mark service (Docker swarm's pattern): the directors' firewall marks packets
    # for each of these VIPs on `port`, and one IPVS service schedules everything marked.
    fwmark: Annotated[int, Field(ge=1, le=2**32 - 1)] | None = None
    vips: list[IPv4Address] = []
    protocol: Protocol = Protocol.tcp
    scheduler: str = "rr"
    forwarding: Forwarding
    persistence: Annotated[int, Field(ge=1)] | None = None  # seconds, ipvsadm -p
    check: Check = Check.http  # failover: keepalived only
    sorry_server: SorryServer | None = None  # answers when every real server is down (keepalived)
    real_servers: list[RealServer] = Field(min_length=1)

    def real_port(self, rs: RealServer) -> int:
        return rs.port if rs.port is not None else self.port

    @property
    def addresses(self) -> list[IPv4Address]:
        """The VIPs the service answers on."""
        return list(self.vips) if self.fwmark else [self.vip]

    @property
    def key(self) -> str:
        """As ipvsadm names the service: `tcp VIP:port`, or `fwm MARK`."""
        return f"fwm {self.fwmark}" if self.fwmark else f"{self.protocol.value} {self.vip}:{self.port}"


class Node(Strict):
    role: Role
    addresses: dict[str, IPv4Address] = Field(min_length=1)


class Lab(Strict):
    name: str
    description: str = ""
    memory: Annotated[int, Field(ge=256)] = 512  # MiB per VM
    cpus: Annotated[int, Field(ge=1)] = 1
    failover: Failover = Failover.keepalived
    # NAT with keepalived: the floating address the real servers route replies through. It moves
    # with the VIPs, so replies always reach the director that rewrote the request.
    gateway: IPv4Address | None = None
    networks: dict[str, IPv4Network] = Field(min_length=1)
    nodes: dict[str, Node]
    services: list[VirtualService] = Field(min_length=1)

    @model_validator(mode="after")
    def _semantics(self) -> Lab:
        for problem in semantic_problems(self):
            raise ValueError(problem)
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

    def reply_gateway(self, real_server: str) -> IPv4Address | None:
        """Where a NAT real server sends replies: the floating gateway of a keepalived pair,
        or the active director's address on a network they share."""
        if not any(s.forwarding == Forwarding.masq for s in self.services_of(real_server)):
            return None
        if self.ha:
            return self.gateway
        director = self.nodes[self.active_director].addresses
        return next(director[n] for n in self.nodes[real_server].addresses if n in director)

    @property
    def real_servers(self) -> list[str]:
        return self.nodes_with(Role.real_server)

    @property
    def clients(self) -> list[str]:
        return self.nodes_with(Role.client)

    def node_at(self, address: IPv4Address) -> str | None:
        for name, node in self.nodes.items():
            if address in node.addresses.values():
                return name
        return None

    def network_of(self, address: IPv4Address) -> str | None:
        for name, net in self.networks.items():
            if address in net:
                return name
        return None

    def shared_networks(self, a: str, b: str) -> list[str]:
        return [n for n in self.nodes[a].addresses if n in self.nodes[b].addresses]

    def services_of(self, real_server: str) -> list[VirtualService]:
        return [
            s for s in self.services
            if any(self.node_at(rs.address) == real_server for rs in s.real_servers)
        ]


def semantic_problems(lab: Lab):
    """Yield what is wrong with a structurally valid lab, as 'field: problem. fix' strings."""
    if not HOSTNAME.match(lab.name):
        yield f"name: {lab.name!r} is not a plain name. Use lower-case letters, digits and '-'"
    for net in lab.networks:
        if not IFNAME.match(net) or net in RESERVED_IFNAMES:
            yield (f"networks.{net}: a network name becomes an interface name in the guests. "
                   "Use 1-15 lower-case letters and digits, not lo, eth0 or tunl0")
    seen: dict[IPv4Address, str] = {}
    for name, node in lab.nodes.items():
        if not HOSTNAME.match(name):
            yield (f"nodes.{name}: {name!r} is not a plain hostname. "
                   "Use lower-case letters, digits and '-', starting with a letter (e.g. lb0)")
        for net, addr in node.addresses.items():
            field = f"nodes.{name}.addresses.{net}"
            if net not in lab.networks:
                yield f"{field}: there is no network {net!r}. Declare it under networks: ({', '.join(lab.networks)})"
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
    if not directors:
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
        if svc.scheduler not in SCHEDULERS:
            yield f"{field}.scheduler: unknown scheduler {svc.scheduler!r}. ipvsadm offers: {' '.join(SCHEDULERS)}"
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
        addresses: set[IPv4Address] = set()
        for j, rs in enumerate(svc.real_servers):
            rs_field = f"{field}.real_servers[{j}]"
            if rs.address in addresses:
                yield f"{rs_field}: {rs.address} is listed twice in this service. List each real server once"
            addresses.add(rs.address)
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


def _field(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_lab(text: str, source: str) -> Lab:
    """Validate lab text; `source` names the file in errors."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise LabError(f"{source}:{where} is not valid YAML ({getattr(exc, 'problem', exc)}). Fix the syntax") from None
    if not isinstance(data, dict):
        raise LabError(f"{source}: a lab file is a YAML mapping with networks, nodes and services") from None
    try:
        return Lab.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        msg = err["msg"].removeprefix("Value error, ")
        field = _field(tuple(err["loc"]))
        if err["type"] == "extra_forbidden":
            msg = "unknown field. Check its spelling against labs/nat/lab.yaml"
        elif err["type"] == "missing":
            msg = "is required"
        raise LabError(f"{source}: {field + ': ' if field else ''}{msg}{more}") from None


def with_weight(lab: Lab, real_server: str, weight: int, service: str | None = None) -> Lab:
    """The lab with a real server's weight changed in every service (or the one named by its
    key, e.g. "tcp 192.168.55.100:80") that lists it."""
    if lab.nodes.get(real_server) is None or lab.nodes[real_server].role != Role.real_server:
        raise LabError(f"{real_server!r} is not a real server of the lab {lab.name}. "
                       f"Real servers: {', '.join(lab.real_servers)}")
    if not 0 <= weight <= 65535:
        raise LabError(f"weight {weight} is out of range. Use 0 (drain) to 65535")
    keys = [s.key for s in lab.services_of(real_server)]
    if service is not None and service not in keys:
        raise LabError(f"{real_server} is in no service {service!r}. Its services: {', '.join(keys)}")
    data = lab.model_dump(mode="json", exclude_defaults=True)
    for svc, raw in zip(lab.services, data["services"]):
        if service in (None, svc.key):
            for rs, raw_rs in zip(svc.real_servers, raw["real_servers"]):
                if lab.node_at(rs.address) == real_server:
                    raw_rs["weight"] = weight
    return Lab.model_validate(data)


def load_lab(path: Path) -> Lab:
    try:
        text = path.read_text()
    except OSError as exc:
        raise LabError(f"{path}: cannot read the lab file ({exc.strerror})") from None
    return parse_lab(text, str(path))
