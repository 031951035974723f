"""A class on real VMs: two students, ana and ben, seated over two hosts (this one, and this same
host's libvirt reached through qemu+ssh:// as another host would be) by one `labkit class up`,
from an installation of its own (its own LABKIT_HOME, so its own keys and class record). Each
student's bundle opens their own VMs and nothing else; the VMs reach nothing of the host but
DHCP; an exercise is started, graded, fixed as the student types it, graded again; the teacher's
page shows both seats in a real browser; `class down` leaves nothing behind.
"""

import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import free_port

from labkit.boot.libvirt import LOCAL

pytestmark = pytest.mark.lab

STUDENTS = ("ana", "ben")


def labkit(env: dict, *args: str, timeout: int = 2400) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "labkit", *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    print(f"$ labkit {' '.join(args)}  -> exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-c", LOCAL, *args], capture_output=True, text=True).stdout


def ssh(folder: Path, node: str, *words: str, config: str = "ssh_config") -> subprocess.CompletedProcess:
    """ssh as the student types it, from the bundle's folder."""
    return subprocess.run(
        ["ssh", "-F", config, "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", node, *words],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=folder,
    )


@pytest.fixture(scope="module")
def handed(tmp_path_factory) -> tuple[dict, list[subprocess.CompletedProcess]]:
    """A second installation (its own LABKIT_HOME and Vagrant) given labkit's box as a file, as a
    teacher hands it around on a USB stick: its environment, and what export and import said."""
    home = tmp_path_factory.mktemp("teacher")
    env = {**os.environ, "LABKIT_HOME": str(home / "labkit"), "VAGRANT_HOME": str(home / "vagrant.d")}
    exported = tmp_path_factory.mktemp("usb") / "labkit.box"
    said = [labkit(dict(os.environ), "box", "export", str(exported)), labkit(env, "box", "import", str(exported))]
    exported.unlink(missing_ok=True)
    yield env, said
    shutil.rmtree(env["VAGRANT_HOME"])  # the imported box; its image in libvirt's pool is this installation's too


@pytest.fixture(scope="module")
def teacher(remote, handed) -> dict:
    """The teacher's installation, booting from the box it was handed, naming the second host."""
    env = handed[0]
    Path(env["LABKIT_HOME"]).mkdir(parents=True, exist_ok=True)
    (Path(env["LABKIT_HOME"]) / "config.yaml").write_text(f"hosts:\n  other: {json.dumps(remote)}\n")
    return env


def test_the_box_is_handed_over(handed):
    env, (exported, imported) = handed
    assert exported.returncode == 0, exported.stderr
    assert imported.returncode == 0, imported.stderr
    listed = subprocess.run(["vagrant", "box", "list"], capture_output=True, text=True, env=env).stdout
    assert "labkit/bookworm" in listed, f"the imported box is not in the second installation's Vagrant:\n{listed}"


@pytest.fixture(scope="module")
def klass(teacher, tmp_path_factory):
    """The class booted by one command: what it said, and how long it took."""
    roster = tmp_path_factory.mktemp("roster") / "students.txt"
    roster.write_text("# the morning group\nana\nben\n")
    started = time.monotonic()
    said = labkit(teacher, "class", "up", "nat", "--students", str(roster))
    print(f"class up took {time.monotonic() - started:.0f} s")
    yield said
    if (Path(teacher["LABKIT_HOME"]) / "class.json").exists():
        labkit(teacher, "class", "down")


def record(teacher: dict) -> dict:
    return json.loads((Path(teacher["LABKIT_HOME"]) / "class.json").read_text())


@pytest.fixture(scope="module")
def bundles(klass, teacher, tmp_path_factory) -> dict[str, Path]:
    found = {}
    for student in STUDENTS:
        folder = tmp_path_factory.mktemp(f"bundle-{student}")
        assert labkit(teacher, "class", "bundle", student, str(folder)).returncode == 0
        found[student] = folder
    return found


def test_bad_input_makes_nothing(teacher, tmp_path):
    twice = tmp_path / "twice.txt"
    twice.write_text("ana\nben\nana\n")
    for args, said in [
        (["--students", str(twice)], "ana is given twice"),
        (["--students", "999"], "from 1 to 200"),
        (["--students", "60"], "seats do not fit: the hosts have room for"),
    ]:
        result = labkit(teacher, "class", "up", "nat", *args)
        assert result.returncode == 1 and said in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (Path(teacher["LABKIT_HOME"]) / "class.json").exists()


def test_one_command_seats_both_students_on_two_hosts(klass, teacher, remote):
    assert klass.returncode == 0, klass.stdout[-3000:] + klass.stderr[-3000:]
    seats = record(teacher)["seats"]
    assert {s: seats[s]["host"] for s in STUDENTS} == {"ana": LOCAL, "ben": remote}
    assert all(seats[s]["state"] == "up" for s in STUDENTS)
    listed = json.loads(labkit(teacher, "list", "--json").stdout)
    assert sorted((r["name"], r["state"]) for r in listed if r["name"].startswith("class-")) == [
        ("class-ana", "running"),
        ("class-ben", "running"),
    ]


def test_each_bundle_opens_its_own_vms_only(bundles, teacher, remote, tmp_path):
    for folder in bundles.values():
        assert {"ssh_config", "id_ed25519", "README.txt", "nat.svg"} <= {p.name for p in folder.iterdir()}
        for node in ("lb0", "rs0"):
            opened = ssh(folder, node, "hostname")
            assert (opened.returncode, opened.stdout.strip()) == (0, node), opened.stderr
    # ana's key in ben's ssh_config: refused by ben's VMs
    crossed = tmp_path / "crossed"
    crossed.mkdir()
    shutil.copy(bundles["ben"] / "ssh_config", crossed)
    shutil.copy(bundles["ana"] / "id_ed25519", crossed)
    refused = ssh(crossed, "lb0", "true")
    assert refused.returncode == 255 and "Permission denied" in refused.stderr, refused.stderr
    # ...and by the host's own sshd (the second host's: root's login there)
    port = re.search(r"127\.0\.0\.1:(\d+)", remote)[1]
    shell = subprocess.run(
        ["ssh", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", str(bundles["ana"] / "id_ed25519"),
         "-p", port, "root@127.0.0.1", "true"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shell.returncode == 255 and "Permission denied" in shell.stderr, shell.stderr


class Listener(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"host service\n")


def test_the_vms_reach_nothing_of_the_host_nor_other_copies(bundles, teacher):
    port = free_port()
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Listener)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        labs = Path(teacher["LABKIT_HOME"]) / "labs"
        gateway = json.loads((labs / "class-ana" / "record.json").read_text())["management"].replace(".0/24", ".1")
        ben_lb0 = re.search(r"Host lb0\n\s+HostName (\S+)", (labs / "class-ben" / "ssh_config").read_text())[1]
        here = subprocess.run(["curl", "-sS", "-m", "5", f"http://{gateway}:{port}/"], capture_output=True, text=True)
        assert here.stdout == "host service\n", here.stderr  # the listener answers, from the host itself
        tries = {
            "host": f"curl -sS -m 5 http://{gateway}:{port}/",
            "ben": f"timeout 5 bash -c 'echo > /dev/tcp/{ben_lb0}/22'",
        }
        for what, command in tries.items():
            reached = ssh(bundles["ana"], "lb0", shlex.join(["sudo", "sh", "-c", command]))
            assert reached.returncode != 0 and "host service" not in reached.stdout, (what, reached)
    finally:
        server.shutdown()


def test_an_exercise_is_graded_from_the_running_copy(bundles, teacher):
    for name, said in [("dr-arp", "does not apply to the lab nat"), ("no-such", "no exercise 'no-such'")]:
        refused = labkit(teacher, "exercise", "start", "ana", name)
        assert refused.returncode == 1 and said in refused.stderr, refused.stderr
    assert labkit(teacher, "exercise", "start", "ana", "nat-route-around").returncode == 0
    broken = labkit(teacher, "exercise", "check", "ana")
    assert broken.returncode == 1 and "not fixed yet, 0/1 checks pass" in broken.stdout
    # the student's fix, typed over their bundle's ssh
    fixed = ssh(bundles["ana"], "rs0", "sudo", "ip", "route", "add", "192.168.55.0/24", "via", "192.168.66.10")
    assert fixed.returncode == 0, fixed.stderr
    graded = labkit(teacher, "exercise", "check", "ana")
    assert graded.returncode == 0 and "fixed, 1/1 checks pass" in graded.stdout
    seats = record(teacher)["seats"]
    assert (seats["ana"]["exercise"], seats["ana"]["checks"]) == ("nat-route-around", "1/1")


def test_the_teachers_page_shows_both_seats(klass, teacher, browser, tmp_path):
    page, outside = browser
    html = tmp_path / "class.html"
    watching = subprocess.Popen(
        [sys.executable, "-m", "labkit", "class", "status", "--html", str(html), "--every", "2"], env=teacher
    )
    try:
        for _ in range(60):
            if html.exists():
                break
            time.sleep(1)
        first = html.read_text()
        time.sleep(5)
        assert html.read_text() != first  # written again while it runs (the time on it moves on)
        page.goto(html.as_uri())
        rows = {r.get_attribute("data-student"): r.inner_text() for r in page.locator("tbody tr").element_handles()}
        assert sorted(rows) == list(STUDENTS)
        assert "up" in rows["ana"] and "up" in rows["ben"]
        assert outside == []
    finally:
        watching.terminate()
        watching.wait(30)


def test_class_down_leaves_nothing(klass, teacher):
    seats = record(teacher)["seats"]
    ports = [p for s in seats.values() for p in s["ports"].values()]
    assert labkit(teacher, "class", "down").returncode == 0
    assert not (Path(teacher["LABKIT_HOME"]) / "class.json").exists()
    assert [d for d in virsh("list", "--all", "--name").split() if "-class-" in d] == []
    assert [n for n in virsh("net-list", "--all", "--name").split() if "class-" in n] == []
    assert [v for v in virsh("vol-list", "default").split() if "class-" in v] == []
    rules = subprocess.run(["iptables", "-S"], capture_output=True, text=True).stdout
    assert "labkit-guard:class-" not in rules
    listening = subprocess.run(["ss", "-Htln"], capture_output=True, text=True).stdout
    assert not [p for p in ports if f":{p} " in listening]
