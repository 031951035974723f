"""Docker swarm's routing mesh (seed 001): each node's DOCKER-INGRESS chain, its ingress namespace
(the MARK, the IPVS firewall-mark service and its SNAT), the overlay's VXLAN, the tasks; every
node answering for the tasks on all nodes; the counters the seed follows moving; VXLAN on the
wire; the overlay range out of the node's reach; a stopped task taken out.

Written from what Docker leaves on a node (`iptables -t nat -S`, `nsenter --net=.../ingress_sbox
iptables -t mangle -S`, `ipvsadm -L -n`, `ip -d link`), not read back from the plan.
"""

from __future__ import annotations

import re
import shlex
import time
from collections import Counter
from ipaddress import ip_address

import pytest

from labkit.labfile import Lab
from labkit.labfile.model import mesh_network
from labkit.operate.mesh_trace import parse
from labkit.operate.trace import read_capture, start_capture
from labkit.plan import ipvs
from labkit.verify.checks import promise

SBOX = "ingress_sbox"
OVERLAY = "1-ingress"
KEEPALIVED_CONF = "/etc/labkit/mesh/keepalived.conf"


def in_sbox(command: str) -> str:
    return f"sudo -n ip netns exec {SBOX} {command}"


def url(lab: Lab, node: str) -> str:
    return f"http://{lab.nodes[node].addresses[mesh_network(lab)]}:{lab.mesh.publish[0].port}/"


# The client's ports: below the ephemeral range (32768-60999), so that no health check of the
# checkers uses one, and the client's requests are told from them on the overlay (the SNAT in the
# ingress namespace keeps the port).
CLIENT_PORTS = range(20000, 21000)


def ask(hosts, lab: Lab, node: str, count: int) -> Counter:
    """The client asks the node's published port `count` times: who answered."""
    ports = f"{CLIENT_PORTS.start}-{CLIENT_PORTS.stop - 1}"
    curl = f"curl -sS -m 2 --local-port {ports} {shlex.quote(url(lab, node))}"
    loop = f"for i in $(seq {count}); do {curl} || echo FAILED; done"
    return Counter(hosts(lab.clients[0]).check_output(f"sh -c {shlex.quote(loop)}").split())


def task_address(lab: Lab, task: str) -> str:
    return str(lab.nodes[lab.task_nodes[task]].tasks[task])


def test_docker_ingress_chain(hosts, lab: Lab, swarm_node):
    """As the seed lists it: DOCKER-INGRESS DNATs the published port to the ingress namespace's
    address on docker_gwbridge, then RETURNs; PREROUTING and OUTPUT jump to it for local addresses."""
    mesh = lab.mesh
    host = hosts(swarm_node)
    out = host.check_output("sudo -n iptables -t nat -S; echo ==; ip -o -4 addr show dev docker_gwbridge")
    rules, bridge = out.split("==\n")
    for hook in ("PREROUTING", "OUTPUT"):
        jump = f"-A {hook} -m addrtype --dst-type LOCAL -j DOCKER-INGRESS"
        assert jump in rules, f"{swarm_node}: expected '{jump}', saw:\n{rules}"
    chain = [line for line in rules.splitlines() if line.startswith("-A DOCKER-INGRESS ")]
    for p in mesh.publish:
        dnat = f"-A DOCKER-INGRESS -p tcp -m tcp --dport {p.port} -j DNAT --to-destination {mesh.sbox_address}:{p.port}"
        assert dnat in chain, f"{swarm_node}: expected '{dnat}' in DOCKER-INGRESS, saw:\n" + "\n".join(chain)
    assert chain and chain[-1] == "-A DOCKER-INGRESS -j RETURN", (
        f"{swarm_node}: DOCKER-INGRESS must end in RETURN: {chain}"
    )
    assert f" {mesh.gwbridge} " in bridge, f"{swarm_node}: expected {mesh.gwbridge} on docker_gwbridge, saw: {bridge}"


def test_ingress_namespace(hosts, lab: Lab, swarm_node):
    """ingress_sbox: a leg on docker_gwbridge and one on the overlay; the mangle MARK of the port;
    Docker's SNAT for what IPVS sends; and the firewall-mark service over every task of every node,
    masqueraded, kept by the checker running inside it."""
    mesh, node = lab.mesh, lab.nodes[swarm_node]
    host = hosts(swarm_node)
    out = host.check_output(
        in_sbox("sh -c " + shlex.quote("ip -o -4 addr; echo ==; iptables -t mangle -S PREROUTING; echo ==;"
                " iptables -t nat -S POSTROUTING; echo ==; ipvsadm -L -n"))
        + "; echo ==; systemctl is-active labkit-ingress"
    )  # fmt: skip
    addresses, mangle, nat, table, unit = out.split("==\n")
    sbox = f"{mesh.sbox_address}/{mesh.gwbridge.network.prefixlen}"
    assert re.search(rf"\beth1\s+inet {re.escape(sbox)} ", addresses), f"{swarm_node}: no {sbox} on eth1: {addresses}"
    overlay = f"{node.ingress}/{mesh.overlay.prefixlen}"
    assert re.search(rf"\beth0\s+inet {re.escape(overlay)} ", addresses), (
        f"{swarm_node}: no {overlay} on eth0: {addresses}"
    )
    for p in mesh.publish:
        mark = f"-A PREROUTING -p tcp -m tcp --dport {p.port} -j MARK --set-xmark {p.fwmark:#x}/0xffffffff"
        assert mark in mangle, f"{swarm_node}: expected '{mark}' in {SBOX}, saw:\n{mangle}"
    snat = f"-A POSTROUTING -d {mesh.overlay} -m ipvs --ipvs -j SNAT --to-source {node.ingress}"
    assert snat in nat, f"{swarm_node}: expected '{snat}' in {SBOX}, saw:\n{nat}"
    assert unit.strip() == "active", f"{swarm_node}: labkit-ingress (keepalived in {SBOX}) is {unit.strip()}"
    listed = {s.key: s for s in ipvs.parse_list(table)}
    want = sorted((task_address(lab, t), p.target_port) for t in lab.task_nodes for p in mesh.publish[:1])
    for p in mesh.publish:
        svc = listed.get(f"fwm {p.fwmark}")
        assert svc is not None, f"{swarm_node}: no FWM {p.fwmark} service in {SBOX}:\n{table}"
        seen = sorted((d.address, d.port) for d in svc.destinations)
        assert seen == want, f"{swarm_node}: FWM {p.fwmark} should balance over every task {want}, lists {seen}"
        assert {d.forward.value for d in svc.destinations} == {"masq"}, f"{swarm_node}: not masqueraded:\n{table}"


def test_overlay(hosts, lab: Lab, swarm_node):
    """The overlay's own namespace holds br0 and the VXLAN device (VNI, UDP 4789, on br0) whose
    flooding reaches every other node; the node itself has no address or route in the overlay range."""
    mesh = lab.mesh
    host = hosts(swarm_node)
    out = host.check_output(
        f"sudo -n ip -n {OVERLAY} -d -o link show dev vxlan0; echo ==; sudo -n bridge -n {OVERLAY} fdb show dev vxlan0;"
        " echo ==; ip -o -4 addr; echo ==; ip -4 route"
    )
    link, fdb, addresses, routes = out.split("==\n")
    assert f"vxlan id {mesh.vni} " in link and "dstport 4789 " in link, f"{swarm_node}: vxlan0 is {link}"
    assert "master br0 " in link, f"{swarm_node}: vxlan0 is not on br0: {link}"
    net = mesh_network(lab)
    for peer in (n for n in lab.swarm_nodes if n != swarm_node):
        dst = lab.nodes[peer].addresses[net]
        assert f"00:00:00:00:00:00 dst {dst} " in fdb, (
            f"{swarm_node}: the overlay floods nothing to {peer} ({dst}):\n{fdb}"
        )
    inside = [a for a in re.findall(r"inet (\S+)/", addresses) if ip_address(a) in mesh.overlay]
    assert inside == [], f"{swarm_node}: the node itself holds overlay addresses {inside}"
    assert str(mesh.overlay.network_address) not in routes, f"{swarm_node}: a route into the overlay:\n{routes}"


def test_the_overlay_range_answers_the_ingress_namespace_not_the_node(hosts, lab: Lab, swarm_node):
    """The seed's "why can't I ping 10.255.0.0/16": the node has no leg on the overlay (its
    packets to it follow the default route, and nothing answers), while the ingress namespace,
    which has one, reaches a task on another node through the VXLAN."""
    remote = next(t for t, n in lab.task_nodes.items() if n != swarm_node)
    address = task_address(lab, remote)
    host = hosts(swarm_node)
    from_node = host.run(f"ping -c 1 -W 2 {address}")
    assert from_node.rc != 0, f"{swarm_node} itself pinged {address}: {from_node.stdout}"
    from_sbox = host.run(in_sbox(f"ping -c 1 -W 3 {address}"))
    assert from_sbox.rc == 0, (
        f"{SBOX} on {swarm_node} cannot ping {remote} ({address}): {from_sbox.stdout}{from_sbox.stderr}"
    )


def test_task(hosts, lab: Lab, task):
    """The task's web server runs as a unit of its node; inside its namespace eth0 holds its
    overlay address with the overlay's MTU, and its node's ingress namespace is answered by it."""
    node = lab.task_nodes[task]
    cidr = f"{task_address(lab, task)}/{lab.mesh.overlay.prefixlen}"
    host = hosts(node)
    state = host.run(f"systemctl is-active labkit-container@{task}").stdout.strip()
    assert state == "active", f"{node}: expected labkit-container@{task} active, systemctl says {state}"
    inside = host.check_output(
        f"sudo -n ip -n {task} -o addr show dev eth0; sudo -n ip -n {task} -o link show dev eth0"
    )
    assert f" {cidr} " in inside, f"{task}: expected {cidr} on eth0, saw: {inside}"
    assert " mtu 1450 " in inside, f"{task}: eth0 must leave room for the VXLAN header (mtu 1450): {inside}"
    page = host.run(in_sbox(f"curl -sS -m 5 http://{task_address(lab, task)}/")).stdout.strip()
    assert page == task, f"{node}: {SBOX} asked {task} and was answered {page!r}"


def counters(host, lab: Lab) -> dict[str, int]:
    """What the seed follows, read on one node: the DNAT rule's packets, the MARK rule's packets
    in the ingress namespace, and the connections of its IPVS service."""
    p = lab.mesh.publish[0]
    out = host.check_output(
        "sudo -n iptables -t nat -L DOCKER-INGRESS -n -v -x; echo ==; "
        + in_sbox(
            "sh -c " + shlex.quote("iptables -t mangle -L PREROUTING -n -v -x; echo ==; ipvsadm -L -n --stats --exact")
        )
    )
    dnat, mark, stats = out.split("==\n")
    row = lambda text, target: next(  # noqa: E731
        int(line.split()[0]) for line in text.splitlines() if f" {target} " in line and f"dpt:{p.port}" in line
    )
    return {
        "dnat": row(dnat, "DNAT"),
        "mark": row(mark, "MARK"),
        "ipvs": ipvs.parse_stats(stats)[f"fwm {p.fwmark}"].conns,
    }


@pytest.fixture(scope="session")
def exchange(hosts, lab: Lab):
    """exchange(node): the client sends two requests per task to the node's published port while
    tcpdump listens for VXLAN on the node's NIC; who answered, the counters before and after, and
    the capture. Done once per node, for the checks below to read."""

    done: dict[str, dict] = {}

    def run(node: str) -> dict:
        if node not in done:
            host, net = hosts(node), mesh_network(lab)
            count = 2 * len(lab.task_nodes)
            before = counters(host, lab)
            host.check_output(f"sudo -n sh -c {shlex.quote(start_capture([net], 'udp port 4789', 'mesh'))}")
            answers = ask(hosts, lab, node, count)
            wire = host.check_output(f"sudo -n sh -c {shlex.quote(read_capture([net], 'mesh'))}")
            time.sleep(2.5)  # IPVS sums its per-CPU counters about every 2 s
            done[node] = {
                "count": count,
                "answers": answers,
                "before": before,
                "after": counters(host, lab),
                "wire": wire,
            }
        return done[node]

    return run


def test_every_node_answers_for_every_task(lab: Lab, swarm_node, exchange, figure):
    """Requests to any one node's published port reach the tasks on all nodes, round robin:
    each task answers twice out of two requests per task."""
    seen = exchange(swarm_node)["answers"]
    figure(f"{swarm_node}_answers", dict(seen))
    assert seen == Counter({t: 2 for t in lab.task_nodes}), (
        f"{swarm_node}: expected every task twice ({', '.join(lab.task_nodes)}), saw {dict(seen)}"
    )


def test_counters_move_as_the_seed_says(swarm_node, exchange):
    """Each request passes DOCKER-INGRESS's DNAT once (nat sees a connection's first packet), the
    MARK in the ingress namespace on every packet, and opens one connection of its IPVS service."""
    done = exchange(swarm_node)
    n, before, after = done["count"], done["before"], done["after"]
    moved = {k: after[k] - before[k] for k in before}
    assert moved["dnat"] == n, f"{swarm_node}: {n} requests, the DNAT rule counted {moved['dnat']} ({moved})"
    assert moved["mark"] >= 3 * n, f"{swarm_node}: {n} connections, the MARK rule counted {moved['mark']} packets"
    assert moved["ipvs"] == n, f"{swarm_node}: {n} requests, IPVS counted {moved['ipvs']} connections ({moved})"


def test_vxlan_on_the_wire(lab: Lab, swarm_node, exchange):
    """The client's requests scheduled to tasks on other nodes cross the lab network inside VXLAN
    (UDP 4789, the overlay's VNI), from this node to each other node with a task: inner packets
    from the ingress namespace's overlay address and one of the client's ports, to a task. (The
    checkers' own health checks cross it too, from other ports.)"""
    wire = exchange(swarm_node)["wire"]
    net = mesh_network(lab)
    me = str(lab.nodes[swarm_node].addresses[net])
    assert f"vni {lab.mesh.vni}" in wire, f"{swarm_node}: no VXLAN with VNI {lab.mesh.vni} on {net}:\n{wire[-1500:]}"
    packets = parse("### wire\n" + wire)["wire"]
    ingress = str(lab.nodes[swarm_node].ingress)
    for peer in {n for n in lab.task_nodes.values() if n != swarm_node}:
        them = str(lab.nodes[peer].addresses[net])
        tasks = {f"{a}.{lab.mesh.publish[0].target_port}" for a in lab.nodes[peer].tasks.values()}
        requests = [
            p
            for p in packets
            if p.outer == (me, them)
            and p.src.rsplit(".", 1)[0] == ingress
            and int(p.src.rsplit(".", 1)[1]) in CLIENT_PORTS
            and p.dst in tasks
        ]
        assert requests, (
            f"{swarm_node}: no request from the client crossed to {peer} ({them}) inside VXLAN:\n{wire[-1500:]}"
        )


def listed(hosts, node: str, address: str) -> bool:
    return f" {address}:" in hosts(node).check_output(in_sbox("ipvsadm -L -n"))


@pytest.mark.failover
def test_stopped_task_is_taken_out(hosts, lab: Lab, stopped_task, figure):
    """A task stops (systemctl stop, as its container exits): the checker in every node's ingress
    namespace takes it out of the IPVS service within what its settings promise, every node is then
    answered by the other tasks only, and once started again the task is back everywhere."""
    node = lab.task_nodes[stopped_task]
    address = task_address(lab, stopped_task)
    bound = promise.takeout_bound(hosts(node).check_output(f"sudo -n cat {KEEPALIVED_CONF}")) + promise.MARGIN_SECONDS
    others = set(lab.task_nodes) - {stopped_task}
    hosts(node).run(f"sudo -n systemctl stop labkit-container@{stopped_task}")
    stopped = time.monotonic()
    try:
        for swarm_node in lab.swarm_nodes:
            taken = promise.seconds_until(lambda n=swarm_node: not listed(hosts, n, address), bound)
            assert taken is not None, (
                f"{stopped_task} ({address}) still in {swarm_node}'s IPVS service {bound} s after it stopped"
            )
        figure("seconds_until_taken_out_everywhere", round(time.monotonic() - stopped, 1))
        for swarm_node in lab.swarm_nodes:
            seen = ask(hosts, lab, swarm_node, 2 * len(others))
            assert set(seen) == others, f"with {stopped_task} stopped, {swarm_node} answered {dict(seen)}"
    finally:
        hosts(node).run(f"sudo -n systemctl start labkit-container@{stopped_task}")
    for swarm_node in lab.swarm_nodes:
        assert promise.seconds_until(lambda n=swarm_node: listed(hosts, n, address), bound) is not None, (
            f"{stopped_task} did not return to {swarm_node}'s IPVS service after it started again"
        )
