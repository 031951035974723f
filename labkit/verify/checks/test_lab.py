"""What a working LVS lab looks like from inside, node by node and from the client.

The expectations are written here from what each forwarding method needs (the LVS docs and
the seed walkthroughs), not read back from the plan that configured the lab.
"""

from __future__ import annotations

import re
import shlex
import time
from collections import Counter
from ipaddress import ip_address

import pytest

from labkit.labfile import Forwarding, Lab, VirtualService
from labkit.labfile.model import host_cidr, host_port
from labkit.operate.trace import read_capture, start_capture
from labkit.plan import containers, ipvs, keepalived
from labkit.render.vagrantfile import interfaces
from labkit.verify.checks import scheduling, state
from labkit.verify.checks.plugin import once_per_service
from labkit.verify.checks.table import counters as held_counters
from labkit.verify.checks.table import recreate, settle

# ---- every node ----------------------------------------------------------------------------


def test_node_is_there(node, absent):
    """The node's VM runs, its NICs are on their networks and its SSH answers. A node that is not
    there fails here, once, with the reason and the repair; the checks that need it are not run."""
    assert node not in absent, f"{node} {absent[node]}"


def test_hostname(node_state, node):
    seen = state.sysctls(node_state[node]["sysctls"]).get("kernel.hostname")
    assert seen == node, f"expected hostname {node}, saw {seen}"


def test_versions(node_state, lab: Lab, node, figure):
    """What the run ran on, kept with its figures: the node's kernel, and on directors the
    ipvsadm and keepalived that drive its IPVS (a regression is a kernel's, or a tool's)."""
    kernel = state.sysctls(node_state[node]["sysctls"]).get("kernel.osrelease", "")
    assert re.fullmatch(r"\d+\.\d+\S*", kernel), f"the kernel release (uname -r) reads {kernel!r}"
    figure(f"{node}_kernel", kernel)
    installed = state.packages(node_state[node].get("packages", ""))
    for package in state.DIRECTOR_PACKAGES if node in lab.directors else ():
        version = installed.get(package)
        assert version, f"{package} is not installed on {node}"
        figure(f"{node}_{package}", version)


def test_addresses(node_state, lab: Lab, node):
    """Each address of the lab file on its interface, IPv6 ones too (usable: not tentative)."""
    seen = node_state[node]["addresses"]
    given = [(net, f"{addr}/{lab.networks[net].prefixlen}") for net, addr in lab.nodes[node].addresses.items()]
    given += [(net, f"{addr}/{lab.networks6[net].prefixlen}") for net, addr in lab.nodes[node].addresses6.items()]
    for net, cidr in given:
        line = next((line for line in seen.splitlines() if line.split()[1] == net and f" {cidr} " in line), None)
        assert line, f"{node}: expected {cidr} on interface {net}, saw:\n{seen}"
        assert "tentative" not in line and "dadfailed" not in line, f"{node}: {cidr} is not usable yet: {line}"


# ---- real servers ----------------------------------------------------------------------------


def sysctl(node_state, node: str, key: str) -> int:
    """The sysctl's value, as read before the checks (state.py)."""
    value = state.sysctls(node_state[node]["sysctls"]).get(key, "not read")
    assert value.isdigit(), f"{node}: {key} could not be read: {value}"
    return int(value)


def test_real_server_sysctls(node_state, lab: Lab, vip_real_server):
    node = vip_real_server
    # The VIP is configured locally, but only the director may answer ARP for it.
    arp_ignore = sysctl(node_state, node, "net.ipv4.conf.all.arp_ignore")
    assert arp_ignore == 1, (
        f"expected arp_ignore 1 (answer ARP only for the asking interface's addresses), saw {arp_ignore}"
    )
    arp_announce = sysctl(node_state, node, "net.ipv4.conf.all.arp_announce")
    assert arp_announce == 2, f"expected arp_announce 2 (never the VIP as ARP source), saw {arp_announce}"
    for dev in state.tunnel_devices(lab, vip_real_server):
        # The unwrapped request arrives on tunl0 (gre0 for GRE) but the route back to the client
        # leaves by another interface: reverse-path filtering (the larger of all and it) must be off.
        effective = max(sysctl(node_state, node, f"net.ipv4.conf.{name}.rp_filter") for name in ("all", dev))
        assert effective == 0, f"rp_filter on {dev} must be 0 (max of all and {dev}), saw {effective}"


def test_vip_on_real_server(node_state, lab: Lab, vip_real_server):
    read = node_state[vip_real_server]
    tunnels = set()
    for svc in lab.services_of(vip_real_server):
        # a tunnel ends on tunl0 (IP-in-IP, and GUE's IP-in-IP once out of UDP) or gre0 (GRE)
        dev = svc.tunnel_type.device if svc.tunnel_type else {Forwarding.route: "lo"}.get(svc.forwarding)
        if dev:
            seen = state.lines_of(read["addresses"], dev)
            for vip in svc.addresses:
                assert f" {host_cidr(vip)} " in seen, (
                    f"{vip_real_server}: expected VIP {host_cidr(vip)} on {dev}, saw: {seen}"
                )
        if svc.tunnel_type:
            tunnels.add(dev)
    for dev in sorted(tunnels):
        link = state.lines_of(read["links"], dev)
        assert "UP" in link, f"expected {dev} up, saw: {link}"


def test_route_to_client(node_state, lab: Lab, real_server):
    """NAT replies go back through the director; TUN and DR replies go straight to the client.
    The same for IPv6 services and the client's IPv6 address."""
    read = node_state[real_server]
    director = lab.nodes[lab.active_director]
    mine = lab.nodes[real_server]
    for ipv6 in (False, True):
        used = {s.forwarding for s in lab.services_of(real_server) if s.ipv6 == ipv6}
        if not used:
            continue
        if ipv6:  # IPv6 NAT has one director: its address on a network the real server is on
            gateway = next((a for n, a in director.addresses6.items() if n in mine.addresses6), None)
        else:  # a pair's floating gateway moves with the VIP; a single director is its own DIP
            gateway = lab.gateway if lab.ha else next(a for n, a in director.addresses.items() if n in mine.addresses)
        for client in lab.clients:
            for addr in (lab.nodes[client].addresses6 if ipv6 else lab.nodes[client].addresses).values():
                seen = read[state.route_name(addr)]
                if Forwarding.masq in used:
                    via = re.search(r" via (\S+)", seen)
                    assert via and via[1] == str(gateway), (
                        f"NAT: expected the route to {addr} via the director ({gateway}), saw: {seen}"
                    )
                else:
                    assert " via " not in seen, f"expected {addr} to be reached directly, saw: {seen}"


def test_nginx(node_state, lab: Lab, web_real_server):
    real_server = web_real_server
    read = node_state[real_server]
    assert read["nginx"] == "active", f"expected nginx active, systemctl says {read['nginx']}"
    ports = state.web_ports(lab, real_server)
    pages = dict(zip(ports, state.pages(read["pages"])))
    wrong = {f"http://{host_port(local, port)}/": page for (port, local), page in pages.items() if page != real_server}
    assert len(pages) == len(ports) and not wrong, (
        f"expected each port of {real_server} to answer {real_server}, saw: {wrong or pages}"
    )


# ---- directors ----------------------------------------------------------------------------


def test_port_reuse_is_scheduled_anew(node_state, bypassed_director):
    """DR and TUN: the director never sees the real server's half of a connection, so it keeps
    the entry in FIN_WAIT for 2 minutes. conn_reuse_mode bit 2 schedules a new connection that
    reuses such an entry's source port, so it cannot reach a server drained to weight 0."""
    mode = sysctl(node_state, bypassed_director, "net.ipv4.vs.conn_reuse_mode")
    assert mode & 2, f"expected conn_reuse_mode with bit 2 (FIN_WAIT entries rescheduled), saw {mode}"


def test_ip_forward(node_state, lab: Lab, nat_director):
    families = {"net.ipv4.ip_forward": lab.nat4, "net.ipv6.conf.all.forwarding": lab.nat6}
    for key in (key for key, needed in families.items() if needed):
        forward = sysctl(node_state, nat_director, key)
        assert forward == 1, f"NAT: the director must forward, expected {key} 1, saw {forward}"


def test_vip_on_active_director_only(node_state, lab: Lab, director):
    seen = node_state[director]["addresses"]
    for vip in lab.vips + ([lab.gateway] if lab.gateway else []):
        holds = f" {vip}/" in seen
        if director == lab.active_director:
            assert holds, f"the active director {director} must hold {vip}"
        else:
            assert not holds, f"the standby director {director} must not hold {vip}"


NEIGHBOUR_ANSWER = re.compile(r"^(\S+) > .*(?:Reply (\S+) is-at|neighbor advertisement, tgt is ([^,\s]+))", re.M)


@pytest.mark.vips
def test_only_the_active_director_answers_for_the_vips(hosts, lab: Lab):
    """The client forgets each VIP's neighbour entry and asks for it again (ARP, or an IPv6
    neighbour solicitation) while tcpdump listens: only the active director may answer. A real
    server holding the VIP on lo or tunl0 that answered would take requests away from IPVS (for
    IPv4 arp_ignore stops it; for IPv6 Linux answers only for the interface's own addresses)."""
    client = lab.clients[0]
    mac = {i.network: i.mac for i in interfaces(lab, lab.active_director)}
    vips: dict = {}  # each VIP once (services share them), with the first service on it to ask
    for svc in lab.services:
        for vip in svc.addresses:
            if lab.network_of(vip) in lab.nodes[client].addresses:
                vips.setdefault(vip, svc)
    assert vips, f"no VIP is on a network of the client {client}: it could not reach the lab's services"
    devices = sorted({lab.network_of(vip) for vip in vips})
    ask = "; ".join(
        f"ip neigh flush to {vip}; curl -sS -g -m 2 -o /dev/null {shlex.quote(url(svc, vip=vip))}"
        for vip, svc in vips.items()
    )
    # a second answer would come within milliseconds of the first: half a second is plenty
    script = f"{start_capture(devices, 'arp or icmp6', 'neigh')}; {ask}; sleep 0.5; {read_capture(devices, 'neigh')}"
    seen = hosts(client).run(f"sudo -n sh -c {shlex.quote(script)}").stdout
    answers: dict[str, set[str]] = {}
    for m in NEIGHBOUR_ANSWER.finditer(seen):
        answers.setdefault(m[2] or m[3], set()).add(m[1])
    for vip in vips:
        want = {mac[lab.network_of(vip)]}
        assert answers.get(str(vip)) == want, (
            f"{vip}: expected one answer, from {lab.active_director} ({want.pop()}), saw from "
            f"{answers.get(str(vip)) or 'no one'}:\n{seen}"
        )


def test_vrrp_state(node_state, lab: Lab, paired_director):
    """keepalived's own view: the preferred director is MASTER of every VRRP instance, the other BACKUP."""
    states = keepalived.vrrp_states(node_state[paired_director]["vrrp"])
    want = "MASTER" if paired_director == lab.active_director else "BACKUP"
    # counted from the lab file, not from the generator: one instance per VIP, and one for the
    # floating gateway of a NAT pair
    count = len(lab.vips) + (lab.gateway is not None)
    assert sorted(states.values()) == [want] * count, (
        f"{paired_director}: expected {count} VRRP instances, all {want}; keepalived says {states}"
    )


def test_connection_sync_daemon(node_state, lab: Lab, synced_director):
    """The active director sends its connections to the standby, which keeps them ready."""
    paired_director = synced_director
    seen = node_state[paired_director]["daemons"]
    daemons = [(d.role, d.interface, d.syncid) for d in ipvs.parse_daemons(seen)]
    want = (
        "master" if paired_director == lab.active_director else "backup",
        keepalived.sync_interface(lab),
        keepalived.SYNC_ID,
    )
    assert daemons == [want], (
        f"{paired_director}: expected the sync daemon (role, interface, syncid) {want}, ipvsadm says: {seen or 'none'}"
    )


def expected_listing(svc: VirtualService) -> ipvs.Service:
    """What `ipvsadm -L -n` lists for a service, from the lab file and the kernel's rule that only
    NAT maps ports: IPVS keeps the service's port for a tun or route destination whatever port
    the lab file gives it (ipvsadm accepts the other port and lists the VIP's). The listing is
    read with labkit's parser of ipvsadm's format (plan/ipvs.py), the one shared piece."""

    def port(rs) -> int | None:
        if svc.fwmark is not None:
            return rs.port if rs.port is not None else svc.port
        return (rs.port or svc.port) if svc.forwarding == Forwarding.masq else svc.port

    destinations = [ipvs.Destination(str(rs.address), port(rs), svc.forwarding, rs.weight) for rs in svc.real_servers]
    if svc.fwmark is not None:
        return ipvs.Service(None, None, None, svc.scheduler.value, svc.persistence, destinations,
                            fwmark=svc.fwmark, ops=svc.one_packet)  # fmt: skip
    return ipvs.Service(svc.protocol, str(svc.vip), svc.port, svc.scheduler.value, svc.persistence, destinations,
                        ops=svc.one_packet)  # fmt: skip


def test_ipvs_table(node_state, lab: Lab, director):
    """Both directors carry the lab's services. With keepalived a real server enters the table
    only after its first good health check ('alpha'), so a full table also says the checkers
    see every real server up."""
    listing = node_state[director]["ipvs"]
    seen = {s.key: s for s in ipvs.parse_list(listing)}
    for svc in lab.services:
        want = expected_listing(svc)
        assert want.key in seen, f"{director}: service {want.key} missing from ipvsadm -L -n:\n{listing}"
        got = seen.pop(want.key)
        assert (got.scheduler, got.persistence, got.ops) == (want.scheduler, want.persistence, want.ops), (
            f"{want.key}: expected scheduler {want.scheduler} persistence {want.persistence} one-packet {want.ops}, "
            f"saw {got.scheduler} {got.persistence} {got.ops}"
        )
        as_table = lambda s: sorted((d.address, d.port, d.forward, d.weight) for d in s.destinations)  # noqa: E731
        assert as_table(got) == as_table(want), (
            f"{want.key}: expected real servers (address, port, forward, weight) {as_table(want)}, saw {as_table(got)}"
        )
    assert not seen, f"{director}: services not in the lab file: {', '.join(seen)}"


# ---- from the client ----------------------------------------------------------------------


def url(svc: VirtualService, path: str = "/", vip=None) -> str:
    return f"http://{host_port(vip or svc.addresses[0], svc.port)}{path}"


def ask(hosts, lab: Lab, svc: VirtualService, count: int) -> list[str]:
    """`count` requests in a row from the client, each closed before the next, taking the
    service's VIPs in turn; the names of the real servers that answered, FAILED where none did."""
    vips = svc.addresses
    urls = [url(svc, vip=vips[i % len(vips)]) for i in range(count)]
    return state.pages(hosts(lab.clients[0]).run(state.ask_pages(urls)).stdout)


def paths(hosts, lab: Lab, svc: VirtualService) -> str:
    """Where the client's requests could have gone: its neighbour entries for the VIPs, and each
    director's VIPs and IPVS connection entries from the client."""
    client = lab.clients[0]
    vips = " ".join(str(v) for v in svc.addresses)
    lines = [f"{client}: " + hosts(client).run(f"for v in {vips}; do ip neigh show $v; done").stdout.strip()]
    for director in lab.directors:
        host = hosts(director)
        held = [str(v) for v in svc.addresses if host.run(f"ip -o addr show to {v}").stdout.strip()]
        entries = host.run("sudo -n ipvsadm -L -n -c").stdout.splitlines()
        mine = [e for e in entries if any(f" {host_port(a, '')}" in e for a in lab.nodes[client].all_addresses())]
        lines.append(f"{director} holds {held or 'no VIP'}; IPVS connections from {client}:")
        lines += mine[-20:]
    return "\n".join(lines)


def counters(hosts, lab: Lab, svc: VirtualService) -> ipvs.Stats:
    """The active director's packet counters for the service."""
    listing = hosts(lab.active_director).check_output("sudo -n ipvsadm -L -n --stats --exact")
    return ipvs.parse_stats(listing)[svc.key]


@pytest.fixture(scope="session")
def exchanged(hosts, lab: Lab):
    """exchanged(svc) -> (the active director's counters for svc before, the real servers that
    answered, and for a scheduler that counts connections or hashes, its destinations with their
    counters before): 2N requests from the client, asked once per service. test_split reads who
    answered, test_reply_path how the counters moved: one batch of requests serves both."""

    def exchange(svc: VirtualService) -> tuple[ipvs.Stats, list[str], list[scheduling.Dest] | None]:
        table = None
        if svc.scheduler.value not in ("rr", "wrr") and not svc.persistence:
            director = hosts(lab.active_director)
            if svc.scheduler.value in ("lblc", "lblcr"):
                recreate(director, svc)  # the server they keep for the VIP is chosen anew
            settle(director, svc)  # no old connection may expire mid-batch and change the counts
            table = held_counters(director, svc)
        before = counters(hosts, lab, svc)
        return before, ask(hosts, lab, svc, scheduling.split_count(lab, svc)), table

    return once_per_service(exchange)


def test_split(hosts, lab: Lab, http_service: VirtualService, exchanged):
    """2N requests in a row split exactly as rr or wrr say; as the scheduler model says, from the
    director's counters before them, for lc, wlc, sed, nq, fo, ovf, lblc, lblcr, sh and dh; on one
    server for a persistent service and for mh. A fwmark service's VIPs take turns: one
    scheduler counts across both."""
    service = http_service
    live = scheduling.live(lab, service)
    want = scheduling.exact_split(lab, service)
    _, answers, table = exchanged(service)
    count = len(answers)
    seen = Counter(answers)
    if want is not None:
        assert dict(seen) == want, (
            f"{service.key} {service.scheduler}: expected {want} from {count} requests, "
            f"saw {dict(seen)}\n{paths(hosts, lab, service)}"
        )
        return
    assert set(seen) <= set(live), f"{service.key}: answers from {dict(seen)}, expected only {sorted(live)}"
    order = None
    if table:
        vip = service.addresses[0]
        client = lab.nodes[lab.clients[0]].addresses.get(lab.network_of(vip))
        order = scheduling.in_a_row(service.scheduler.value, table, count, str(client), str(vip))
    if order:
        predicted = [lab.node_at(ip_address(key.rsplit(":", 1)[0].strip("[]"))) if key else "refused" for key in order]
        assert answers == predicted, (
            f"{service.key} {service.scheduler}: {count} requests in a row, each closed before the next, "
            f"starting from {', '.join(f'{d.key} weight {d.weight} active {d.active} inactive {d.inactive}' for d in table)}:\n"
            f"  the scheduler's formula: {' '.join(map(str, predicted))}\n"
            f"  the kernel sent them to: {' '.join(answers)}"
        )
    else:
        assert len(seen) == 1, (
            f"{service.key} {service.scheduler}: expected one real server for the client, saw {dict(seen)}"
        )


def test_big_file_arrives_whole(hosts, lab: Lab, http_service: VirtualService):
    service = http_service
    client = hosts(lab.clients[0])
    fetch = (
        f"d=$(mktemp -d) && curl -sS -g -m 60 -D $d/headers -o $d/body {shlex.quote(url(service, '/1m.bin'))}"
        " && sha256sum $d/body && cat $d/headers; rm -rf $d"
    )
    out = client.check_output(f"sh -c {shlex.quote(fetch)}")
    digest = out.split()[0]
    server = re.search(r"^X-Real-Server: (\S+)", out, re.M | re.I)
    assert server, f"no X-Real-Server header in the answer:\n{out}"
    # a container's file is on its node, under its own web root
    node = lab.container_nodes.get(server[1], server[1])
    path = f"{containers.web_root(server[1])}/1m.bin" if server[1] in lab.container_nodes else "/var/www/labkit/1m.bin"
    original = hosts(node).check_output(f"sha256sum {path}").split()[0]
    assert digest == original, f"1 MiB from {server[1]} through {service.key}: sha256 {digest}, original {original}"


def test_reply_path(hosts, lab: Lab, http_service: VirtualService, exchanged):
    """NAT replies pass the director (its outgoing counter grows); TUN and DR replies go
    straight to the client (the director never sends a packet for the service). The requests
    are test_split's."""
    service = http_service
    before = exchanged(service)[0]
    # The counters lag the traffic by up to 2 s (see ipvs.py): wait for them.
    deadline = time.monotonic() + 6
    after = counters(hosts, lab, service)
    while after.in_packets == before.in_packets and time.monotonic() < deadline:
        time.sleep(0.5)
        after = counters(hosts, lab, service)
    assert after.in_packets > before.in_packets, (
        f"{service.key}: the director saw no incoming packets ({before} -> {after})"
    )
    if service.forwarding == Forwarding.masq:
        assert after.out_packets > before.out_packets, (
            f"NAT: replies must pass the director, outgoing stayed {after.out_packets}"
        )
    else:
        assert after.out_packets == 0, (
            f"{service.forwarding.value}: replies must bypass the director, but it sent {after.out_packets} packets"
        )
