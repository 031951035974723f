"""The plan: which steps each node gets, and the shell script that runs them."""

import subprocess

import pytest

import yaml

from labkit.labfile import LABS, load_lab, parse_lab
from labkit.build.guest import PRELUDE
from labkit.build.plan import RULES_FILE, gateway_routes, plan, script, sysctls


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
        "net.ipv4.conf.all.arp_ignore": "1", "net.ipv4.conf.all.arp_announce": "2",
        "net.ipv4.conf.tunl0.arp_ignore": "1", "net.ipv4.conf.tunl0.arp_announce": "2",
        "net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.tunl0.rp_filter": "0",
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


@pytest.mark.parametrize("name", ["nat", "tun", "dr", "fwmark", "schedulers"])
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
    from labkit.build.plan import _file
    step = _file("a file", str(target), "hello\n")
    first = run_prelude(script([step]).removeprefix(PRELUDE), tmp_path)
    second = run_prelude(script([step]).removeprefix(PRELUDE), tmp_path)
    assert target.read_text() == "hello\n"
    assert first.stdout == "labkit-changed: a file\n"
    assert second.stdout == ""


def test_failed_step_is_named(tmp_path):
    from labkit.build.plan import Step
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
