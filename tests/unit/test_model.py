"""The lab loader: the shipped labs load, and each kind of mistake gets its own clear error."""

import copy
from pathlib import Path

import pytest
from conftest import edited

from labkit.errors import LabkitError
from labkit.labfile import LABS, LabError, Scheduler, load_lab, parse_lab

NAT = (LABS / "nat" / "lab.yaml").read_text()
TUN = (LABS / "tun" / "lab.yaml").read_text()
DR = (LABS / "dr" / "lab.yaml").read_text()
FWMARK = (LABS / "fwmark" / "lab.yaml").read_text()
SCHEDULERS = (LABS / "schedulers" / "lab.yaml").read_text()


@pytest.mark.parametrize("name", ["nat", "tun", "dr"])
def test_shipped_labs_load(name):
    lab = load_lab(LABS / name / "lab.yaml")
    assert lab.name == name
    assert lab.directors == ["lb0", "lb1"] and lab.active_director == "lb0"
    assert lab.real_servers == ["rs0", "rs1"] and lab.clients == ["cl0"]
    assert str(lab.services[0].vip) == "192.168.55.100"


def rs(data, i=0, j=0):
    return data["services"][i]["real_servers"][j]


CASES = [
    # (lab, change, the error names this field, and says this)
    (
        NAT,
        lambda d: d["nodes"]["rs0"]["addresses"].update(int="192.168.77.5"),
        "nodes.rs0.addresses.int",
        "192.168.77.5 is not in network int (192.168.66.0/24)",
    ),
    (
        NAT,
        lambda d: d["nodes"]["rs1"]["addresses"].update(int="192.168.66.111"),
        "nodes.rs1.addresses.int",
        "already used by nodes.rs0.addresses.int",
    ),
    (
        NAT,
        lambda d: d["nodes"]["rs0"]["addresses"].update(int="192.168.66.255"),
        "nodes.rs0.addresses.int",
        "broadcast",
    ),
    (
        NAT,
        lambda d: d["services"][0].update(vip="10.1.1.1"),
        "services[0].vip",
        "on no network that all directors (lb0, lb1) share",
    ),
    (
        NAT,
        lambda d: d["services"][0].update(vip="192.168.55.200"),
        "services[0].vip",
        "already the address of nodes.cl0.addresses.ext",
    ),
    (
        NAT,
        lambda d: d["services"][0].update(scheduler="roundrobin"),
        "services[0].scheduler",
        "unknown scheduler 'roundrobin'. ipvsadm offers: rr wrr lc",
    ),
    (NAT, lambda d: rs(d).update(weight=70000), "services[0].real_servers[0].weight", "less than or equal to 65535"),
    (NAT, lambda d: rs(d).update(weight=-1), "services[0].real_servers[0].weight", "greater than or equal to 0"),
    (
        NAT,
        lambda d: d["nodes"].update(LB_2={"role": "director", "addresses": {"ext": "192.168.55.13"}}),
        "nodes.LB_2",
        "not a plain hostname",
    ),
    (TUN, lambda d: rs(d).update(port=8080), "services[0].real_servers[0].port", "tun cannot map port 80 to 8080"),
    (
        DR,
        lambda d: rs(d).update(port=8080),
        "services[0].real_servers[0].port",
        "forwarding: masq, the mode that maps ports",
    ),
    (
        DR,
        lambda d: (
            d["networks"].update(far="192.168.77.0/24"),
            d["nodes"]["rs0"]["addresses"].update(far="192.168.77.111"),
            rs(d).update(address="192.168.77.111"),
        ),
        "services[0].real_servers[0].address",
        "direct routing rewrites only the MAC address",
    ),
    (
        NAT,
        lambda d: d["nodes"]["rs0"]["addresses"].update(ext="192.168.55.111"),
        "services[0].real_servers[0].address",
        "replies would bypass the director",
    ),
    (
        TUN,
        lambda d: d["nodes"]["rs0"]["addresses"].pop("ext"),
        "services[0].real_servers[0].address",
        "answers the client cl0 directly, but they share no network",
    ),
    (
        NAT,
        lambda d: rs(d).update(address="192.168.55.11"),
        "services[0].real_servers[0].address",
        "not the address of a real_server node",
    ),
    (
        NAT,
        lambda d: d["nodes"]["rs0"]["addresses"].update(dmz="192.168.9.9"),
        "nodes.rs0.addresses.dmz",
        "there is no network 'dmz'",
    ),
    (NAT, lambda d: d["services"][0].update(protocol="sctp"), "services[0].protocol", "'tcp' or 'udp'"),
    (NAT, lambda d: d["services"][0].update(forwarding="nat"), "services[0].forwarding", "'masq', 'tun' or 'route'"),
    (NAT, lambda d: d["services"][0].update(sheduler="wrr"), "services[0].sheduler", "unknown field"),
    (NAT, lambda d: d["services"].append(copy.deepcopy(d["services"][0])), "services[4]", "is declared twice"),
    (
        NAT,
        lambda d: d["services"][0]["real_servers"].append(copy.deepcopy(rs(d))),
        "services[0].real_servers[2]",
        "192.168.66.111:80 is listed twice in this service. List each real server once per port",
    ),
    (
        SCHEDULERS,
        lambda d: d["services"][10]["real_servers"][1].update(port=8010),
        "services[10].real_servers[1]",
        "192.168.66.111:8010 is listed twice in this service",
    ),
    (NAT, lambda d: d["networks"].update(eth0="10.0.0.0/24"), "networks.eth0", "becomes an interface name"),
    (
        NAT,
        lambda d: d["networks"].update(mgmt="10.0.0.0/24"),
        "networks.mgmt",
        "the name of the lab's management network (Vagrant's SSH path). Use another name",
    ),
    (NAT, lambda d: [d["nodes"].pop(n) for n in ("cl0",)], "nodes", "the lab has no client"),
    (NAT, lambda d: d.pop("gateway"), "gateway", "NAT real servers need a floating gateway"),
    (NAT, lambda d: d.update(failover="none"), "gateway", "only a keepalived pair has a floating gateway"),
    (NAT, lambda d: d.update(gateway="192.168.66.112"), "gateway", "192.168.66.112 is already in use"),
    (NAT, lambda d: d.update(gateway="192.168.55.10"), "gateway", "not on a network of the NAT real server rs0"),
    (NAT, lambda d: d.update(failover="vrrp"), "failover", "'keepalived' or 'none'"),
    (NAT, lambda d: d["services"][0].update(check="ping"), "services[0].check", "'http', 'tcp', 'udp' or 'none'"),
    (
        NAT,
        lambda d: d["services"][0].update(protocol="udp", check="http"),
        "services[0].check",
        "keepalived cannot check a UDP service with http. Use check: udp",
    ),
    (
        NAT,
        lambda d: d["services"][0].update(check="udp"),
        "services[0].check",
        "a TCP service is not checked with datagrams",
    ),
    (
        NAT,
        lambda d: d["services"][0].update(one_packet=True),
        "services[0].one_packet",
        "one-packet scheduling is for UDP",
    ),
    (
        NAT,
        lambda d: d["services"][0].update(protocol="udp", one_packet="often"),
        "services[0].one_packet",
        "valid boolean",
    ),
    (
        NAT,
        lambda d: d["services"][0].update(sorry_server={"address": "192.168.66.99"}),
        "services[0].sorry_server.address",
        "is no node's address",
    ),
    (
        FWMARK,
        lambda d: d["services"][0].update(vip="192.168.55.100"),
        "services[0]",
        "a fwmark service lists its addresses under vips:",
    ),
    (
        NAT,
        lambda d: d["services"][0].update(vips=["192.168.55.101"]),
        "services[0]",
        "a service has one vip, or a fwmark with its vips",
    ),
    (
        FWMARK,
        lambda d: d["services"][0].update(vips=["192.168.55.100", "10.9.9.9"]),
        "services[0].vips[1]",
        "on no network that all directors (lb0, lb1) share",
    ),
    (FWMARK, lambda d: d["services"][0].update(fwmark=0), "services[0].fwmark", "greater than or equal to 1"),
    (
        NAT,
        lambda d: d["nodes"].update(
            lb2={"role": "director", "addresses": {"ext": "192.168.55.13", "int": "192.168.66.13"}}
        ),
        "nodes",
        "keepalived pairs two directors",
    ),
    # IPv6
    (
        DR,
        lambda d: d["networks"].update(ext="fd00:55::/64"),
        "networks.ext",
        "fd00:55::/64 is an IPv6 prefix, and this key holds IPv4. Give it under networks6:",
    ),
    (
        DR,
        lambda d: d["nodes"]["cl0"]["addresses"].update(ext="fd00:55::201"),
        "nodes.cl0.addresses.ext",
        "fd00:55::201 is an IPv6 address, and this key holds IPv4. Give it under the node's addresses6:",
    ),
    (DR, lambda d: d["services"][1].update(vip="fd00:55::zz"), "services[1].vip", "not a valid IPv4 or IPv6 address"),
    (DR, lambda d: d["networks6"].update(dmz="fd00:77::/64"), "networks6.dmz", "there is no network 'dmz'"),
    (DR, lambda d: d["networks6"].update(int="fd00:55::/56"), "networks6.int", "overlaps networks6.ext"),
    (
        DR,
        lambda d: d["nodes"]["cl0"]["addresses6"].update(ext="fd00:66::200"),
        "nodes.cl0.addresses6.ext",
        "fd00:66::200 is not in network ext's prefix fd00:55::/64",
    ),
    (
        DR,
        lambda d: d["nodes"]["cl0"]["addresses6"].update(int="fd00:66::200"),
        "nodes.cl0.addresses6.int",
        "cl0 has no IPv4 address on int",
    ),
    (
        DR,
        lambda d: d["nodes"]["rs0"]["addresses6"].update(ext="fd00:55::11"),
        "nodes.rs0.addresses6.ext",
        "fd00:55::11 is already used by nodes.lb0.addresses6.ext",
    ),
    (DR, lambda d: d["networks6"].pop("int"), "nodes.lb0.addresses6.int", "network 'int' has no IPv6 prefix"),
    (
        DR,
        lambda d: rs(d, 1, 1).update(address="192.168.66.112"),
        "services[1].real_servers[1].address",
        "192.168.66.112 is IPv4, the VIP is IPv6. IPVS forwards within one family",
    ),
    (
        DR,
        lambda d: rs(d, 0, 1).update(address="fd00:66::112"),
        "services[0].real_servers[1].address",
        "fd00:66::112 is IPv6, the VIP is IPv4",
    ),
    (
        DR,
        lambda d: d["services"][1].update(forwarding="tun"),
        "services[1].forwarding",
        "tun over IPv6 (ip6tnl) is not offered",
    ),
    (
        DR,
        lambda d: d["services"][1].update(protocol="udp", check="udp"),
        "services[1].protocol",
        "labkit's UDP responder answers on IPv4 only",
    ),
    (
        FWMARK,
        lambda d: d.update(failover="keepalived", gateway="192.168.66.10"),
        "services[1].forwarding",
        "NAT over IPv6 needs a floating IPv6 gateway",
    ),
    (DR, lambda d: d["nodes"]["cl0"].pop("addresses6"), "services[1].vip", "the client cl0 has no IPv6 address"),
    (
        DR,
        lambda d: d["nodes"]["rs1"]["addresses6"].pop("ext"),
        "services[1].real_servers[1].address",
        "rs1 answers the client cl0 directly over IPv6",
    ),
    (
        DR,
        lambda d: d["nodes"]["lb1"]["addresses6"].pop("int"),
        "services[1].real_servers[0].address",
        "the director lb1 reaches rs0 over IPv6 on int, but has no IPv6 address there",
    ),
    (
        DR,
        lambda d: d["nodes"]["lb1"]["addresses6"].pop("ext"),
        "services[1].vip",
        "the director lb1 has no IPv6 address on ext",
    ),
    (
        DR,
        lambda d: d["services"][1].update(vip="fd00:77::100"),
        "services[1].vip",
        "fd00:77::100 is on no network that all directors",
    ),
    (
        FWMARK,
        lambda d: d["services"][0].update(vips=["192.168.55.100", "fd00:55::101"]),
        "services[0].vips[1]",
        "fd00:55::101 is IPv6, the service's first VIP IPv4",
    ),
    (
        FWMARK,
        lambda d: d["services"][0].update(vips=["fd00:55::101"], real_servers=[{"address": "fd00:66::111"}]),
        "services[0].vips",
        "for IPv4 VIPs only",
    ),
    (
        TUN,
        lambda d: rs(d).update(port=8080),
        "services[0].real_servers[0].port",
        "Use port 80, or forwarding: masq, the mode that maps ports, "
        "or port_mapping: dnat (each real server rewrites the port itself)",
    ),
    (
        TUN,
        lambda d: d["services"][4].pop("port_mapping"),
        "services[4].real_servers[0].port",
        "tun cannot map port 8099 to 80",
    ),
    (TUN, lambda d: d["services"][0].update(tunnel="vxlan"), "services[0].tunnel", "'ipip', 'gue' or 'gre'"),
    (
        NAT,
        lambda d: d["services"][0].update(tunnel="gre"),
        "services[0].tunnel",
        "only a TUN service has it; this one is masq. Remove tunnel, or use forwarding: tun",
    ),
    (
        DR,
        lambda d: d["services"][0].update(port_mapping="dnat"),
        "services[0].port_mapping",
        "only a TUN service has it; this one is route",
    ),
    (
        TUN,
        lambda d: d["services"][0].update(tunnel="gue"),
        "services[0].tunnel_port",
        "a GUE tunnel needs the UDP port the real servers unwrap it on. Add e.g. tunnel_port: 6080",
    ),
    (
        TUN,
        lambda d: d["services"][3].update(tunnel_port=6080),
        "services[3].tunnel_port",
        "only a GUE tunnel has a port (gre has none). Remove tunnel_port, or use tunnel: gue",
    ),
    (TUN, lambda d: d["services"][0].update(tunnel_port=6080), "services[0].tunnel_port", "(ipip has none)"),
    (TUN, lambda d: d["services"][2].update(tunnel_port=0), "services[2].tunnel_port", "greater than or equal to 1"),
    (
        TUN,
        lambda d: d["services"][0].update(port_mapping="dnat"),
        "services[0].port_mapping",
        "every real server already listens on the VIP's port 80, so there is nothing to map",
    ),
    (
        FWMARK,
        lambda d: (d["services"][0].update(forwarding="tun", port_mapping="dnat"), rs(d).update(port=8080)),
        "services[0].port_mapping",
        "not of a fwmark service",
    ),
    (TUN, lambda d: d["services"][4].update(port_mapping="snat"), "services[4].port_mapping", "'dnat'"),
]


@pytest.mark.parametrize("text, change, field, message", CASES, ids=[c[2] + ":" + c[3][:30] for c in CASES])
def test_mistakes_are_named(text, change, field, message):
    with pytest.raises(LabError) as caught:
        parse_lab(edited(text, change), "labs/x/lab.yaml")
    said = str(caught.value)
    assert said.startswith(f"labs/x/lab.yaml: {field}"), said
    assert message in said, said


def test_yaml_syntax_error_names_the_line():
    with pytest.raises(LabError, match=r"labs/x/lab.yaml: line 3 is not valid YAML"):
        parse_lab("name: x\nnetworks:\n\text: 192.168.55.0/24\n", "labs/x/lab.yaml")


def test_not_a_mapping():
    with pytest.raises(LabError, match="a lab file is a YAML mapping"):
        parse_lab("- just\n- a list\n", "lab.yaml")


def test_missing_file(tmp_path: Path):
    with pytest.raises(LabError, match="cannot read the lab file"):
        load_lab(tmp_path / "lab.yaml")


def test_a_udp_service_is_checked_with_a_datagram_unless_told_otherwise():
    def udp(check=None):
        def change(d):
            d["services"][1].update(protocol="udp", one_packet=True)
            if check:
                d["services"][1]["check"] = check

        return parse_lab(edited(NAT, change), "nat").services[1]

    assert udp().check.value == "udp" and udp().one_packet
    assert udp("none").check.value == "none"
    assert parse_lab(NAT, "nat").services[1].check.value == "http"


def test_fwmark_service():
    lab = parse_lab(FWMARK, "fwmark")
    svc = lab.services[0]
    assert svc.key == "fwm 1"
    assert [str(v) for v in svc.addresses] == ["192.168.55.100", "192.168.55.101"]
    # and beside it a plain IPv6 service
    assert [str(v) for v in lab.vips] == ["192.168.55.100", "192.168.55.101", "fd00:55::100"]
    assert lab.services[1].key == "tcp [fd00:55::100]:80" and lab.services[1].ipv6


def test_dr_port_error_offers_no_port_mapping():
    with pytest.raises(LabError) as caught:
        parse_lab(edited(DR, lambda d: rs(d).update(port=8080)), "x.yaml")
    assert "port_mapping" not in str(caught.value)


def test_tun_services_and_their_tunnels():
    lab = parse_lab(TUN, "tun")
    assert [(s.tunnel_type.value, s.tunnel_port, s.port_mapping) for s in lab.services] == [
        ("ipip", None, None),
        ("ipip", None, None),
        ("gue", 6080, None),
        ("gre", None, None),
        ("ipip", None, "dnat"),
    ]
    mapped = lab.services[4]
    # IPVS keeps the VIP's port for a TUN real server (as seed 003's listing shows); nginx serves 80
    assert [(mapped.listed_port(r), mapped.real_port(r)) for r in mapped.real_servers] == [(8099, 80), (8099, 80)]
    assert parse_lab(NAT, "nat").services[1].tunnel_type is None


def test_nat_real_server_port_may_differ():
    lab = parse_lab(NAT, "nat")
    svc = lab.services[1]
    assert svc.port == 8080 and {svc.real_port(r) for r in svc.real_servers} == {80}


def test_with_weight_changes_every_service_of_the_real_server():
    from labkit.labfile import with_weight

    lab = with_weight(parse_lab(NAT, "nat"), "rs1", 0)
    assert [[rs.weight for rs in svc.real_servers] for svc in lab.services] == [[1, 0], [2, 0], [1, 0], [2, 0]]
    # the UDP services keep their check and one-packet scheduling
    assert [(s.check.value, s.one_packet) for s in lab.services[2:]] == [("udp", False), ("udp", True)]
    only = with_weight(parse_lab(NAT, "nat"), "rs0", 5, service="tcp 192.168.55.100:8080")
    assert [[rs.weight for rs in svc.real_servers] for svc in only.services] == [[1, 1], [5, 1], [1, 1], [2, 1]]
    assert only.gateway == lab.gateway and only.failover == lab.failover


def test_with_weight_names_a_container_as_show_does():
    """Seed 000's real servers are containers: web0 and web1 on lb0's bridge, web2 behind rs0's
    published port (so rs0 names it too)."""
    from labkit.labfile import with_weight

    lab = load_lab(LABS / "containers" / "lab.yaml")
    assert [rs.weight for rs in with_weight(lab, "web1", 3).services[0].real_servers] == [1, 3, 1]
    assert [rs.weight for rs in with_weight(lab, "web2", 0).services[0].real_servers] == [1, 1, 0]
    assert [rs.weight for rs in with_weight(lab, "rs0", 0).services[0].real_servers] == [1, 1, 0]
    with pytest.raises(
        LabError, match="'web9' is not a real server of the lab containers. Real servers: rs0, web0, web1, web2"
    ):
        with_weight(lab, "web9", 1)


def test_with_weight_on_a_mesh_says_it_has_no_vip():
    from labkit.labfile import with_weight

    with pytest.raises(LabkitError, match="the lab mesh is a routing mesh"):
        with_weight(load_lab(LABS / "mesh" / "lab.yaml"), "web0", 1)


@pytest.mark.parametrize(
    "args, message",
    [
        (("lb0", 1), "'lb0' is not a real server of the lab nat. Real servers: rs0, rs1"),
        (("rs0", 70000), "weight 70000 is out of range. Use 0 (drain) to 65535"),
        (("rs0", 1, "tcp 192.168.55.100:81"), "rs0 is in no service 'tcp 192.168.55.100:81'"),
    ],
)
def test_with_weight_mistakes(args, message):
    from labkit.labfile import with_weight

    with pytest.raises(LabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        with_weight(parse_lab(NAT, "nat"), *args)


def test_every_problem_at_once_each_on_its_line():
    text = edited(
        NAT,
        lambda d: (
            d["services"][0].update(vip="10.1.1.1"),
            d["nodes"]["rs1"]["addresses"].update(int="192.168.66.111"),
        ),
    )
    with pytest.raises(LabError) as caught:
        parse_lab(text, "x.yaml")
    assert str(caught.value).splitlines() == [
        "x.yaml: nodes.rs1.addresses.int: 192.168.66.111 is already used by nodes.rs0.addresses.int. "
        "Give every node its own address",
        "x.yaml: services[0].vip: 10.1.1.1 is on no network that all directors (lb0, lb1) share. "
        "Use an address in 192.168.55.0/24 or 192.168.66.0/24",
        "x.yaml: services[0].real_servers[1].address: 192.168.66.112 is not the address of a real_server node. "
        "Use one of: 192.168.66.111, 192.168.66.111",
        *(
            f"x.yaml: services[{i}].real_servers[1].address: 192.168.66.112 is not the address of a real_server node. "
            "Use one of: 192.168.66.111, 192.168.66.111"
            for i in (1, 2, 3)
        ),
    ]
    structure = edited(NAT, lambda d: (d["services"][0].update(scheduler="fastest", port=0), d.update(cpus=0)))
    with pytest.raises(LabError) as caught:
        parse_lab(structure, "x.yaml")
    assert [line.split(":")[1].strip() for line in str(caught.value).splitlines()] == [
        "cpus",
        "services[0].port",
        "services[0].scheduler",
    ]


def test_networks_that_overlap_each_other():
    text = edited(NAT, lambda d: d["networks"].update(ext="192.168.0.0/16"))
    with pytest.raises(LabError) as caught:
        parse_lab(text, "x.yaml")
    assert (
        "x.yaml: networks.int: 192.168.66.0/24 overlaps networks.ext (192.168.0.0/16). Give each network its own range"
    ) in str(caught.value).splitlines()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8 text (byte 0 is 0x89). Save the lab file as UTF-8"),
        (b"name: \xff\xfe", "not UTF-8 text (byte 6 is 0xff)"),
        (b"\xff\xfen\x00a\x00", "not UTF-8 text (byte 0 is 0xff)"),  # UTF-16
        (b"name: \xc3\xa9a\x00b\n", "line 1: character U+0000 (byte 9) is not allowed in YAML. Remove it"),
        (
            b"",
            "the file holds nothing; a lab file is a YAML mapping with networks, nodes and services. "
            "Start from labs/nat/lab.yaml",
        ),
        (b"# only a comment\n", "the file holds nothing"),
        (b"- a\n- list\n", "a lab file is a YAML mapping with networks, nodes and services"),
        (b"a: &x [1, 2]\nb: *x\n", "line 2: an alias (*x) is not allowed in a lab file. Write the value out"),
        (b"a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n", "line 2: an alias (*a) is not allowed"),  # billion laughs
        (b"nodes: " + b"[" * 100 + b"]" * 100, "line 1: nested more than 20 levels deep"),
        (b"services: [" + b"0, " * 6000 + b"0]\n", "line 1: more than 5000 values (a lab file holds a few hundred)"),
        (b"? [a, b]\n: c\n", "line 1: a key is a sequence, not a name. Use plain names as keys"),
        (b"1: x\n", "line 1: the key '1' is not a name (YAML reads it as a number). Quote it, or use a name"),
        (b"nodes:\n  yes: {}\n", "line 2: the key 'yes' is not a name (YAML reads it as true or false)"),
        (b"~: x\n", "the key '~' is not a name (YAML reads it as nothing (null))"),
        (
            b"name: a\nnetworks: {}\nname: b\n",
            "line 3: the key 'name' is given twice (first on line 1). Keep one of them",
        ),
        (
            b"!!python/object:os.system {}\n",
            "line 1: the tag !!python/object:os.system is not allowed in a lab file. Remove it",
        ),
        (b"name: !!binary aGk=\n", "line 1: the tag !!binary is not allowed in a lab file. Remove it"),
        (
            b"name: 2024-02-30\n",
            "line 1: '2024-02-30' reads as a date, but there is no such date (day is out of range "
            "for month). Write a real date, or quote it",
        ),
        (b"cpus: " + b"9" * 5000 + b"\n", "is too long a number to read. Use a smaller number"),
        (b"name: =\n", "line 1: YAML reads '=' as !!value, not as text. Quote it"),
        (
            b"name: a\n---\nname: b\n",
            "line 2: a second YAML document ('---'). A lab file holds one lab: remove the second document",
        ),
        (
            b"x" * (3 * 1024 * 1024),
            "3.0 MiB is more than a lab file may be (1 MiB; the shipped labs are under 2 KiB). "
            "Give the path of a lab.yaml",
        ),
    ],
)
def test_any_bytes_get_one_clear_error(tmp_path, content, message):
    path = tmp_path / "lab.yaml"
    path.write_bytes(content)
    with pytest.raises(LabError) as caught:
        load_lab(path)
    said = str(caught.value)
    assert said.startswith(f"{path}: ") and message in said, said
    assert len(said.splitlines()) == 1, said


def test_every_key_problem_at_once():
    text = "name: a\nyes: 1\nnodes:\n  1: {}\n  lb0: {}\n  lb0: {}\n"
    with pytest.raises(LabError) as caught:
        parse_lab(text, "x.yaml")
    assert caught.value.source == "x.yaml"
    assert caught.value.problems == [
        "line 2: the key 'yes' is not a name (YAML reads it as true or false). Quote it, or use a name",
        "line 4: the key '1' is not a name (YAML reads it as a number). Quote it, or use a name",
        "line 6: the key 'lb0' is given twice (first on line 5). Keep one of them",
    ]
    assert str(caught.value).splitlines() == [f"x.yaml: {p}" for p in caught.value.problems]


def test_a_name_with_a_newline_stays_on_its_line():
    text = edited(NAT, lambda d: d["services"][0].update({"sched\nuler": "rr"}))
    with pytest.raises(LabError) as caught:
        parse_lab(text, "x.yaml")
    assert str(caught.value).splitlines() == [
        "x.yaml: services[0].sched\\nuler: unknown field. Check its spelling against labs/nat/lab.yaml"
    ]


def test_schedulers_are_ipvsadms_and_print_as_ipvsadm_names_them():
    assert " ".join(s.value for s in Scheduler) == "rr wrr lc wlc lblc lblcr dh sh sed nq mh fo ovf"
    svc = parse_lab(NAT, "nat").services[1]
    assert svc.scheduler is Scheduler.wrr and svc.scheduler == "wrr"
    assert (f"-s {svc.scheduler}", str(svc.scheduler)) == ("-s wrr", "wrr")


def test_the_scheduler_lab_has_every_scheduler_and_a_server_on_two_ports():
    lab = load_lab(LABS / "schedulers" / "lab.yaml")
    assert lab.directors == ["lb0"] and not lab.ha
    assert {s.scheduler for s in lab.services} == set(Scheduler)
    sh = next(s for s in lab.services if s.scheduler == Scheduler.sh)
    assert [(str(r.address), sh.real_port(r)) for r in sh.real_servers] == [
        ("192.168.66.111", 8010),
        ("192.168.66.111", 8110),
        ("192.168.66.112", 8010),
    ]
