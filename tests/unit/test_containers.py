"""Containers in a lab (seed 000): the lab file's new shapes, their mistakes one line each, and
the plan that wires each container as Docker would (bridge, veth, route, rules)."""

import pytest
from conftest import edited, problems

from labkit.describe import graph
from labkit.labfile import LABS, load_lab
from labkit.operate import show
from labkit.operate.failover import StopService, parse_target, taken_away, taken_name
from labkit.operate.trace import capture_points
from labkit.plan.steps import plan

CONTAINERS = (LABS / "containers" / "lab.yaml").read_text()


def lab():
    return load_lab(LABS / "containers" / "lab.yaml")


def test_the_containers_lab_loads_with_its_containers_and_what_answers_each_real_server():
    found = lab()
    assert found.container_nodes == {"web0": "lb0", "web1": "lb0", "web2": "rs0"}
    svc = found.services[0]
    # 172.17.0.2 is on both nodes' docker0, as with Docker: the director's is the one it reaches
    assert [found.server_at(rs.address, svc.real_port(rs)) for rs in svc.real_servers] == ["web0", "web1", "web2"]
    assert found.server_at(found.nodes["rs0"].addresses["int"], 80) == "rs0"  # no port published there


CASES = [
    # (change, the error names this field, and says this)
    (
        lambda d: d["nodes"]["rs0"].pop("bridge"),
        "nodes.rs0.containers",
        "rs0 has containers but no bridge to put them on. Add bridge:",
    ),
    (
        lambda d: d["nodes"]["rs0"]["publish"].append({"port": 18280, "container": "web2"}),
        "nodes.rs0.publish[1].port",
        "tcp port 18280 is published twice on rs0. Publish each port once per node",
    ),
    (
        lambda d: d["nodes"]["lb0"]["bridge"].update(address="192.168.66.1/23"),
        "nodes.lb0.bridge.address",
        "192.168.66.0/23 overlaps networks.int (192.168.66.0/24). Give the bridge a range of its own",
    ),
    (
        lambda d: d["nodes"]["lb0"]["containers"].update(web1="172.18.0.3"),
        "nodes.lb0.containers.web1",
        "172.18.0.3 is not on docker0 (172.17.0.0/16). Use an address inside it",
    ),
    (
        lambda d: d["nodes"]["lb0"]["containers"].update(web1="172.17.0.1"),
        "nodes.lb0.containers.web1",
        "172.17.0.1 is docker0's own, network or broadcast address",
    ),
    (
        lambda d: d["nodes"]["rs0"]["containers"].update(web0="172.17.0.9"),
        "nodes.rs0.containers.web0",
        "the name web0 is taken by a container on lb0. Give each container its own name",
    ),
    (
        lambda d: d["nodes"]["rs0"]["publish"][0].update(container="web9"),
        "nodes.rs0.publish[0].container",
        "rs0 has no container 'web9'. Use one of: web2",
    ),
    (
        lambda d: d["services"][0]["real_servers"].append({"address": "172.17.0.9"}),
        "services[0].real_servers[3].address",
        "172.17.0.9 is on lb0's bridge docker0, but no container there has it. Use one of: 172.17.0.2, 172.17.0.3",
    ),
    (
        lambda d: d["services"][0].update(forwarding="route"),
        "services[0].real_servers[0].address",
        "172.17.0.2 is a container behind lb0's bridge, which only NAT reaches",
    ),
    (
        lambda d: d["nodes"]["lb0"]["containers"].update({"web-with-a-long-name": "172.17.0.9"}),
        "nodes.lb0.containers.web-with-a-long-name",
        "is not a plain container name. Use 1-10 lower-case letters and digits",
    ),
]


@pytest.mark.parametrize("change, field, message", CASES, ids=[c[1] + ":" + c[2][:30] for c in CASES])
def test_mistakes_are_named_one_line_each(change, field, message):
    lines = problems(edited(CONTAINERS, change))
    assert any(line.startswith(f"labs/x/lab.yaml: {field}: ") and message in line for line in lines), lines


def test_every_container_problem_at_once():
    def change(d):
        d["nodes"]["rs0"].pop("bridge")
        d["nodes"]["rs0"]["publish"].append({"port": 18280, "container": "web2"})
        d["nodes"]["lb0"]["bridge"].update(address="192.168.66.1/23")

    fields = [line.split(": ")[1] for line in problems(edited(CONTAINERS, change))]
    assert {"nodes.rs0.containers", "nodes.rs0.publish[1].port", "nodes.lb0.bridge.address"} <= set(fields)


def whys(node: str) -> list[str]:
    return [step.why for step in plan(lab(), node)]


def commands(node: str) -> list[str]:
    return [" ".join(c) for step in plan(lab(), node) for c in step.commands]


def test_each_container_is_a_namespace_on_the_bridge_with_its_route_and_its_web_server():
    done = commands("lb0")
    assert "ip link add docker0 type bridge" in done
    assert "ip addr replace 172.17.0.1/16 dev docker0" in done
    for name, address in (("web0", "172.17.0.2"), ("web1", "172.17.0.3")):
        assert f"ip netns add {name}" in done
        assert f"ip link add veth-{name} type veth peer name eth0 netns {name}" in done
        assert f"ip link set veth-{name} master docker0 up" in done
        assert f"ip -n {name} addr replace {address}/16 dev eth0" in done
        assert f"ip -n {name} route replace default via 172.17.0.1" in done
        assert f"apply_config labkit-container@{name}" in done
    assert "iptables -t nat -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE" in done


def test_a_published_port_is_dnated_and_the_node_runs_no_web_server_of_its_own():
    done = commands("rs0")
    rule = (
        "iptables -t nat -A PREROUTING -p tcp -m addrtype --dst-type LOCAL --dport 18280 "
        "-j DNAT --to-destination 172.17.0.2:80"
    )
    assert rule in done
    assert not any("restart nginx" in c for c in done), "rs0's port is its container's: no nginx on rs0 itself"
    assert "ip route replace 192.168.55.0/24 via 192.168.66.10" in done  # replies back through the director


def test_the_container_steps_are_explained_with_the_bridge_route_and_rule():
    said = " ".join(whys("lb0"))
    assert "route 172.17.0.0/16 dev docker0" in said and "MASQUERADE" not in said  # the why, not the rule
    assert "Docker's rule" in said
    assert any("published port 18280 goes to web2" in why for why in whys("rs0"))


def test_the_picture_shows_the_bridges_containers_and_published_port():
    text = graph.dot(lab())
    assert "docker0 172.17.0.1/16" in text
    for name in ("web0", "web1", "web2"):
        assert f"container <B>{name}</B>" in text
    assert ":18280 → web2:80 (DNAT)" in text


def test_show_names_the_container_behind_each_destination():
    assert show._real_server(lab(), show.ipvs.Destination("172.17.0.3", 80, None, 1)).split()[-1] == "web1"
    assert show._real_server(lab(), show.ipvs.Destination("192.168.66.111", 18280, None, 1)).split()[-1] == "web2"


def test_trace_listens_on_the_bridges_too():
    points = capture_points(lab(), lab().services[0])
    assert points == {"lb0": ["ext", "int", "docker0"], "rs0": ["int", "docker0"]}


def test_fail_stops_a_container_by_its_name():
    assert parse_target(lab(), "lb0:web0") == StopService("lb0", "labkit-container@web0")
    assert parse_target(lab(), "rs0:web2") == StopService("rs0", "labkit-container@web2")
    with pytest.raises(Exception, match=r"Use lb0:keepalived or lb0:<web0\|web1\|ext\|int>"):
        parse_target(lab(), "lb0:web9")


def test_a_stopped_container_takes_its_own_destination_away():
    assert taken_away(lab(), parse_target(lab(), "lb0:web1")) == {"172.17.0.3"}
    assert taken_away(lab(), parse_target(lab(), "rs0:web2")) == {"192.168.66.111"}  # behind the published port
    assert taken_away(lab(), parse_target(lab(), "lb0")) == set()  # a director: no destination of its own
    assert taken_name(parse_target(lab(), "lb0:web1")) == "web1"
