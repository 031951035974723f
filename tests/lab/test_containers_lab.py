"""The containers lab (seed 000) on real VMs, booted once: verify with its failure scenarios (a
container stopped and taken out), show naming the containers, trace through the bridges and the
published port, a second provision that changes nothing, and `labkit down` leaving nothing.
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

NAME = "containers"


@pytest.fixture(scope="module")
def up():
    yield from booted(NAME)


def test_up(up):
    assert up.returncode == 0, up.stderr
    assert f"{NAME} is up" in up.stdout


def test_verify_runs_every_pinned_check_and_they_pass(up):
    result = verify_runs_every_pinned_check(NAME)
    assert "seconds_until_taken_out" in result.stdout


def test_show_names_the_containers(up):
    result = labkit("show", NAME, "--json")
    assert result.returncode == 0, result.stderr
    (director,) = json.loads(result.stdout)["directors"]
    (svc,) = director["services"]
    destinations = sorted((d["address"], d["port"]) for d in svc["real_servers"])
    assert destinations == [("172.17.0.2", 80), ("172.17.0.3", 80), ("192.168.66.111", 18280)], destinations
    table = labkit("show", NAME)
    for line in ("172.17.0.2:80 web0", "172.17.0.3:80 web1", "192.168.66.111:18280 web2"):
        assert line in table.stdout, table.stdout


def test_trace_follows_the_request_into_a_container_and_back(up):
    """rr over three: three traces in a row reach each container once. The director's own
    containers are reached over docker0; rs0's through its published port, rewritten again to its
    container, and conntrack undoes that on the way back before the director rewrites the source."""
    traces = []
    for _ in range(3):
        result = labkit("trace", NAME)
        assert result.returncode == 0, result.stderr
        assert "\nreply\n" in result.stdout, result.stdout
        traces.append(result.stdout)
    told = " ".join(" ".join(traces).split())  # the table wraps long lines at the terminal's width
    for rewrite in (
        "destination rewritten 192.168.55.100.80 -> 172.17.0.2.80",  # web0, on lb0's docker0
        "destination rewritten 192.168.55.100.80 -> 172.17.0.3.80",  # web1
        "destination rewritten 192.168.66.111.18280 -> 172.17.0.2.80",  # web2, behind rs0's published port
        "source rewritten 172.17.0.2.80 -> 192.168.66.111.18280",
        "the client sees the VIP answer",
    ):
        assert rewrite in told, told
    assert "lb0 docker0" in told and "rs0 docker0" in told, told


def test_a_container_without_its_route_is_caught_and_provision_repairs_it(up):
    """The container fault of the catalogue, injected as a person would: verify names the check
    it breaks, and `labkit provision` puts the route back."""
    fault = faults.by_name("container-no-route")
    ssh = ["ssh", "-F", str(lab_dir(NAME) / "ssh_config"), fault.node]
    for words in fault.commands:
        injected = subprocess.run([*ssh, "sudo", "-n", shlex.join(words)], capture_output=True, text=True)
        assert injected.returncode == 0, injected.stderr
    found = labkit("verify", NAME, "-m", "not failover", "-k", "test_container and web0")
    assert found.returncode == 1 and "FAILED" in found.stdout, found.stdout[-2000:]
    assert "expected the default route via 172.17.0.1" in found.stdout, found.stdout[-2000:]
    assert labkit(fault.repair.value, NAME).returncode == 0
    again = labkit("verify", NAME, "-m", "not failover", "-k", "test_container or split")
    assert again.returncode == 0, again.stdout[-2000:]


def test_fail_stops_a_container_and_the_checker_takes_it_out_then_heal(up):
    """`labkit fail containers rs0:web2`: the container behind the published port stops under the
    client's load; requests fail only until the director's check takes rs0's destination out,
    then the two containers on the director serve. `labkit heal` starts it again."""
    result = labkit("fail", NAME, "rs0:web2", "--seconds", "10")
    assert result.returncode == 0, result.stderr
    assert "labkit-container@web2 stopped on rs0" in result.stdout, result.stdout
    assert "until the checker took web2 out" in result.stdout, result.stdout
    then = re.search(r"then: \d+ requests, failed 0, served by (.*)$", result.stdout, re.M)
    assert then and set(re.findall(r"web\d", then[1])) == {"web0", "web1"}, result.stdout
    healed = labkit("heal", NAME)
    assert healed.returncode == 0, healed.stderr
    again = labkit("verify", NAME, "-m", "not failover", "-k", "split")
    assert again.returncode == 0, again.stdout[-2000:]


def test_weight_of_a_container_moves_the_split_and_provision_restores_it(up):
    """`labkit weight containers web1 0` drains one container on the director's bridge: a bench
    then sends it nothing, verify's split agrees, and `labkit provision` gives back the file's."""
    result = labkit("weight", NAME, "web1", "0")
    assert result.returncode == 0, result.stderr
    assert "web0 1, web1 0, web2 1" in result.stdout, result.stdout
    bench = labkit("bench", NAME, "--requests", "300", "--json")
    assert bench.returncode == 0, bench.stderr
    split = json.loads(bench.stdout)["split"]
    assert split.get("web1", 0) == 0 and split["web0"] > 0 and split["web2"] > 0, split
    assert labkit("verify", NAME, "-m", "not failover", "-k", "split").returncode == 0
    restored = labkit("provision", NAME)
    assert restored.returncode == 0 and "0 changes" not in restored.stdout, restored.stdout


def test_second_provision_changes_nothing(up):
    provision_changes_nothing(NAME)


def test_down_removes_everything(up):
    down_leaves_nothing(NAME)
