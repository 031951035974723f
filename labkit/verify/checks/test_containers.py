"""Real servers in containers (seed 000): each node's bridge, each container's namespace and web
server, the published ports, and a stopped container taken out by the director's checks.

Written from what Docker leaves on a host (`ip route`, `iptables -t nat -S`, `docker ps`), not
read back from the plan: the bridge holds the gateway address and brings the route to its range;
a container is a namespace with eth0 on that range and a default route via the bridge.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest

from labkit.labfile import Lab
from labkit.verify.checks import promise, state

KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"


def test_bridge_and_its_route(hosts, lab: Lab, container_node):
    """The bridge holds the gateway, and the kernel's route to the containers' range goes out
    of it from that address: `172.17.0.0/16 dev docker0 proto kernel scope link src 172.17.0.1`,
    the line the seed quotes. Forwarding is on, and Docker's MASQUERADE rule is in place."""
    bridge = lab.nodes[container_node].bridge
    host = hosts(container_node)
    out = host.check_output(
        f"ip -o addr show dev {bridge.name}; echo ==; ip -4 route show dev {bridge.name}; echo ==;"
        " cat /proc/sys/net/ipv4/ip_forward; echo ==; sudo -n iptables -t nat -S POSTROUTING"
    )
    addresses, routes, forward, postrouting = out.split("==\n")
    assert f" {bridge.address} " in addresses, (
        f"{container_node}: expected {bridge.address} on {bridge.name}, saw {addresses}"
    )
    want = f"{bridge.address.network} proto kernel scope link src {bridge.address.ip}"
    assert want in routes, f"{container_node}: expected the route '{want}' on {bridge.name}, saw: {routes}"
    assert forward.strip() == "1", f"{container_node}: the node must forward to its containers, ip_forward is {forward}"
    masquerade = f"-A POSTROUTING -s {bridge.address.network} ! -o {bridge.name} -j MASQUERADE"
    assert masquerade in postrouting, f"{container_node}: expected Docker's rule '{masquerade}', saw:\n{postrouting}"


def test_container(hosts, lab: Lab, container):
    """The container's web server runs as a unit of its node; inside its namespace eth0 holds its
    address and the default route goes via the bridge; its veth is on the bridge; from its node
    the container answers with its name."""
    node = lab.container_nodes[container]
    bridge = lab.nodes[node].bridge
    address = lab.nodes[node].containers[container]
    host = hosts(node)
    state = host.run(f"systemctl is-active labkit-container@{container}").stdout.strip()
    assert state == "active", f"{node}: expected labkit-container@{container} active, systemctl says {state}"
    inside = host.check_output(
        f"sudo -n ip -n {container} -o -4 addr show dev eth0; echo ==; sudo -n ip -n {container} route show default;"
        f" echo ==; ip -o link show master {bridge.name}"
    )
    addr, route, ports = inside.split("==\n")
    cidr = f"{address}/{bridge.address.network.prefixlen}"
    assert f" {cidr} " in addr, f"{container}: expected {cidr} on eth0 inside, saw: {addr}"
    assert route.split()[:3] == ["default", "via", str(bridge.address.ip)], (
        f"{container}: expected the default route via {bridge.address.ip}, saw: {route}"
    )
    assert re.search(rf"^\d+: veth-{container}@", ports, re.M), (
        f"expected veth-{container} on {bridge.name}, saw: {ports}"
    )
    page = host.run(f"curl -sS -m 5 http://{address}/").stdout.strip()
    assert page == container, f"{node}: http://{address}/ answered {page!r}, expected {container}"


def test_published_ports(hosts, lab: Lab, publishing_node):
    """Each published port is DNATed to its container, and answers from the director: a request
    to the node's address on the port is answered by the container."""
    container_node = publishing_node
    node = lab.nodes[container_node]
    rules = hosts(container_node).check_output("sudo -n iptables -t nat -S PREROUTING")
    director = hosts(lab.active_director)
    for published in node.publish:
        target = f"{node.containers[published.container]}:{published.container_port}"
        rule = re.search(rf"--dport {published.port} .*-j DNAT --to-destination {re.escape(target)}$", rules, re.M)
        assert rule, f"{container_node}: expected a DNAT of port {published.port} to {target}, saw:\n{rules}"
        for address in node.addresses.values():
            if lab.shared_networks(container_node, lab.active_director):
                page = director.run(f"curl -sS -m 5 http://{address}:{published.port}/").stdout.strip()
                assert page == published.container, (
                    f"http://{address}:{published.port}/ from {lab.active_director} answered {page!r}, "
                    f"expected {published.container}"
                )


def listed(hosts, lab: Lab, address) -> bool:
    table = hosts(lab.active_director).check_output("sudo -n ipvsadm -L -n")
    return f" {address}:" in table


def client_answers(hosts, lab: Lab, count: int) -> Counter:
    svc = next(s for s in lab.services if s.protocol.value == "tcp")
    url = f"http://{svc.vip}:{svc.port}/"
    return Counter(state.pages(hosts(lab.clients[0]).run(state.ask_pages([url] * count, seconds=2)).stdout))


@pytest.mark.failover
def test_stopped_container_is_taken_out(hosts, lab: Lab, director_container, figure):
    """A container of the director stops (systemctl stop, as docker stop): the director's health
    check takes it out of the IPVS table within what its settings promise, the client is then
    answered by the others only, and once started again it is back."""
    container = director_container
    director = hosts(lab.active_director)
    address = lab.nodes[lab.active_director].containers[container]
    bound = promise.takeout_bound(director.check_output(f"sudo -n cat {KEEPALIVED_CONF}")) + promise.MARGIN_SECONDS
    svc = next(s for s in lab.services if s.protocol.value == "tcp")
    others = {lab.server_at(rs.address, svc.real_port(rs), svc.protocol) for rs in svc.real_servers} - {container}
    director.run(f"sudo -n systemctl stop labkit-container@{container}")
    try:
        taken = promise.seconds_until(lambda: not listed(hosts, lab, address), bound)
        assert taken is not None, f"{container} ({address}) still in the IPVS table {bound} s after it stopped"
        figure("seconds_until_taken_out", round(taken, 1))
        seen = client_answers(hosts, lab, 2 * len(others))
        assert set(seen) == others, (
            f"with {container} stopped, expected answers from {sorted(others)}, saw {dict(seen)}"
        )
    finally:
        director.run(f"sudo -n systemctl start labkit-container@{container}")
    back = promise.seconds_until(lambda: listed(hosts, lab, address), bound)
    assert back is not None, f"{container} ({address}) did not return to the IPVS table after it started again"
