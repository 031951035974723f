"""The labs on real VMs: each one booted with `labkit up`, checked with `labkit verify`,
provisioned again, and torn down with `labkit down`. Needs scripts/setup (vagrant,
vagrant-libvirt, libvirtd and the labkit box): without them these tests fail, they do not skip.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from labkit.paths import lab_dir

REPORTS = Path(__file__).resolve().parent.parent / "reports"

pytestmark = pytest.mark.lab


def labkit(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "labkit", *args], capture_output=True, text=True,
                            timeout=timeout)
    # pytest shows this when a test fails: the command's whole story.
    print(f"$ labkit {' '.join(args)}  -> exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def libvirt_names(kind: str, lab: str) -> list[str]:
    command = {"domains": ["list", "--all", "--name"], "networks": ["net-list", "--all", "--name"],
               "volumes": ["vol-list", "default"]}[kind]
    listing = subprocess.run(["virsh", "-c", "qemu:///system", *command], capture_output=True, text=True).stdout
    return [word for word in listing.split() if word.startswith(f"labkit-{lab}-")]


@pytest.fixture(scope="module", params=["nat", "tun", "dr"])
def lab(request):
    name = request.param
    result = labkit("up", name)
    yield name, result
    if (lab_dir(name) / "Vagrantfile").exists():  # test_down failed or never ran
        labkit("down", name)


def test_up(lab):
    name, result = lab
    assert result.returncode == 0, result.stderr
    assert f"{name} is up" in result.stdout


def test_verify(lab):
    name, _ = lab
    REPORTS.mkdir(exist_ok=True)
    result = labkit("verify", name, f"--junitxml={REPORTS / f'{name}.xml'}")
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout and " failed" not in result.stdout


def test_second_provision_changes_nothing(lab):
    name, _ = lab
    result = labkit("provision", name)
    assert result.returncode == 0, result.stderr
    assert f"provisioned {name}: 0 changes" in result.stdout


def test_status_shows_every_node_running(lab):
    name, _ = lab
    result = labkit("status", name)
    assert result.returncode == 0, result.stderr
    for node in ("lb0", "lb1", "rs0", "rs1", "cl0"):
        assert re.search(rf"\b{node}\b.*\brunning\b", result.stdout), f"{node} is not running:\n{result.stdout}"


def test_down_removes_everything(lab):
    name, _ = lab
    result = labkit("down", name)
    assert result.returncode == 0, result.stderr
    for kind in ("domains", "networks", "volumes"):
        assert libvirt_names(kind, name) == [], f"{kind} left behind by labkit down {name}"
