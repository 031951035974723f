"""The routing mesh (seed 001) in a lab file: its shapes, their mistakes one line each, and the
plan that wires each swarm node as Docker would (DOCKER-INGRESS, ingress_sbox, the overlay's
VXLAN, the tasks, the checker in the ingress namespace)."""

import subprocess

import pytest
from conftest import edited, problems

from labkit.labfile import LABS, load_lab
from labkit.plan import mesh
from labkit.plan.steps import plan

MESH = (LABS / "mesh" / "lab.yaml").read_text()


def lab():
    return load_lab(LABS / "mesh" / "lab.yaml")


def test_the_mesh_lab_loads_with_its_nodes_and_tasks():
    found = lab()
    assert found.swarm_nodes == ["n0", "n1", "n2"] and found.clients == ["cl0"]
    assert found.task_nodes == {"web0": "n0", "web1": "n0", "web2": "n1", "web3": "n2"}
    assert str(found.mesh.sbox_address) == "172.18.0.2" and found.services == [] and found.directors == []


CASES = [
    # (change, the error names this field, and says this)
    (
        lambda d: d["mesh"]["publish"].append({"port": 8080}),
        "mesh.publish[1].port",
        "port 8080 is published twice. Publish each port once",
    ),
    (
        lambda d: d["mesh"].update(overlay="192.168.0.0/16"),
        "mesh.overlay",
        "192.168.0.0/16 overlaps networks.swarm (192.168.99.0/24). Give the overlay a range of its own, e.g. 10.255.0.0/16",
    ),
    (
        lambda d: d["nodes"]["n1"].pop("ingress"),
        "nodes.n1.ingress",
        "n1 has tasks but no ingress namespace, and every swarm node publishes the mesh's ports through its own. "
        "Add ingress: <a free address in 10.255.0.0/16>",
    ),
    (
        lambda d: d["nodes"]["n1"]["tasks"].update(web2="10.254.0.7"),
        "nodes.n1.tasks.web2",
        "10.254.0.7 is not on the overlay 10.255.0.0/16. Use an address inside it",
    ),
    (
        lambda d: d["nodes"]["n2"]["tasks"].update(web3="10.255.0.2"),
        "nodes.n2.tasks.web3",
        "10.255.0.2 is already used by nodes.n0.ingress. Give each its own overlay address",
    ),
    (
        lambda d: d["nodes"]["n2"]["tasks"].update(web0="10.255.0.9"),
        "nodes.n2.tasks.web0",
        "the name web0 is taken by a task on n0. Give each task its own name",
    ),
    (
        lambda d: d["nodes"]["cl0"].update(tasks={"web9": "10.255.0.9"}),
        "nodes.cl0.tasks",
        "only a swarm_node has it. Remove tasks, or use role: swarm_node",
    ),
    (
        lambda d: d.pop("mesh"),
        "nodes.n0.role",
        "a swarm_node belongs to a routing mesh, and the lab has none. Add mesh:",
    ),
    (
        lambda d: d["mesh"].update(gwbridge="10.255.200.1/24"),
        "mesh.gwbridge",
        "10.255.200.0/24 overlaps the overlay 10.255.0.0/16. Use e.g. 172.18.0.1/16",
    ),
]


@pytest.mark.parametrize("change, field, message", CASES, ids=[c[1] + ":" + c[2][:30] for c in CASES])
def test_mistakes_are_named_one_line_each(change, field, message):
    lines = problems(edited(MESH, change))
    assert any(line.startswith(f"labs/x/lab.yaml: {field}: ") and message in line for line in lines), lines


def test_a_lab_without_mesh_or_services_is_told_to_add_a_service():
    def change(d):
        d.pop("mesh")
        for node in ("n0", "n1", "n2"):
            d["nodes"].pop(node)

    assert "labs/x/lab.yaml: services: the lab has no service. Add one" in "\n".join(problems(edited(MESH, change)))


def commands(node: str) -> list[str]:
    return [" ".join(c) for step in plan(lab(), node) for c in step.commands]


def test_a_swarm_node_is_wired_as_docker_wires_it():
    done = commands("n1")
    for line in (
        "ip link add docker_gwbridge type bridge",
        "ip addr replace 172.18.0.1/16 dev docker_gwbridge",
        "ip netns add ingress_sbox",
        "ip -n ingress_sbox addr replace 172.18.0.2/16 dev eth1",
        "ip -n ingress_sbox route replace default via 172.18.0.1",
        "ip netns add 1-ingress",
        "ip link add vxlan0 type vxlan id 4096 dstport 4789 local 192.168.99.101 dev swarm",
        "ip link set vxlan0 netns 1-ingress",
        "bridge -n 1-ingress fdb append 00:00:00:00:00:00 dev vxlan0 dst 192.168.99.100",
        "bridge -n 1-ingress fdb append 00:00:00:00:00:00 dev vxlan0 dst 192.168.99.102",
        "ip -n ingress_sbox addr replace 10.255.0.3/16 dev eth0",
        "ip netns exec ingress_sbox iptables -t mangle -A PREROUTING -p tcp --dport 8080 -j MARK --set-mark 256",
        "ip netns exec ingress_sbox iptables -t nat -A POSTROUTING -d 10.255.0.0/16 -m ipvs --ipvs -j SNAT --to-source 10.255.0.3",
        "ip -n 1-ingress link add ov-web2 mtu 1450 type veth peer name eth0 mtu 1450 netns web2",
        "ip -n web2 addr replace 10.255.0.7/16 dev eth0",
        "apply_config labkit-container@web2",
        "apply_config labkit-ingress",
        "iptables -t nat -N DOCKER-INGRESS",
        "iptables -t nat -I DOCKER-INGRESS -p tcp --dport 8080 -j DNAT --to-destination 172.18.0.2:8080",
        "iptables -t nat -A DOCKER-INGRESS -j RETURN",
        "iptables -t nat -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER-INGRESS",
        "iptables -t nat -A OUTPUT -m addrtype --dst-type LOCAL -j DOCKER-INGRESS",
    ):
        assert line in done, line
    # the node itself gets no address on the overlay: that is the seed's "why can't I ping it"
    assert not any(c.startswith("ip addr replace 10.255.") for c in done)


def test_the_checker_in_the_ingress_namespace_balances_over_every_task_of_every_node():
    conf = mesh.keepalived_config(lab(), "n2")
    assert "virtual_server fwmark 256 {" in conf and "lb_kind NAT" in conf
    for address in ("10.255.0.5", "10.255.0.6", "10.255.0.7", "10.255.0.8"):
        assert f"real_server {address} 80 {{" in conf
    assert f"ip netns exec {mesh.SBOX} /usr/sbin/keepalived" in mesh.UNIT_TEXT and "--check" in mesh.UNIT_TEXT


LISTING = """IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
FWM  256 rr
  -> 10.255.0.5:80                Masq    1      0          1
  -> 10.255.0.7:80                Masq    1      0          2
"""
ADDRESSES = """1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: eth1    inet 172.18.0.2/16 scope global eth1\\       valid_lft forever preferred_lft forever
3: eth0    inet 10.255.0.3/16 scope global eth0\\       valid_lft forever preferred_lft forever
3: eth0    inet6 fe80::1/64 scope link \\       valid_lft forever preferred_lft forever
"""


def test_show_reads_each_node_s_table_in_its_ingress_namespace_and_names_the_tasks():
    from rich.console import Console

    from labkit.operate import show
    from labkit.plan.ipvs import COMMANDS

    commands = show.ingress_commands(COMMANDS)
    assert commands["list"] == ["sudo", "-n", "ip", "netns", "exec", "ingress_sbox", "ipvsadm", "-L", "-n"]
    assert "daemon" not in commands
    state = show.ingress_state(lab(), "n1", {"list": LISTING, "stats": "", "rate": "", "addresses": ADDRESSES})
    assert state.addresses == ["172.18.0.2", "10.255.0.3"]
    console = Console(width=200, record=True)
    console.print(show.view(lab(), [state]))
    text = " ".join(console.export_text().split())
    assert "n1 ingress_sbox (ip netns exec ingress_sbox: 172.18.0.2, 10.255.0.3; the node itself has neither)" in text
    assert "10.255.0.7:80 web2" in text and "FWM 256" in text
    assert show.as_json(lab(), [state])["directors"][0]["namespace"] == "ingress_sbox"


# What tcpdump -t -e -n -l prints at each point for one request from cl0's port 45123 to n0:8080,
# served by web2 on n1 (the MACs shortened); a VXLAN packet's inner frame on the next line.
CAPTURE_N0 = """### swarm
52:54:00:00:00:04 > 52:54:00:00:00:01, ethertype IPv4 (0x0800), length 74: 192.168.99.200.45123 > 192.168.99.100.8080: Flags [S], seq 1, win 64240, length 0
52:54:00:00:00:01 > 52:54:00:00:00:02, ethertype IPv4 (0x0800), length 124: 192.168.99.100.39012 > 192.168.99.101.4789: VXLAN, flags [I] (0x08), vni 4096
02:aa:00:00:00:02 > 02:aa:00:00:00:07, ethertype IPv4 (0x0800), length 74: 10.255.0.2.45123 > 10.255.0.7.80: Flags [S], seq 1, win 64240, length 0
52:54:00:00:00:01 > 52:54:00:00:00:02, ethertype IPv4 (0x0800), length 124: 192.168.99.100.39012 > 192.168.99.101.4789: VXLAN, flags [I] (0x08), vni 4096
02:aa:00:00:00:02 > 02:aa:00:00:00:07, ethertype IPv4 (0x0800), length 74: 10.255.0.2.51000 > 10.255.0.7.80: Flags [S], seq 9, win 64240, length 0
52:54:00:00:00:02 > 52:54:00:00:00:01, ethertype IPv4 (0x0800), length 124: 192.168.99.101.40001 > 192.168.99.100.4789: VXLAN, flags [I] (0x08), vni 4096
02:aa:00:00:00:07 > 02:aa:00:00:00:02, ethertype IPv4 (0x0800), length 74: 10.255.0.7.80 > 10.255.0.2.45123: Flags [S.], seq 5, ack 2, win 65160, length 0
52:54:00:00:00:01 > 52:54:00:00:00:04, ethertype IPv4 (0x0800), length 74: 192.168.99.100.8080 > 192.168.99.200.45123: Flags [S.], seq 5, ack 2, win 65160, length 0
### docker_gwbridge
02:bb:00:00:00:01 > 02:bb:00:00:00:02, ethertype IPv4 (0x0800), length 74: 192.168.99.200.45123 > 172.18.0.2.8080: Flags [S], seq 1, win 64240, length 0
02:bb:00:00:00:02 > 02:bb:00:00:00:01, ethertype IPv4 (0x0800), length 74: 172.18.0.2.8080 > 192.168.99.200.45123: Flags [S.], seq 5, ack 2, win 65160, length 0
### ingress_sbox:eth0
02:aa:00:00:00:02 > 02:aa:00:00:00:07, ethertype IPv4 (0x0800), length 74: 10.255.0.2.45123 > 10.255.0.7.80: Flags [S], seq 1, win 64240, length 0
02:aa:00:00:00:07 > 02:aa:00:00:00:02, ethertype IPv4 (0x0800), length 74: 10.255.0.7.80 > 10.255.0.2.45123: Flags [S.], seq 5, ack 2, win 65160, length 0
### web0:eth0
### web1:eth0
"""
CAPTURE_N1 = """### web2:eth0
02:aa:00:00:00:02 > 02:aa:00:00:00:07, ethertype IPv4 (0x0800), length 74: 10.255.0.2.45123 > 10.255.0.7.80: Flags [S], seq 1, win 64240, length 0
02:aa:00:00:00:07 > 02:aa:00:00:00:02, ethertype IPv4 (0x0800), length 74: 10.255.0.7.80 > 10.255.0.2.45123: Flags [S.], seq 5, ack 2, win 65160, length 0
"""


def test_trace_tells_the_mesh_hops_node_ingress_namespace_overlay_task_and_back():
    from labkit.operate import mesh_trace

    captured = {
        (node, point): packets
        for node, text in (("n0", CAPTURE_N0), ("n1", CAPTURE_N1), ("n2", "### web3:eth0\n"))
        for point, packets in mesh_trace.parse(text).items()
    }
    request, reply, task = mesh_trace.hops(lab(), captured, 45123)
    assert task == "web2"
    assert [(h.node, h.interface) for h in request] == [
        ("n0", "swarm"),
        ("n0", "docker_gwbridge"),
        ("n0", "ingress_sbox:eth0"),
        ("n0", "swarm"),
        ("n1", "web2:eth0"),
    ]
    assert request[3].packet.outer == ("192.168.99.100", "192.168.99.101") and request[3].packet.src.endswith(".45123")
    assert "DNAT" in request[1].note and "VXLAN" in request[3].note
    assert [(h.node, h.interface) for h in reply] == [
        ("n1", "web2:eth0"),
        ("n0", "swarm"),
        ("n0", "ingress_sbox:eth0"),
        ("n0", "docker_gwbridge"),
        ("n0", "swarm"),
    ]
    assert reply[-1].packet.src == "192.168.99.100.8080" and "DNAT undone" in reply[-1].note


def test_trace_listens_in_each_namespace_and_for_vxlan_on_the_nic():
    from labkit.operate import mesh_trace

    n0 = [p for p in mesh_trace.points(lab()) if p.node == "n0"]
    assert [p.name for p in n0] == ["swarm", "docker_gwbridge", "ingress_sbox:eth0", "web0:eth0", "web1:eth0"]
    script = mesh_trace.start_script(lab(), n0, 45123)
    assert "tcpdump -i swarm" in script and "'tcp port 45123 or udp port 4789'" in script
    assert "ip netns exec ingress_sbox sh -c" in script
    result = subprocess.run(["sh", "-n"], input=script + "\n" + mesh_trace.read_script(n0, 45123), text=True)
    assert result.returncode == 0


def test_commands_that_need_a_vip_say_the_mesh_has_none():
    from labkit.errors import LabkitError

    with pytest.raises(LabkitError, match="routing mesh: its IPVS services live in each node's ingress namespace"):
        lab().service(None)
