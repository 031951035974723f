"""The checks verify runs on each shipped lab are pinned in tests/pinned/LAB.txt: a check that
goes missing (a bug in the suite's parametrisation, an edited lab file) or appears unannounced
fails here, before any VM boots. tests/lab/test_labs.py holds each lab's verify report to the
same lists."""

from pathlib import Path

import pytest
import yaml
from conftest import pinned

from labkit.labfile import LABS
from labkit.verify.run import CHECKS


class Collected:
    def __init__(self) -> None:
        self.checks: dict[str, bool] = {}

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.checks = {item.nodeid: item.get_closest_marker("failover") is not None for item in session.items}


def collected(lab: str, folder: Path) -> dict[str, bool]:
    """What verify would run on the lab, collected as verify collects it, without a VM."""
    (folder / "lab.yaml").write_text((LABS / lab / "lab.yaml").read_text())
    seen = Collected()
    code = pytest.main(
        [str(CHECKS), "--collect-only", "-q", "-p", "labkit.verify.checks.plugin", f"--lab-dir={folder}",
         "--ssh-config=/dev/null", f"--rootdir={CHECKS}", "-p", "no:cacheprovider"],
        plugins=[seen],
    )  # fmt: skip
    assert code == 0
    return seen.checks


@pytest.mark.parametrize("lab", sorted(p.name for p in LABS.iterdir() if (p / "lab.yaml").exists()))
def test_verify_runs_exactly_the_pinned_checks(lab, tmp_path):
    expected, found = pinned(lab), collected(lab, tmp_path)
    assert sorted(set(expected) - set(found)) == [], "checks gone missing"
    assert sorted(set(found) - set(expected)) == [], f"checks not announced in tests/pinned/{lab}.txt"
    assert found == expected, "a check changed between failure scenario and plain check"


@pytest.mark.parametrize("lab", sorted(p.name for p in LABS.iterdir() if (p / "lab.yaml").exists()))
def test_pinned_checks_cover_the_lab_file(lab):
    """Read from the lab file itself, not through the model or the suite's parametrisation:
    every node, every service and, for a pair, the failure scenarios have their checks."""
    data = yaml.safe_load((LABS / lab / "lab.yaml").read_text())
    checks = pinned(lab)
    for node in data["nodes"]:
        assert f"test_lab.py::test_hostname[{node}]" in checks
    for svc in data.get("services", []):
        if "fwmark" in svc:
            key = f"fwm-{svc['fwmark']}"
        else:
            vip = f"[{svc['vip']}]" if ":" in str(svc["vip"]) else svc["vip"]
            key = f"{svc.get('protocol', 'tcp')}-{vip}:{svc.get('port', 80)}"
        check = "test_udp.py::test_udp_split" if svc.get("protocol") == "udp" else "test_lab.py::test_split"
        assert f"{check}[{key}]" in checks
    scenarios = {check for check, failover in checks.items() if failover}
    if "mesh" in data:
        # a routing mesh: every swarm node and task checked, and one task stopped and taken out
        swarm = [n for n, node in data["nodes"].items() if node["role"] == "swarm_node"]
        for node in swarm:
            assert f"test_mesh.py::test_every_node_answers_for_every_task[{node}]" in checks
            for task in data["nodes"][node].get("tasks", {}):
                assert f"test_mesh.py::test_task[{task}]" in checks
        assert len(scenarios) == 1 and next(iter(scenarios)).startswith("test_mesh.py::test_stopped_task_is_taken_out[")
        return
    directors = [n for n, node in data["nodes"].items() if node["role"] == "director"]
    if data.get("failover", "keepalived") == "keepalived" and len(directors) > 1:
        assert {
            "test_failover.py::test_real_server_dies[lb0]",
            "test_failover.py::test_director_dies[lb0]",
        } <= scenarios
    else:
        # a director's containers: each stopped in turn, and taken out by the director's checks
        containers = data["nodes"][directors[0]].get("containers", {}) if data.get("failover") == "keepalived" else {}
        assert scenarios == {f"test_containers.py::test_stopped_container_is_taken_out[{c}]" for c in containers}
