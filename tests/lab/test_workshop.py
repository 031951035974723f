"""A workshop on one host, on real VMs: a teacher exports the box, a student (a second labkit
installation: its own LABKIT_HOME and VAGRANT_HOME, so its own SSH key) imports it; then two
copies of the nat lab boot at once, the teacher's on this host's libvirt and the student's
through qemu+ssh:// to this same host (an sshd started for the test on 127.0.0.1). Both are
verified, neither sees the other's traffic, neither's key opens the other's VMs, and removing
one leaves the other running.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labkit.home import lab_dir

pytestmark = pytest.mark.lab

LAB = "nat"
TEACHER, STUDENT = "teacher", "student"


def labkit(*args: str, env: dict | None = None, timeout: int = 1500) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "labkit", *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    print(f"$ labkit {' '.join(args)}  -> exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> dict:
    """The student's environment: another labkit installation and another Vagrant."""
    home = tmp_path_factory.mktemp("student")
    return {**os.environ, "LABKIT_HOME": str(home / "labkit"), "VAGRANT_HOME": str(home / "vagrant.d")}


@pytest.fixture(scope="module")
def workshop(remote, student, tmp_path_factory):
    """The box handed over, then both copies booted at once: what each `labkit up` said."""
    exported = tmp_path_factory.mktemp("usb") / "labkit.box"
    handed = [labkit("box", "export", str(exported)), labkit("box", "import", str(exported), env=student)]
    commands = {
        TEACHER: ([sys.executable, "-m", "labkit", "up", LAB, "--as", TEACHER], None),
        STUDENT: ([sys.executable, "-m", "labkit", "up", LAB, "--as", STUDENT, "--connect", remote], student),
    }
    started = time.monotonic()
    running = {
        name: subprocess.Popen(words, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for name, (words, env) in commands.items()
    }
    said = {}
    for name, process in running.items():
        said[name] = process.communicate(timeout=1800)[0], process.returncode
        print(
            f"$ labkit up {LAB} --as {name}  -> exit {process.returncode} after "
            f"{time.monotonic() - started:.0f} s\n{said[name][0]}"
        )
    yield handed, said
    if (lab_dir(TEACHER) / "Vagrantfile").exists():
        labkit("down", TEACHER)
    if (Path(student["LABKIT_HOME"]) / "labs" / STUDENT / "Vagrantfile").exists():
        labkit("down", STUDENT, env=student)
    exported.unlink()
    shutil.rmtree(Path(student["VAGRANT_HOME"]))  # the imported box; its image in libvirt's pool is the teacher's too


def test_the_box_is_handed_over(workshop):
    (exported, imported), _ = workshop
    assert exported.returncode == 0, exported.stderr
    assert imported.returncode == 0, imported.stderr


def test_both_copies_boot_at_once(workshop, student, remote):
    _, said = workshop
    for name, (output, code) in said.items():
        assert code == 0, output[-3000:]
        assert f"{name} is up (a copy of {LAB})" in output
    listed = json.loads(labkit("list", "--json").stdout)
    mine = [row for row in listed if row["name"] == TEACHER]
    assert [(r["lab"], r["state"]) for r in mine] == [(LAB, "running")], listed
    theirs = json.loads(labkit("list", "--json", env=student).stdout)
    assert [(r["lab"], r["host"], r["state"]) for r in theirs if r["name"] == STUDENT] == [(LAB, remote, "running")]


@pytest.mark.parametrize("name", [TEACHER, STUDENT])
def test_each_copy_verifies(workshop, student, name):
    result = labkit("verify", name, "-m", "not failover", env=None if name == TEACHER else student)
    assert result.returncode == 0, result.stdout[-3000:]


def counters(name: str, env: dict | None) -> dict:
    seen = json.loads(labkit("show", name, "--json", env=env).stdout)
    return {
        (d["name"], s["key"]): (s["stats"]["conns"], s["stats"]["in_packets"])
        for d in seen["directors"]
        for s in d["services"]
    }


def test_copies_do_not_see_each_others_traffic(workshop, student):
    """The same addresses in both copies: load on the teacher's VIP reaches the teacher's
    director and nobody's else."""
    before = counters(STUDENT, student)
    teacher_before = counters(TEACHER, None)
    assert labkit("bench", TEACHER, "--requests", "300").returncode == 0
    assert counters(TEACHER, None) != teacher_before
    assert counters(STUDENT, student) == before


def logs_in_with(ssh_config: Path, key: Path, scratch: Path) -> subprocess.CompletedProcess:
    """ssh to lb0 as the lab's ssh_config says, with `key` in place of the lab's own (on the
    command line, -o IdentityFile adds a key rather than replacing it)."""
    config = scratch / "ssh_config"
    config.write_text(re.sub(r"^(\s*IdentityFile\s).*$", lambda m: f"{m[1]}{key}", ssh_config.read_text(), flags=re.M))
    return subprocess.run(
        ["ssh", "-F", str(config), "-o", "BatchMode=yes", "lb0", "true"], capture_output=True, text=True, timeout=120
    )


def test_one_installations_key_does_not_open_anothers_vms(workshop, student, tmp_path):
    teacher_key = Path(os.environ.get("LABKIT_HOME", Path.home() / ".local/share/labkit")) / "id_ed25519"
    student_home = Path(student["LABKIT_HOME"])
    insecure = next(
        Path(p)
        for p in subprocess.run(["dpkg", "-L", "vagrant"], capture_output=True, text=True).stdout.split()
        if p.endswith("/keys/vagrant")
    )
    teacher_config, student_config = lab_dir(TEACHER) / "ssh_config", student_home / "labs" / STUDENT / "ssh_config"
    for config, key in [(teacher_config, teacher_key), (student_config, student_home / "id_ed25519")]:
        result = logs_in_with(config, key, tmp_path)
        assert result.returncode == 0, (config, key, result.stderr)  # each opens its own
    for config, key in [
        (teacher_config, student_home / "id_ed25519"),
        (student_config, teacher_key),
        (teacher_config, insecure),
        (student_config, insecure),
    ]:
        result = logs_in_with(config, key, tmp_path)
        assert result.returncode == 255 and "Permission denied" in result.stderr, (config, key, result.stderr)


def test_removing_one_copy_leaves_the_other(workshop, student):
    result = labkit("down", STUDENT, env=student)
    assert result.returncode == 0, result.stderr
    left = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--all", "--name"], capture_output=True, text=True
    ).stdout.split()
    assert not [d for d in left if d.startswith(f"labkit-{STUDENT}-")]
    assert sorted(d for d in left if d.startswith(f"labkit-{TEACHER}-")) == [
        f"labkit-{TEACHER}-{node}" for node in ("cl0", "lb0", "lb1", "rs0", "rs1")
    ]
    assert labkit("verify", TEACHER, "-k", "split").returncode == 0
    assert labkit("down", TEACHER).returncode == 0
