"""keepalived.conf as labkit writes it for a director pair."""

import re

import yaml

from labkit.labfile import LABS, load_lab, parse_lab
from labkit.plan.keepalived import config, instances, sync_interface, takeover_bound, vrrp_states


def lab(name, change=None):
    data = yaml.safe_load((LABS / name / "lab.yaml").read_text())
    if change:
        change(data)
    return parse_lab(yaml.safe_dump(data), name) if change else load_lab(LABS / name / "lab.yaml")


def blocks(text, kind):
    """name -> body of each top-level block of a kind (vrrp_instance, virtual_server)."""
    return {m[1]: m[2] for m in re.finditer(rf"^{kind} (.+?) {{\n(.*?)^}}", text, re.M | re.S)}


def test_nat_pair_moves_vip_and_gateway_together():
    nat = lab("nat")
    assert [(i.name, i.interface, str(i.address)) for i in instances(nat)] == [
        ("VIP_192_168_55_100", "ext", "192.168.55.100"),
        ("GATEWAY", "int", "192.168.66.10"),
    ]
    text = config(nat, "lb0")
    assert "vrrp_sync_group LABKIT {\n    group {\n        VIP_192_168_55_100\n        GATEWAY\n" in text
    vrrp = blocks(text, "vrrp_instance")
    assert "192.168.66.10/32 dev int" in vrrp["GATEWAY"]


def test_lb0_is_preferred():
    nat = lab("nat")
    lb0, lb1 = (blocks(config(nat, d), "vrrp_instance") for d in ("lb0", "lb1"))
    for name in lb0:
        assert "state MASTER" in lb0[name] and "priority 150" in lb0[name]
        assert "state BACKUP" in lb1[name] and "priority 100" in lb1[name]
        assert "advert_int 1" in lb0[name]
        assert lb0[name].replace("MASTER", "BACKUP").replace("150", "100") == lb1[name]


def test_virtual_servers_carry_the_lab_services():
    servers = blocks(config(lab("nat"), "lb1"), "virtual_server")
    assert set(servers) == {"192.168.55.100 80", "192.168.55.100 8080", "192.168.55.100 9000", "192.168.55.100 9001"}
    mapped = servers["192.168.55.100 8080"]
    assert "lb_algo wrr" in mapped and "lb_kind NAT" in mapped
    # port mapping: the VIP's 8080 goes to the real servers' 80, which is also what is checked
    assert "real_server 192.168.66.111 80 {\n        weight 2\n        HTTP_GET" in mapped
    tun = blocks(config(lab("tun"), "lb0"), "virtual_server")
    assert set(tun) == {
        "192.168.55.100 80",
        "192.168.55.101 80",
        "192.168.55.102 80",
        "192.168.55.103 80",
        "192.168.55.104 8099",
    }
    assert [re.search(r"lb_kind (.*)", body)[1] for body in tun.values()] == [
        "TUN",
        "TUN",
        "TUN type gue port 6080 nocsum",
        "TUN type gre nocsum",
        "TUN",
    ]
    assert "lb_kind DR" in config(lab("dr"), "lb0")


def test_tun_port_mapping_checks_the_port_served():
    """keepalived gives a TUN real server the VIP's port whatever the file says ("ports don't
    match - resetting"), so it is written that way, and the check goes to the real port."""
    mapped = blocks(config(lab("tun"), "lb0"), "virtual_server")["192.168.55.104 8099"]
    assert "real_server 192.168.66.111 8099 {\n        weight 2\n        HTTP_GET {" in mapped
    assert mapped.count("connect_port 80\n") == 2
    assert "connect_port" not in blocks(config(lab("tun"), "lb0"), "virtual_server")["192.168.55.100 80"]


def test_one_vrrp_instance_per_vip():
    tun = lab("tun")
    assert [i.name for i in instances(tun)] == [f"VIP_192_168_55_10{i}" for i in range(5)]
    assert len({i.router_id for i in instances(tun)}) == 5
    # one VIP: no sync group of one
    assert "vrrp_sync_group" not in config(lab("dr", lambda d: d["services"].pop(1)), "lb0")


def test_an_ipv6_vip_has_its_own_instance_and_virtual_server():
    dr = lab("dr")
    assert [(i.name, str(i.address)) for i in instances(dr)] == [
        ("VIP_192_168_55_100", "192.168.55.100"),
        ("VIP_fd00_55__100", "fd00:55::100"),
    ]
    text = config(dr, "lb0")
    assert "fd00:55::100/128 dev ext" in blocks(text, "vrrp_instance")["VIP_fd00_55__100"]
    servers = blocks(text, "virtual_server")
    assert "real_server fd00:66::111 80 {" in servers["fd00:55::100 80"]
    assert "lb_kind DR" in servers["fd00:55::100 80"]


def test_connection_sync_runs_off_the_vip_network():
    assert sync_interface(lab("nat")) == "int"
    assert "lvs_sync_daemon int VIP_192_168_55_100 id 1" in config(lab("nat"), "lb0")


def test_checks_and_sorry_server():
    def tcp_and_sorry(d):
        d["services"][0]["check"] = "tcp"
        d["services"][0]["sorry_server"] = {"address": "192.168.66.11"}
        d["services"][1]["check"] = "none"

    servers = blocks(config(lab("nat", tcp_and_sorry), "lb0"), "virtual_server")
    assert "TCP_CHECK {" in servers["192.168.55.100 80"] and "HTTP_GET" not in servers["192.168.55.100 80"]
    assert "sorry_server 192.168.66.11 80" in servers["192.168.55.100 80"]
    assert "CHECK" not in servers["192.168.55.100 8080"] and "HTTP_GET" not in servers["192.168.55.100 8080"]
    assert "alpha" not in servers["192.168.55.100 8080"]


def test_udp_services_are_checked_with_a_datagram_answered_by_the_server_name():
    servers = blocks(config(lab("nat"), "lb0"), "virtual_server")
    udp = servers["192.168.55.100 9000"]
    assert "protocol UDP" in udp and "HTTP_GET" not in udp and "ops" not in udp
    # "labkit" out; "rs0" and "rs1" back, exactly
    assert (
        "real_server 192.168.66.111 9000 {\n        weight 1\n        UDP_CHECK {\n"
        "            connect_timeout 2\n            retry 1\n            delay_before_retry 1\n"
        "            payload 6c61626b6974\n            require_reply 727330\n"
        "            min_reply_length 3\n            max_reply_length 3\n        }"
    ) in udp
    assert "require_reply 727331" in udp
    assert "\n    ops\n" in servers["192.168.55.100 9001"]
    assert "ops" not in servers["192.168.55.100 80"]


def test_fwmark_virtual_server():
    fw = lab("fwmark", lambda d: (d.update(failover="keepalived", gateway="192.168.66.10"), d["services"].pop(1)))
    servers = blocks(config(fw, "lb0"), "virtual_server")
    assert list(servers) == ["fwmark 1"]
    assert [i.name for i in instances(fw)] == ["VIP_192_168_55_100", "VIP_192_168_55_101", "GATEWAY"]


def test_vrrp_states_from_the_data_dump():
    dump = """------< VRRP Topology >------
 VRRP Instance = VIP_192_168_55_100
   VRRP Version = 2
   State = MASTER
   Flags: none
 VRRP Instance = GATEWAY
   State = BACKUP
------< VRRP Sync groups >------
 VRRP Sync Group = LABKIT, MASTER
"""
    assert vrrp_states(dump) == {"VIP_192_168_55_100": "MASTER", "GATEWAY": "BACKUP"}


def test_takeover_bound_follows_rfc_3768():
    # three missed adverts of 1 s, plus (256 - 100) / 256 s of skew for lb1's priority 100
    assert takeover_bound(lab("nat")) == 3 + 156 / 256
