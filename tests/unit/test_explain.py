"""labkit explain: the plan as commands a person would type, with their reasons."""

import subprocess

import pytest

from labkit.describe.explain import walkthrough
from labkit.labfile import LABS, load_lab
from labkit.plan.guest import HELPERS, PRELUDE, PROGRAMS
from labkit.plan.steps import plan


def lab(name):
    return load_lab(LABS / name / "lab.yaml")


def flat(name, node):
    return [line for _, lines in walkthrough(lab(name), node) for line in lines]


def test_every_step_has_a_reason_and_a_command():
    for name in ("nat", "tun", "dr", "fwmark"):
        for node in lab(name).nodes:
            for why, lines in walkthrough(lab(name), node):
                assert why and lines


def test_files_are_shown_as_their_text():
    lines = flat("nat", "lb0")
    start = lines.index("cat > /etc/keepalived/keepalived.conf <<'EOF'")
    assert lines[start + 1] == "# Written by labkit from the lab file; labkit provision rewrites it."
    assert "    router_id lb0" in lines[start:]


def test_helpers_become_plain_commands():
    lines = flat("tun", "rs0")
    assert "modprobe ipip" in lines
    assert "ip addr replace 192.168.55.100/32 dev tunl0" in lines
    assert "head -c 1048576 /dev/urandom > /var/www/labkit/1m.bin" in lines
    assert not [line for line in lines if line.startswith(("put ", "same ", "name_link", "random_file"))]


def test_seed_003s_port_mapping_is_explained():
    steps = dict((why, lines) for why, lines in walkthrough(lab("tun"), "rs1"))
    rule = (
        "iptables -t nat -A PREROUTING -d 192.168.55.104/32 -p tcp --dport 8099 "
        "-j DNAT --to-destination 192.168.55.104:80"
    )
    assert steps["port_mapping: dnat: requests to 192.168.55.104:8099 go to this real server's port 80"] == [rule]
    lines = flat("tun", "rs1")
    assert "ip fou add port 6080 gue" in lines and "ip link set gre0 up" in lines


def test_fwmark_marks_come_before_the_rules():
    lines = flat("fwmark", "lb1")
    marks = [i for i, line in enumerate(lines) if "--set-mark 1" in line]
    assert len(marks) == 2
    assert marks[-1] < lines.index("ipvsadm-restore < /etc/ipvsadm.rules")
    assert "-A -f 1 -s rr" in lines


@pytest.mark.parametrize("name", ["nat", "tun", "dr", "fwmark", "schedulers"])
def test_every_step_calls_a_helper_or_a_known_program(name):
    """What the script runs and what explain shows come from one list: a step calls a check
    helper in `unless`, and a command helper (which explain can show) or a known program."""
    lab_ = lab(name)
    for node in lab_.nodes:
        for step in plan(lab_, node):
            check = step.unless[0]
            assert check in PROGRAMS or (check in HELPERS and HELPERS[check].shown is None), (node, step.why, check)
            for words in step.commands:
                assert words[0] in PROGRAMS or (words[0] in HELPERS and HELPERS[words[0]].shown is not None), (
                    node,
                    step.why,
                    words[0],
                )


def test_the_prelude_defines_every_helper():
    names = " ".join(HELPERS)
    result = subprocess.run(
        ["sh", "-c", PRELUDE + f"for f in {names}; do command -V $f; done"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("is a shell function") == len(HELPERS), result.stdout
