"""The mesh lab (seed 001) on real VMs, booted once: verify with its failure scenario (a task
stopped and taken out of every node's IPVS service), the overlay's flooding deleted on one node
and caught, `labkit fail`/`heal` of a task under the client's load, a second provision that
changes nothing, and `labkit down` leaving nothing.
"""

import json
import re
import shlex
import subprocess

import pytest
from test_labs import booted, down_leaves_nothing, labkit, provision_changes_nothing, verify_runs_every_pinned_check

from labkit.home import lab_dir
from labkit.operate import faults

pytestmark = pytest.mark.lab

NAME = "mesh"


@pytest.fixture(scope="module")
def up():
    yield from booted(NAME)


def test_up(up):
    assert up.returncode == 0, up.stderr
    assert f"{NAME} is up" in up.stdout


def test_verify_runs_every_pinned_check_and_they_pass(up):
    result = verify_runs_every_pinned_check(NAME)
    assert "seconds_until_taken_out_everywhere" in result.stdout


def test_show_reads_every_node_s_ingress_namespace(up):
    result = labkit("show", NAME, "--json")
    assert result.returncode == 0, result.stderr
    nodes = json.loads(result.stdout)["directors"]
    assert [n["name"] for n in nodes] == ["n0", "n1", "n2"] and {n["namespace"] for n in nodes} == {"ingress_sbox"}
    for node in nodes:
        (svc,) = node["services"]
        assert svc["fwmark"] == 256, svc
        assert sorted(d["address"] for d in svc["real_servers"]) == [f"10.255.0.{i}" for i in (5, 6, 7, 8)], svc
    table = labkit("show", NAME)
    assert "10.255.0.7:80 web2" in table.stdout and "ingress_sbox" in table.stdout, table.stdout


def test_trace_follows_a_request_through_the_ingress_namespace_and_the_overlay(up):
    """rr over four tasks, two of them on n0: within four traces one reaches a task on another
    node, through VXLAN, and the reply comes back the same way to the client."""
    told = ""
    for _ in range(4):
        result = labkit("trace", NAME)
        assert result.returncode == 0, result.stderr
        told = " ".join(result.stdout.split())
        if "inside VXLAN" in told:
            break
    for hop in (
        "n0 swarm cl0:swarm > n0:swarm 192.168.99.200.",
        "n0 docker_gwbridge",
        "DOCKER-INGRESS's DNAT: to the ingress namespace, 172.18.0.2",
        "n0 ingress_sbox:eth0 ",
        "vxlan]",
        "the DNAT undone: the client sees 192.168.99.100:8080 answer",
    ):
        assert hop in told, told


def test_an_overlay_that_floods_nowhere_is_caught_and_provision_repairs_it(up):
    """The mesh fault of the catalogue, injected as a person would: n0's VXLAN loses its all-zero
    FDB entries. verify names the checks it breaks (n0 answers from its own tasks only, no VXLAN
    leaves it), and `labkit provision` puts the entries back."""
    fault = faults.by_name("mesh-no-flood")
    ssh = ["ssh", "-F", str(lab_dir(NAME) / "ssh_config"), fault.node]
    for words in fault.commands:
        injected = subprocess.run([*ssh, "sudo", "-n", shlex.join(words)], capture_output=True, text=True)
        assert injected.returncode == 0, injected.stderr
    found = labkit("verify", NAME, "-m", "not failover", "-k", "n0 and (overlay or every_task or vxlan)")
    assert found.returncode == 1 and "FAILED" in found.stdout, found.stdout[-3000:]
    failed = [line for line in found.stdout.splitlines() if line.startswith("FAILED ")]
    for check in fault.catches:
        assert any(check in line for line in failed), failed
    assert "floods nothing to n1 (192.168.99.101)" in found.stdout, found.stdout[-3000:]
    assert labkit(fault.repair.value, NAME).returncode == 0
    again = labkit("verify", NAME, "-m", "not failover", "-k", "n0 and (overlay or every_task or vxlan)")
    assert again.returncode == 0, again.stdout[-3000:]


def test_fail_stops_a_task_and_the_checkers_take_it_out_then_heal(up):
    """`labkit fail mesh n2:web3`: a task on another node than the one the client asks stops under
    the load; requests fail only until n0's checker takes it out, then the others serve.
    `labkit heal` starts it again."""
    result = labkit("fail", NAME, "n2:web3", "--seconds", "10")
    assert result.returncode == 0, result.stderr
    assert "labkit-container@web3 stopped on n2" in result.stdout, result.stdout
    assert "until the checker took web3 out" in result.stdout, result.stdout
    then = re.search(r"then: \d+ requests, failed 0, served by (.*)$", result.stdout, re.M)
    assert then and set(re.findall(r"web\d", then[1])) == {"web0", "web1", "web2"}, result.stdout
    healed = labkit("heal", NAME)
    assert healed.returncode == 0, healed.stderr
    again = labkit("verify", NAME, "-m", "not failover", "-k", "every_task")
    assert again.returncode == 0, again.stdout[-2000:]


def test_bench_loads_one_node_s_published_port_and_every_task_serves(up):
    """ab against n0:8080: n0's ingress namespace schedules it (rr) over the four tasks, two of
    them on other nodes through the overlay, and its counters give the split."""
    result = labkit("bench", NAME, "--requests", "400", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["service"], data["director"], data["failed"]) == ("fwm 256", "n0", 0), data
    assert sorted(data["split"]) == ["web0", "web1", "web2", "web3"] and min(data["split"].values()) > 0, data


def test_second_provision_changes_nothing(up):
    provision_changes_nothing(NAME)


def test_down_removes_everything(up):
    down_leaves_nothing(NAME)
