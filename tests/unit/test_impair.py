"""Link impairment: the lab file's `impair:` and `labkit fail LAB NETWORK --delay/--loss/--rate`,
checked before any VM is touched; the tc commands they become."""

import subprocess

import pytest
from typer.testing import CliRunner

from labkit.cli import app
from labkit.errors import LabkitError
from labkit.labfile import read_lab
from labkit.labfile.model import Impairment
from labkit.operate import failover
from labkit.operate.failover import Impair, Load, Report, Request
from labkit.plan.guest import PRELUDE
from labkit.plan.steps import plan


def dr_with(tmp_path, impair: str):
    text = read_lab("dr").model_dump_json()  # the shipped lab, as data
    import json

    import yaml

    data = json.loads(text)
    data["impair"] = yaml.safe_load(impair)
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_an_impairment_becomes_netem_on_every_node_of_the_network():
    lab = read_lab("dr").model_copy(update={"impair": {"int": Impairment(delay="20ms", loss="1%")}})
    commands = failover.impair_commands(lab, "int", lab.impair["int"])
    assert sorted(commands) == ["lb0", "lb1", "rs0", "rs1"]  # cl0 is on ext only
    assert commands["rs0"] == [
        "sudo",
        "-n",
        "tc",
        "qdisc",
        "replace",
        "dev",
        "int",
        "root",
        "handle",
        "8000:",
        "netem",
        "delay",
        "20ms",
        "loss",
        "1%",
    ]


def test_the_lab_files_impairment_is_a_step_of_every_node_with_its_own_handle():
    """up and provision put the lab file's netem on with a handle made from its values; on a
    link it does not impair, they take off any netem (labkit fail's, handle 8000:)."""
    impairment = Impairment(delay="20ms", loss="1%")
    lab = read_lab("dr").model_copy(update={"impair": {"int": impairment}})
    handle = impairment.handle()
    assert handle == Impairment(delay="20ms", loss="1%").handle() != Impairment(delay="21ms", loss="1%").handle()
    assert 1 <= int(handle.rstrip(":"), 16) <= 0x7FFF and handle != failover.FAIL_HANDLE
    (lb0,) = [s for s in plan(lab, "lb0") if s.unless[0] == "netem_only"]
    assert lb0.unless == ("netem_only", f"int={handle}")
    assert sorted(lb0.commands) == [("netem_off", "ext"), ("netem_put", "int", handle, "delay", "20ms", "loss", "1%")]
    (cl0,) = [s for s in plan(lab, "cl0") if s.unless[0] == "netem_only"]  # on ext only
    assert cl0.unless == ("netem_only",) and cl0.commands == (("netem_off", "ext"),)


@pytest.mark.parametrize(
    "shown, want, holds",
    [
        ("qdisc fq_codel 0: dev ext root refcnt 2 limit 10240p", "", True),
        ("qdisc netem 8000: dev ext root refcnt 2 limit 1000 delay 20ms", "", False),
        ("qdisc netem 1a2b: dev int root refcnt 2 limit 1000 delay 20ms", "int=1a2b:", True),
        ("qdisc netem 8000: dev int root refcnt 2 limit 1000 delay 20ms", "int=1a2b:", False),
        ("qdisc fq_codel 0: dev int root refcnt 2 limit 10240p", "int=1a2b:", False),
        ("qdisc netem 1a2b: dev ext root refcnt 2 limit 1000 delay 20ms", "int=1a2b:", False),
    ],
)
def test_the_netem_check_reads_tc_qdisc_show(tmp_path, shown, want, holds):
    (tmp_path / "tc").write_text(f"#!/bin/sh\necho 'qdisc noqueue 0: dev lo root refcnt 2'\necho '{shown}'\n")
    (tmp_path / "tc").chmod(0o755)
    check = f"PATH={tmp_path}:$PATH; if netem_only {want}; then echo yes; else echo no; fi"
    result = subprocess.run(["sh", "-c", PRELUDE + check], capture_output=True, text=True)
    assert result.stdout == ("yes\n" if holds else "no\n"), result.stderr


@pytest.mark.parametrize(
    "impair, says",
    [
        ("{int: {loss: 101%}}", "impair.int.loss: loss '101%': give a share from 0% to 100%"),
        ("{int: {delay: -5ms}}", "impair.int.delay: delay '-5ms': give a time of 0 or more"),
        ("{int: {rate: fast}}", "impair.int.rate: rate 'fast': give a rate such as 10mbit"),
        ("{wan: {delay: 5ms}}", "impair: there is no network 'wan'. Impair one of the lab's networks (ext, int)"),
    ],
)
def test_a_bad_impairment_in_the_lab_file_is_one_line(tmp_path, impair, says):
    result = CliRunner().invoke(app, ["explain", str(dr_with(tmp_path, impair))])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert says in line


def test_a_good_impairment_reads(tmp_path):
    assert read_lab(str(dr_with(tmp_path, "{int: {delay: 20ms, loss: 0.5%, rate: 10mbit}}"))).impair["int"].netem() == [
        "delay",
        "20ms",
        "loss",
        "0.5%",
        "rate",
        "10mbit",
    ]


@pytest.mark.parametrize(
    "network, delay, loss, rate, says",
    [
        ("wan", "20ms", None, None, "the lab dr has no network 'wan'. Networks: ext, int"),
        ("int", None, None, None, "int: say how to impair it: --delay 20ms, --loss 1% or --rate 10mbit"),
        ("int", None, "150%", None, "loss '150%': give a share from 0% to 100%, such as 1% (--loss)"),
        ("int", "-1ms", None, None, "delay '-1ms': give a time of 0 or more"),
    ],
)
def test_fail_on_a_network_with_bad_values_says_what_is_wrong(network, delay, loss, rate, says):
    with pytest.raises(LabkitError, match=None) as found:
        failover.impairment_for(read_lab("dr"), network, delay, loss, rate)
    assert says in str(found.value)


def test_what_the_client_saw_under_impairment_has_its_answer_times():
    requests = [Request(i * 0.1, i * 0.1 + (0.045 if i < 99 else 0.3), "rs0") for i in range(100)]
    report = Report(Impair("int", Impairment(delay="20ms")), "tcp 192.168.55.100:80", Load(requests))
    lines = report.lines()
    assert lines[0] == "network int impaired (delay 20ms), under load against tcp 192.168.55.100:80:"
    assert "  answer time: median 45 ms, 99th percentile 300 ms" in lines
