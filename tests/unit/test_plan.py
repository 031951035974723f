"""The plan: which steps each node gets, and the shell script that runs them."""

import subprocess
from pathlib import Path

import pytest
import yaml

from labkit.labfile import LABS, load_lab, parse_lab
from labkit.plan.guest import PRELUDE
from labkit.plan.steps import RULES_FILE, gateway_routes, plan, script, sysctls


def lab(name):
    return load_lab(LABS / name / "lab.yaml")


def single_director(name):
    """The shipped lab as the seeds build it: one director, rules pushed with ipvsadm."""
    data = yaml.safe_load((LABS / name / "lab.yaml").read_text())
    data["failover"] = "none"
    data.pop("gateway", None)
    return parse_lab(yaml.safe_dump(data), f"{name}-single")


def commands(lab_name, node, make=lab):
    return [" ".join(c) for step in plan(make(lab_name), node) for c in step.commands]


def test_nat_real_servers_route_clients_via_the_floating_gateway():
    assert gateway_routes(lab("nat"), "rs0") == {"192.168.55.0/24": "192.168.66.10"}
    assert "ip route replace 192.168.55.0/24 via 192.168.66.10" in commands("nat", "rs1")


def test_single_nat_director_is_the_real_servers_gateway():
    assert gateway_routes(single_director("nat"), "rs0") == {"192.168.55.0/24": "192.168.66.11"}


def test_a_pair_runs_keepalived_and_pushes_no_rules():
    for node in ("lb0", "lb1"):
        done = commands("nat", node)
        assert "apply_config keepalived" in done
        assert not [c for c in done if RULES_FILE in c or "192.168.55.100/32" in c]


def test_single_director_pushes_rules_and_holds_the_vip():
    assert f"ipvs_load {RULES_FILE}" in commands("nat", "lb1", single_director)
    assert "ip addr replace 192.168.55.100/32 dev ext" in commands("nat", "lb0", single_director)
    assert not [c for c in commands("nat", "lb1", single_director) if "192.168.55.100/32" in c]
    assert "apply_config keepalived" not in commands("nat", "lb0", single_director)


def test_tun_and_dr_real_servers_need_no_gateway():
    assert gateway_routes(lab("tun"), "rs0") == {}
    assert gateway_routes(lab("dr"), "rs0") == {}


def test_vip_placement():
    assert "ip addr replace 192.168.55.100/32 dev tunl0" in commands("tun", "rs0")
    assert "ip addr replace 192.168.55.101/32 dev tunl0" in commands("tun", "rs0")
    assert "ip addr replace 192.168.55.100/32 dev lo" in commands("dr", "rs1")
    assert not [c for c in commands("nat", "rs0") if "192.168.55.100" in c]


def test_sysctls_per_mode():
    assert sysctls(lab("nat"), "lb0") == {"net.ipv4.ip_forward": "1", "net.ipv4.vs.sloppy_tcp": "1"}
    assert sysctls(single_director("nat"), "lb0") == {"net.ipv4.ip_forward": "1"}
    assert sysctls(lab("tun"), "lb0") == {"net.ipv4.vs.sloppy_tcp": "1", "net.ipv4.vs.conn_reuse_mode": "3"}
    assert sysctls(single_director("tun"), "lb0") == {"net.ipv4.vs.conn_reuse_mode": "3"}
    assert sysctls(lab("tun"), "rs0") == {
        "net.ipv4.conf.all.arp_ignore": "1",
        "net.ipv4.conf.all.arp_announce": "2",
        "net.ipv4.conf.tunl0.arp_ignore": "1",
        "net.ipv4.conf.tunl0.arp_announce": "2",
        "net.ipv4.conf.gre0.arp_ignore": "1",
        "net.ipv4.conf.gre0.arp_announce": "2",
        "net.ipv4.conf.all.rp_filter": "0",
        "net.ipv4.conf.tunl0.rp_filter": "0",
        "net.ipv4.conf.gre0.rp_filter": "0",
    }
    dr = sysctls(lab("dr"), "rs0")
    assert dr["net.ipv4.conf.lo.arp_ignore"] == "1" and dr["net.ipv4.conf.int.rp_filter"] == "0"
    assert sysctls(lab("nat"), "rs0") == {}


def test_ipip_only_where_tunnels_end():
    assert "modprobe ipip" in commands("tun", "rs0")
    assert "modprobe ipip" not in commands("dr", "rs0")
    assert "modprobe ip_vs" in commands("dr", "lb1")


def test_every_step_has_a_check_and_a_reason():
    for name in ("nat", "tun", "dr"):
        for node in lab(name).nodes:
            for step in plan(lab(name), node):
                assert step.unless and step.commands and step.why


SHIPPED = sorted(path.parent.name for path in LABS.glob("*/lab.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("make", [lab, single_director])
def test_scripts_are_valid_sh(name, make):
    for node in make(name).nodes:
        result = subprocess.run(["sh", "-n"], input=script(plan(make(name), node)), text=True, capture_output=True)
        assert result.returncode == 0, result.stderr


def test_lab_values_are_quoted():
    step = plan(lab("nat"), "rs0")[1]
    hostile = type(step)("why; rm -rf /", ("hostname_is", "x; reboot"), (("set_hostname", "$(reboot)"),))
    text = script([hostile])
    assert "if ! hostname_is 'x; reboot'; then" in text
    assert "  set_hostname '$(reboot)'" in text
    assert "current='why; rm -rf /'" in text


def run_prelude(body: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", PRELUDE + body], capture_output=True, text=True, cwd=tmp_path)


def test_file_steps_write_once(tmp_path):
    target = tmp_path / "etc" / "conf"
    from labkit.plan.steps import _file

    step = _file("a file", str(target), "hello\n")
    first = run_prelude(script([step]).removeprefix(PRELUDE), tmp_path)
    second = run_prelude(script([step]).removeprefix(PRELUDE), tmp_path)
    assert target.read_text() == "hello\n"
    assert first.stdout == "labkit-changed: a file\n"
    assert second.stdout == ""


def test_checks_start_few_processes(tmp_path):
    """The checks that read /sys/class/net instead of starting ip, and all sysctls with one
    sysctl, run in sh against this machine's own loopback and settings."""
    forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
    mac = Path("/sys/class/net/lo/address").read_text().strip()
    checks = {
        f"sysctls_are net.ipv4.ip_forward={forward} net.ipv4.conf.lo.forwarding={forward}": True,
        f"sysctls_are net.ipv4.ip_forward={1 - int(forward)}": False,
        "sysctls_are net.ipv4.no_such_setting=1": False,
        "link_up lo": True,
        "link_up labkit-none": False,
        f"link_named lo {mac}": True,
        "link_named lo 52:54:00:00:00:01": False,
        "has_addr lo 127.0.0.1/8": True,
        "has_addr lo 127.0.0.2/8": False,
        "has_addr labkit-none 127.0.0.1/8": False,
    }
    for check, holds in checks.items():
        result = run_prelude(f"if {check}; then echo yes; else echo no; fi", tmp_path)
        assert result.stdout == ("yes\n" if holds else "no\n"), f"{check}: {result.stdout}{result.stderr}"


def test_failed_step_is_named(tmp_path):
    from labkit.plan.steps import Step

    broken = Step("the impossible", ("false",), (("false",),))
    result = run_prelude(script([broken]).removeprefix(PRELUDE), tmp_path)
    assert result.returncode != 0
    assert "labkit-failed: the impossible" in result.stderr


def test_fwmark_directors_mark_both_vips():
    for node in ("lb0", "lb1"):  # the standby too: it needs the marks the moment it takes over
        done = commands("fwmark", node)
        for vip in ("192.168.55.100", "192.168.55.101"):
            assert (f"iptables -t mangle -A PREROUTING -d {vip}/32 -p tcp --dport 80 -j MARK --set-mark 1") in done
    assert not [c for c in commands("nat", "lb0") if "MARK" in c]


def test_fwmark_rule_check_is_the_same_rule():
    step = next(s for s in plan(lab("fwmark"), "lb0") if s.commands[0][0] == "iptables")
    assert step.unless == ("iptables", "-t", "mangle", "-C", *step.commands[0][4:])


def test_udp_real_servers_run_the_responder_on_their_udp_ports():
    from labkit.plan.steps import RESPONDER, RESPONDER_UNIT_FILE, nginx_site, responder_unit

    nat = lab("nat")
    steps = plan(nat, "rs1")
    assert "python3" in steps[0].unless  # the responder's interpreter
    assert f"ExecStart={RESPONDER} rs1 9000 9001\n" in responder_unit(nat, "rs1")
    assert "listen 80;" in nginx_site(nat, "rs1") and "9000" not in nginx_site(nat, "rs1")
    files = [s.commands[0][1] for s in steps if s.commands[0][0] == "put"]
    assert RESPONDER in files and RESPONDER_UNIT_FILE in files
    run = next(s for s in steps if ("apply_config", "labkit-udp") in s.commands)
    # restarted when the program or the unit changed, or when it is not running
    assert run.unless == ("applied", "labkit-udp", RESPONDER_UNIT_FILE, RESPONDER)
    assert run.commands[0] == ("systemctl", "daemon-reload")
    for name in ("tun", "dr", "fwmark"):
        assert not [s for s in plan(lab(name), "rs0") if "labkit-udp" in s.unless]
        assert "python3" not in plan(lab(name), "rs0")[0].unless


def test_the_responder_answers_with_the_name_from_the_address_asked(tmp_path):
    """The program the real servers run, run here: each port answers every datagram with the
    name, from the address the datagram was sent to (a TUN or DR real server is asked at the
    VIP, which it holds besides its own address)."""
    import socket
    import sys
    import time

    from labkit.plan import responder

    ports = []
    for _ in range(2):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    process = subprocess.Popen([sys.executable, responder.__file__, "rs7", *map(str, ports)])
    try:
        seen = []
        for address, port in (("127.0.0.1", ports[0]), ("127.0.0.2", ports[1])):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.settimeout(0.2)
                for _ in range(50):  # until it listens
                    client.sendto(b"labkit", (address, port))
                    try:
                        seen.append(client.recvfrom(2048))
                        break
                    except (TimeoutError, ConnectionRefusedError):
                        time.sleep(0.1)
        assert seen == [(b"rs7", ("127.0.0.1", ports[0])), (b"rs7", ("127.0.0.2", ports[1]))]
    finally:
        process.kill()
        process.wait()


def test_ipv6_addresses_are_given_without_duplicate_address_detection():
    done = commands("dr", "rs0")
    assert "sysctl -q -w net.ipv6.conf.int.disable_ipv6=0" in done
    assert "ip addr replace fd00:66::111/64 dev int nodad" in done
    # DR over IPv6: the VIP on lo as a /128
    assert "ip addr replace fd00:55::100/128 dev lo nodad" in done
    assert "ip addr replace 192.168.55.100/32 dev lo" in done


def test_ipv6_nat_director_forwards_and_real_servers_route_back_through_it():
    fwmark = lab("fwmark")
    assert sysctls(fwmark, "lb0") == {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"}
    assert gateway_routes(fwmark, "rs0") == {"192.168.55.0/24": "192.168.66.11", "fd00:55::/64": "fd00:66::11"}
    assert "ip route replace fd00:55::/64 via fd00:66::11" in commands("fwmark", "rs1")
    assert "ip addr replace fd00:55::100/128 dev ext nodad" in commands("fwmark", "lb0")
    # DR forwards nothing itself
    assert "net.ipv6.conf.all.forwarding" not in sysctls(lab("dr"), "lb0")


def tun_with(**service):
    """The tun lab with only its first service, changed."""
    data = yaml.safe_load((LABS / "tun" / "lab.yaml").read_text())
    data["services"] = [{**data["services"][0], **service}]
    return parse_lab(yaml.safe_dump(data), "tun-changed")


def test_each_tunnel_type_gets_its_decapsulation():
    ipip, gue, gre = (
        commands("x", "rs0", lambda _, kind=kind: tun_with(**kind))
        for kind in ({}, {"tunnel": "gue", "tunnel_port": 7000}, {"tunnel": "gre"})
    )
    assert "modprobe ipip" in ipip and "ip link set tunl0 up" in ipip
    assert not [c for c in ipip if "fou" in c or "gre" in c]
    # GUE's payload is IP-in-IP: fou takes it out of UDP and hands it to tunl0
    assert {
        "modprobe ipip",
        "modprobe fou",
        "ip link set tunl0 up",
        "ip fou add port 7000 gue",
        "ip addr replace 192.168.55.100/32 dev tunl0",
    } <= set(gue)
    assert {"modprobe ip_gre", "ip link set gre0 up", "ip addr replace 192.168.55.100/32 dev gre0"} <= set(gre)
    assert not [c for c in gre if "ipip" in c or "tunl0" in c]
    assert sysctls(tun_with(tunnel="gre"), "rs0")["net.ipv4.conf.gre0.rp_filter"] == "0"
    fou = next(s for s in plan(tun_with(tunnel="gue", tunnel_port=7000), "rs0") if s.commands[0][:2] == ("ip", "fou"))
    assert fou.unless == ("fou_port", "7000")


def test_fou_port_check_reads_ip_fou_show(tmp_path):
    (tmp_path / "ip").write_text('#!/bin/sh\necho "port 6080 gue"\n')
    (tmp_path / "ip").chmod(0o755)
    check = f"PATH={tmp_path}:$PATH; fou_port 6080 && echo yes; fou_port 608 || echo no"
    assert run_prelude(check.replace("export PATH", ""), tmp_path).stdout.split()[-2:] == ["yes", "no"]


def test_port_mapping_is_a_dnat_rule_on_each_real_server():
    for node in ("rs0", "rs1"):
        steps = [s for s in plan(lab("tun"), node) if "DNAT" in s.commands[0]]
        rule = (
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-d",
            "192.168.55.104/32",
            "-p",
            "tcp",
            "--dport",
            "8099",
            "-j",
            "DNAT",
            "--to-destination",
            "192.168.55.104:80",
        )
        assert [s.commands for s in steps] == [(("iptables", *rule),)]
        assert steps[0].unless == ("iptables", *("-C" if w == "-A" else w for w in rule))
        assert "8099" in steps[0].why and "port 80" in steps[0].why
        assert "iptables" in plan(lab("tun"), node)[0].unless  # the tool is installed if missing
    assert not [c for c in commands("tun", "lb0") if "DNAT" in c]
    assert not [c for c in commands("x", "rs0", lambda _: tun_with()) if "DNAT" in c or "iptables" in c]
