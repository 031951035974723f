"""The labs on real VMs: each one booted once with `labkit up`, checked with `labkit verify`
(failure scenarios included for nat), operated with show, trace, bench, weight and
fail/heal, provisioned again, and torn down with `labkit down`. Needs scripts/setup (vagrant,
vagrant-libvirt, libvirtd and the labkit box): without them these tests fail, they do not skip.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from conftest import pinned

from labkit.boot import vagrant
from labkit.home import lab_dir
from labkit.labfile import LABS, load_lab
from labkit.operate import faults
from labkit.operate.matrix_report import read_junit

REPORTS = Path(__file__).resolve().parents[2] / "reports"

pytestmark = pytest.mark.lab


def labkit(*args: str, timeout: int = 1200, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "labkit", *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    # pytest shows this when a test fails: the command's whole story.
    print(f"$ labkit {' '.join(args)}  -> exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def libvirt_names(kind: str, lab: str) -> list[str]:
    command = {
        "domains": ["list", "--all", "--name"],
        "networks": ["net-list", "--all", "--name"],
        "volumes": ["vol-list", "default"],
    }[kind]
    listing = subprocess.run(["virsh", "-c", "qemu:///system", *command], capture_output=True, text=True).stdout
    # labkit-dr-lb0, labkit-dr-lb0.img, labkit-dr-int: not labkit-dr-bookworm-1-lb0, a copy's, which
    # the matrix may be running at the same time (scripts/test runs two halves at once)
    return [word for word in listing.split() if re.fullmatch(rf"labkit-{re.escape(lab)}-[^-]+", word)]


def booted(name: str):
    """`labkit up NAME` for a module's tests, and `labkit down` after them if test_down failed or
    never ran (a fixture yields from it)."""
    yield labkit("up", name)
    if (lab_dir(name) / "Vagrantfile").exists():
        labkit("down", name)


def verify_runs_every_pinned_check(name: str, failover: bool = True) -> subprocess.CompletedProcess:
    """`labkit verify` (with the failure scenarios, or without) and its JUnit report: it passed,
    and every pinned check ran and passed, and no other: a check that vanished cannot pass unseen."""
    REPORTS.mkdir(exist_ok=True)
    scenarios = [] if failover else ["-m", "not failover"]
    result = labkit("verify", name, f"--junitxml={REPORTS / f'{name}.xml'}", *scenarios)
    assert result.returncode == 0, result.stdout[-3000:]
    ran = read_junit(REPORTS / f"{name}.xml").checks
    expected = {check for check, is_failover in pinned(name).items() if failover or not is_failover}
    assert sorted(expected - set(ran)) == [], "pinned checks that did not run"
    assert sorted(set(ran) - expected) == [], f"checks not pinned in tests/pinned/{name}.txt"
    assert {check: outcome for check, outcome in ran.items() if outcome != "passed"} == {}
    return result


def provision_changes_nothing(name: str) -> None:
    result = labkit("provision", name)
    assert result.returncode == 0, result.stderr
    assert f"provisioned {name}: 0 changes" in result.stdout


def down_leaves_nothing(name: str) -> None:
    result = labkit("down", name)
    assert result.returncode == 0, result.stderr
    for kind in ("domains", "networks", "volumes"):
        assert libvirt_names(kind, name) == [], f"{kind} left behind by labkit down {name}"
    assert not lab_dir(name).exists()
    index = json.loads(vagrant.machine_index().read_text())
    listed = [m["name"] for m in index["machines"].values() if m["vagrantfile_path"] == str(lab_dir(name))]
    assert listed == [], f"Vagrant still lists {name}'s machines {listed}"


FULL = bool(os.environ.get("LABKIT_FULL"))
# The director-failover and real-server-failure scenarios take minutes per lab: CI runs them on
# NAT (the seeds' two-director lab), the full suite (scripts/test --full) on DR and TUN too.
# fwmark has one director.
FAILOVER_LABS = {"nat"} | ({"dr", "tun"} if FULL else set())
# After an interrupted `labkit fail`: `labkit heal` brings these back, `labkit reset` (to the
# snapshot `labkit up` took) the others.
HEALED = {"nat", "dr"}

# Labs whose first `labkit up` is interrupted mid-boot, and with which signal; the `labkit up`
# that continues it is their boot.
INTERRUPTED_UP = {"dr": signal.SIGINT, "tun": signal.SIGTERM}
# `labkit fail` is stopped mid-load with SIGINT in these labs, SIGTERM in the others.
FAIL_SIGINT = {"nat", "fwmark"}
# A lab whose `.vagrant/` is lost before `labkit down`, which must still remove everything.
LOST_STATE = {"fwmark"}
# Labs stopped (`labkit stop`, each VM's memory saved to disk) before `labkit down` removes them
STOPPED_BEFORE_DOWN = {"tun"}
# The labs that bench, weight and fail/heal run on. The schedulers lab is left out: its checks
# are its own verify (every scheduler's behaviour), and these commands add nothing there that
# the NAT lab does not already show.
OPERATED = ["nat", "tun", "dr", "fwmark"]
# The same code drains a server and stops `labkit fail` whatever the lab: CI weighs a plain
# service (nat) and an fwmark one, and interrupts `fail` once with each signal, healed (nat) and
# reset (tun); the full suite does both on every operated lab.
WEIGHED = OPERATED if FULL else ["nat", "fwmark"]
FAIL_INTERRUPTED = OPERATED if FULL else ["nat", "tun"]


def interrupted_up(name: str, sig: signal.Signals) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`labkit up` stopped with `sig` once Vagrant is creating the VMs; what it said, and the
    processes it left (none expected)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "labkit", "up", name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    log = lab_dir(name) / "vagrant.log"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if log.exists() and "Creating domain" in log.read_text(errors="replace"):
            break
        time.sleep(0.5)
    time.sleep(5)  # in the middle of creating the domains
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=60)
    print(f"$ labkit up {name} ({sig.name})  -> exit {process.returncode}\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), processes_of(lab_dir(name))


def processes_of(folder: Path) -> list[str]:
    """The command lines of the processes working in a lab's folder (Vagrant runs there) or naming
    it, this test's own aside."""
    named = re.compile(re.escape(str(folder)) + r"(/|\s|$)")  # not .../labs/dr-bookworm-1 for .../labs/dr
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cwd = os.readlink(proc / "cwd")
            words = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        line = b" ".join(words).decode(errors="replace").strip()
        if int(proc.name) != os.getpid() and (cwd == str(folder) or named.search(line)):
            found.append(f"{proc.name} {line}")
    return found


@pytest.fixture(scope="module", params=[*OPERATED, "schedulers"])
def lab(request):
    name = request.param
    interrupted = interrupted_up(name, INTERRUPTED_UP[name]) if name in INTERRUPTED_UP else None
    for result in booted(name):
        yield name, result, interrupted


def test_up(lab):
    name, result, interrupted = lab
    if interrupted is not None:
        stopped, left = interrupted
        sig = INTERRUPTED_UP[name]
        assert stopped.returncode == 128 + sig, stopped.stderr
        assert (
            f"interrupted ({sig.name}): {name} is partly up. Continue with: labkit up {name}; "
            f"or remove what was made: labkit down {name}"
        ) in stopped.stderr.splitlines(), stopped.stderr
        assert left == [], f"labkit up {name} left processes behind: {left}"
    assert result.returncode == 0, result.stderr
    assert f"{name} is up" in result.stdout
    # labkit, not Vagrant, waited for each node's SSH (Vagrant only started the VMs)
    for node in load_lab(LABS / name / "lab.yaml").nodes:
        assert f"{node}: answers SSH" in result.stdout + result.stderr, f"labkit did not see {node} answer"
    # QEMU loaded the box's kernel itself (direct kernel boot), not the BIOS from the disk
    for domain in libvirt_names("domains", name):
        xml = subprocess.run(["virsh", "-c", "qemu:///system", "dumpxml", domain], capture_output=True, text=True)
        assert re.search(r"<kernel>/.*_vmlinuz</kernel>", xml.stdout), f"{domain} boots through the BIOS"
    # What the lean boot took out is still out: the kernel's random generator was ready before
    # userspace began (the host key waited for nothing), and no Wi-Fi stack was loaded.
    ssh = ["ssh", "-F", str(lab_dir(name) / "ssh_config"), "rs0"]
    booted_kernel = subprocess.run([*ssh, "sudo -n dmesg; lsmod"], capture_output=True, text=True, timeout=60)
    ready = re.search(r"\[\s*([\d.]+)\] random: crng init done", booted_kernel.stdout)
    assert ready and float(ready[1]) < 1, "the random generator was not ready at boot (no RDRAND?)"
    assert "cfg80211" not in booted_kernel.stdout, "rs0 loaded the wireless stack at boot"


def test_verify(lab):
    name, *_ = lab
    result = verify_runs_every_pinned_check(name, failover=name in FAILOVER_LABS)
    assert re.search(r"\d+ passed", result.stdout) and not re.search(r"\d+ failed", result.stdout)
    if name in FAILOVER_LABS:
        assert "test_director_dies" in result.stdout and "outage_seconds" in result.stdout
    none = labkit("verify", name, "-k", "no_such_check")
    assert none.returncode == 1, none.stdout
    assert none.stderr.strip().startswith(f"error: no check of {name} matches -k no_such_check."), none.stderr


def test_show(lab):
    name, *_ = lab
    result = labkit("show", name, "--json")
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    active = [d["name"] for d in seen["directors"] if d["active"]]
    assert active == ["lb0"], f"expected lb0 alone to hold the VIPs, saw {active}"
    servers = {svc.key: len(svc.real_servers) for svc in load_lab(LABS / name / "lab.yaml").services}
    for director in seen["directors"]:
        assert director["services"], f"{director['name']} shows no service"
        shown = {svc["key"]: len(svc["real_servers"]) for svc in director["services"]}
        assert shown == servers, f"{director['name']}: real servers per service {shown}, the lab file has {servers}"


# The IPv6 service of the labs that have one: DR in dr, NAT in fwmark.
IPV6_SERVICES = {"dr": "tcp [fd00:55::100]:80", "fwmark": "tcp [fd00:55::100]:80"}


def test_trace(lab):
    name, *_ = lab
    result = labkit("trace", name)
    assert result.returncode == 0, result.stderr
    request, reply = result.stdout.split("\nreply\n")
    expect = {
        "nat": ("destination rewritten", "source rewritten"),
        "fwmark": ("destination rewritten", "source rewritten"),
        "schedulers": ("destination rewritten", "source rewritten"),
        "tun": ("wrapped in IP-in-IP", "bypassing the director"),
        "dr": ("only the destination MAC rewritten", "bypassing the director"),
    }[name]
    assert expect[0] in request, result.stdout
    assert expect[1] in reply, result.stdout
    if name in ("tun", "dr"):
        assert "lb0 " not in reply, f"{name}: the reply must not pass the director:\n{result.stdout}"
    if name == "nat":  # a datagram of its UDP service, rewritten both ways like a SYN
        udp = labkit("trace", name, "--service", "udp 192.168.55.100:9000")
        assert udp.returncode == 0, udp.stderr
        request, reply = udp.stdout.split("\nreply\n")
        assert "[UDP]" in request and "destination rewritten" in request, udp.stdout
        assert "source rewritten 192.168.66.11" in reply, udp.stdout
    if name in IPV6_SERVICES:  # the same told for the lab's IPv6 service
        result = labkit("trace", name, "--service", IPV6_SERVICES[name])
        assert result.returncode == 0, result.stderr
        request, reply = result.stdout.split("\nreply\n")
        assert "fd00:55::200." in request, result.stdout
        assert expect[0] in request and expect[1] in reply, result.stdout
        if name == "dr":
            assert "lb0 " not in reply, f"the IPv6 reply must not pass the director:\n{result.stdout}"
        else:
            assert "destination rewritten fd00:55::100.80 -> fd00:66::" in request, result.stdout
    if name == "tun":  # the other encapsulations, named hop by hop, and unwrapped where they end
        for service, said in (
            ("tcp 192.168.55.102:80", "wrapped in GUE (UDP 6080)"),
            ("tcp 192.168.55.103:80", "wrapped in GRE"),
        ):
            result = labkit("trace", name, "--service", service)
            assert result.returncode == 0, result.stderr
            assert said in result.stdout and "unwrapped on" in result.stdout, result.stdout


def expected_split(name: str, total: int) -> dict[str, tuple[int, int]]:
    """Node -> the fewest and most of `total` new connections the lab's first TCP service gives
    it, read from the lab file: rr and wrr split exactly, to within the one connection that the
    place in their turn decides."""
    data = yaml.safe_load((LABS / name / "lab.yaml").read_text())
    svc = next(s for s in data["services"] if s.get("protocol", "tcp") == "tcp")
    at = {str(addr): node for node, spec in data["nodes"].items() for addr in spec["addresses"].values()}
    weights = {at[str(rs["address"])]: rs.get("weight", 1) for rs in svc["real_servers"]}
    assert svc["scheduler"] in ("rr", "wrr"), f"{name}: no exact split to expect of {svc['scheduler']}"
    if svc["scheduler"] == "rr":
        weights = dict.fromkeys(weights, 1)
    share = {node: total * w / sum(weights.values()) for node, w in weights.items()}
    return {node: (int(s), int(s) + (s != int(s))) for node, s in share.items()}


def bench_split(name: str, requests: int) -> dict[str, int]:
    result = labkit("bench", name, "--requests", str(requests), "--concurrency", "4", "--json")
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert (seen["complete"], seen["failed"]) == (requests, 0), seen
    return seen["split"]


# Faults a real mistake causes, injected over SSH as a person would; verify must name each. CI
# injects each fault of the catalogue once; the full suite every fault on every lab it fits.
CAUGHT = {
    "nat": ["nat-route-around", "weight-behind-the-back", "sync-stopped"],
    "tun": ["tun-rp-filter", "wrong-scheduler"],
    "dr": ["dr-arp", "dr-vip-on-ext"],
}


def caught_here(name: str) -> list[faults.Fault]:
    if FULL:
        return faults.applying_to(load_lab(LABS / name / "lab.yaml"))
    return [faults.by_name(fault) for fault in CAUGHT.get(name, [])]


def only(checks: tuple[str, ...]) -> str:
    """A -k expression selecting these checks ("test_lab.py::test_x[rs0]" -> "test_x and rs0")."""
    return " or ".join(
        "(" + " and ".join(filter(None, [c.split("::")[-1].split("[")[0], c.partition("[")[2].rstrip("]")])) + ")"
        for c in checks
    )


@pytest.mark.parametrize("lab", sorted(CAUGHT), indirect=True)
def test_verify_names_each_fault_and_the_repair_undoes_it(lab):
    name, *_ = lab
    assert caught_here(name), f"no fault to inject on {name}"
    for fault in caught_here(name):
        ssh = ["ssh", "-F", str(lab_dir(name) / "ssh_config"), fault.node]
        try:
            for words in fault.commands:
                injected = subprocess.run([*ssh, "sudo", "-n", shlex.join(words)], capture_output=True, text=True)
                assert injected.returncode == 0, f"{fault.name}: {shlex.join(words)}: {injected.stderr}"
            found = labkit("verify", name, "-m", "not failover", "-k", only(fault.catches))
            assert found.returncode == 1, f"{fault.name} went unnoticed:\n{found.stdout[-2000:]}"
            # pytest names a failed check by its path from where it runs: ".../test_lab.py::test_x[rs0]"
            failed = re.findall(r"^FAILED (\S+)", found.stdout, re.M)
            for check in fault.catches:
                assert any(f == check or f.endswith("/" + check) for f in failed), (
                    f"{fault.name}: {check} did not fail:\n{found.stdout[-2000:]}"
                )
        finally:  # the lab goes on to the next test whole, whatever happened here
            repaired = labkit(fault.repair.value, name)
        assert repaired.returncode == 0, repaired.stderr
        again = labkit("verify", name, "-m", "not failover", "-k", only(fault.catches))
        assert again.returncode == 0, f"{fault.name} not undone by labkit {fault.repair.value}:\n{again.stdout[-2000:]}"


@pytest.mark.parametrize("lab", OPERATED, indirect=True)
def test_bench(lab):
    name, *_ = lab
    result = labkit("bench", name, "--requests", "400", "--concurrency", "4")
    assert result.returncode == 0, result.stderr
    assert re.search(r"completed 400, failed 0", result.stdout), result.stdout
    # the split IPVS counted, as the first service's scheduler and weights say. ab may open a
    # connection or two beyond its requests, and IPVS schedules those too: the split is of them all.
    split = bench_split(name, 300)
    total = sum(split.values())
    assert 300 <= total <= 304, f"IPVS counted {total} new connections for 300 requests: {split}"
    for node, (low, high) in expected_split(name, total).items():
        assert low <= split.get(node, 0) <= high, f"{node}: {split.get(node, 0)} of {total}, expected {low}-{high}"


@pytest.mark.parametrize("lab", WEIGHED, indirect=True)
def test_weight_zero_drains_a_real_server(lab):
    name, *_ = lab
    result = labkit("weight", name, "rs1", "0")
    assert result.returncode == 0, result.stderr
    try:
        # the client sees it: not one new connection reaches rs1
        split = bench_split(name, 40)
        assert split.get("rs1", 0) == 0 and split.get("rs0", 0) >= 40, split
        # verify reads the lab as it now runs: rs1 at weight 0 gets no request
        result = labkit("verify", name, "-k", "split or ipvs_table", "-m", "not failover")
        assert result.returncode == 0, result.stdout[-3000:]
    finally:
        restored = labkit("provision", name)  # back to the lab file's weights, whatever happened
    assert restored.returncode == 0, restored.stderr


@pytest.mark.parametrize("lab", FAIL_INTERRUPTED, indirect=True)
def test_fail_holds_the_lab_stops_when_interrupted_then_heal_or_reset(lab):
    """`labkit fail` under load: a second writer is refused while it runs; a signal stops it and
    the load it started on the client; `labkit heal` or `labkit reset` brings the lab back."""
    name, *_ = lab
    process = subprocess.Popen(
        [sys.executable, "-m", "labkit", "fail", name, "rs1:nginx", "--seconds", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ssh = ["ssh", "-F", str(lab_dir(name) / "ssh_config"), "cl0", "pgrep", "-f", "labkit-load-starte[d]"]
    deadline = time.monotonic() + 60
    while subprocess.run(ssh, capture_output=True).returncode != 0 and time.monotonic() < deadline:
        time.sleep(1)
    assert process.poll() is None, process.communicate()
    time.sleep(5)  # rs1's nginx is stopped by now, under load
    second = labkit("provision", name)
    assert second.returncode == 1
    assert f"the lab {name} is busy: `labkit fail` (process {process.pid}) is changing it" in second.stderr
    sig = signal.SIGINT if name in FAIL_SIGINT else signal.SIGTERM
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 128 + sig, stderr
    assert f"interrupted ({sig.name}): " in stderr, stderr
    assert f"Bring it back with: labkit heal {name}" in stderr
    time.sleep(2)
    assert subprocess.run(ssh, capture_output=True).returncode == 1, "the client's load outlived labkit fail"
    if name in HEALED:
        healed = labkit("heal", name)
        assert healed.returncode == 0, healed.stderr
        assert re.search(r"failed 0, served by rs0 \d+, rs1 \d+", healed.stdout), healed.stdout
    else:
        reset = labkit("reset", name)
        assert reset.returncode == 0, reset.stderr
        assert re.search(rf"{name} reset in \d+ s", reset.stdout), reset.stdout
        # rs1's nginx runs again and takes its share: the split is exact again
        check = labkit("verify", name, "-m", "not failover", "-k", "split or nginx")
        assert check.returncode == 0, check.stdout[-3000:]


# `labkit fail` run to completion, one target of each kind, each report read as a user reads it.
FAILED_TO_COMPLETION = {"nat": "rs0:int", "tun": "rs0:nginx", "dr": "lb0"}


@pytest.mark.parametrize("lab", sorted(FAILED_TO_COMPLETION), indirect=True)
def test_fail_reports_what_the_client_saw_then_heal(lab):
    name, *_ = lab
    target = FAILED_TO_COMPLETION[name]
    result = labkit("fail", name, target, "--seconds", "12")
    try:
        assert result.returncode == 0, result.stderr
        report = result.stdout
        assert re.search(r"requests: \d+, failed: \d+", report), report
        assert f"Still broken. Bring it back with: labkit heal {name}" in report, report
        if target == "lb0":  # the standby took the VIP, and the synced connection kept the transfer whole
            assert "lb0 frozen" in report and "VIP held by: lb1" in report, report
            assert re.search(r"long transfer: (\d+) of \1 bytes", report), report
        else:  # the checker took rs0 out; from then on rs1 alone answered, every request
            assert re.search(r"until the checker took rs0 out", report), report
            assert re.search(r"then: \d+ requests, failed 0, served by rs1 \d+$", report, re.M), report
        if target.endswith(":int"):
            assert "rs0's link to network int down" in report, report
    finally:  # the lab's next tests start from a whole lab, whatever this one found
        healed = labkit("heal", name)
    assert healed.returncode == 0, healed.stderr
    assert re.search(r"failed 0, served by rs0 \d+, rs1 \d+", healed.stdout), healed.stdout


@pytest.mark.parametrize("lab", ["nat"], indirect=True)
def test_an_impaired_network_slows_each_answer_then_provision_takes_netem_off(lab):
    """`labkit fail nat int --delay 300ms` puts netem on every node of int, so each way through
    the director waits 300 ms more: the slowest answers take 600 ms or more. A provision (the
    repair in `labkit heal`) takes it off each node of int, and says so."""
    name, *_ = lab
    result = labkit("fail", name, "int", "--delay", "300ms", "--seconds", "6")
    try:
        assert result.returncode == 0, result.stderr
        assert "network int impaired (delay 300ms)" in result.stdout, result.stdout
        slowest = re.search(r"99th percentile (\d+) ms", result.stdout)
        assert slowest and int(slowest[1]) >= 600, result.stdout
    finally:
        repaired = labkit("provision", name)
    assert repaired.returncode == 0, repaired.stderr
    for node in ("lb0", "lb1", "rs0", "rs1"):
        assert f"+ no netem on {node}'s lab links" in repaired.stdout, repaired.stdout
        ssh = ["ssh", "-F", str(lab_dir(name) / "ssh_config"), node, "/sbin/tc", "qdisc", "show", "dev", "int"]
        shown = subprocess.run(ssh, capture_output=True, text=True)
        assert shown.returncode == 0 and "netem" not in shown.stdout, f"{node}: {shown.stdout}{shown.stderr}"


@pytest.mark.parametrize("lab", ["nat"], indirect=True)
def test_stop_saves_each_vm_and_up_resumes_the_lab_as_it_was(lab):
    """`labkit stop` saves each VM's memory to disk and ends its QEMU; `labkit up` restores them
    instead of booting them: each node goes on in the same boot, its clock is set to the host's
    again by the provisioning, and the lab answers as before."""
    name, *_ = lab
    nodes = list(load_lab(LABS / name / "lab.yaml").nodes)

    def asked(command: str) -> dict[str, tuple[str, float, float]]:
        """node -> what the command printed there, and the host's time before and after asking."""
        ssh = ["ssh", "-F", str(lab_dir(name) / "ssh_config")]

        def ask(node: str) -> tuple[str, float, float]:
            sent = time.time()
            said = subprocess.run([*ssh, node, command], capture_output=True, text=True).stdout.strip()
            return said, sent, time.time()

        with ThreadPoolExecutor(len(nodes)) as pool:
            return dict(zip(nodes, pool.map(ask, nodes)))

    def boots() -> dict[str, str]:
        return {node: said for node, (said, *_) in asked("cat /proc/sys/kernel/random/boot_id").items()}

    before = boots()
    stopped = labkit("stop", name)
    assert stopped.returncode == 0, stopped.stderr
    assert subprocess.run(["pgrep", "-f", f"guest=labkit-{name}-"]).returncode == 1, "a QEMU of the lab still runs"
    listed = json.loads(labkit("list", "--json").stdout)
    assert [(r["state"], r["memory_mib"]) for r in listed if r["name"] == name] == [("saved", 0)], listed
    resumed = labkit("up", name)
    assert resumed.returncode == 0, resumed.stderr
    for node in nodes:
        assert f"repaired: {node} resumed as it was stopped" in resumed.stdout, resumed.stdout
    # restored, not booted: a boot would give each node a new boot id
    assert boots() == before
    # each clock stood still while saved, until the provisioning set it from the RTC (the host's time)
    assert resumed.stdout.count("+ the clock is the host's") == len(nodes), resumed.stdout
    for node, (clock, sent, answered) in asked("date +%s").items():
        assert sent - 2 <= int(clock) <= answered + 2, f"{node}'s clock: {clock}, the host's {sent:.0f}-{answered:.0f}"
    assert labkit("verify", name, "-m", "not failover", "-k", "split").returncode == 0


def virsh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True)


def verify_outcomes(name: str, *args: str) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    report = REPORTS / f"{name}-faults.xml"
    result = labkit("verify", name, "-m", "not failover", f"--junitxml={report}", *args)
    return result, read_junit(report).checks


def wait_for_state(domain: str, state: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while virsh("domstate", domain).stdout.strip() != state:
        assert time.monotonic() < deadline, f"{domain} is not {state}: {virsh('domstate', domain).stdout}"
        time.sleep(0.5)


# After a repair: every node there and answering, and the client's requests split over both real
# servers again (after the last repair, and after the host restarted, the whole verify).
REPAIRED = "node_is_there or hostname or split"


@pytest.mark.parametrize("lab", ["fwmark"], indirect=True)
def test_host_faults_are_named_and_repaired(lab, tmp_path):
    """The host's faults under a running lab: a lab network destroyed, then a VM's QEMU killed and,
    while it is off, the host restarted (every VM and network stopped) with that VM's disk volume
    deleted, and a Vagrant without the box. Each is named in one line by status, doctor or verify,
    and repaired by `labkit up`: the network at once, the rest in one boot of the whole lab."""
    name, *_ = lab
    rs1 = f"labkit-{name}-rs1"

    # a lab network destroyed under the running lab: doctor names it, up starts it and puts the NICs back
    assert virsh("net-destroy", f"labkit-{name}-int").returncode == 0
    doctor = labkit("doctor")
    assert f"network labkit-{name}-int is inactive: labkit up {name} repairs it" in doctor.stdout, doctor.stdout
    result, seen = verify_outcomes(name, "-k", "node_is_there")
    assert result.returncode == 1 and "are cut off (the network was stopped under it)" in result.stdout
    repaired = labkit("up", name)
    assert f"repaired: network labkit-{name}-int started again" in repaired.stdout, repaired.stdout
    assert "put back on its bridge" in repaired.stdout, repaired.stdout
    # up said so once lb0's checkers had put back every real server the cut network took out
    shown = json.loads(labkit("show", name, "--json").stdout)
    listed = {
        svc["key"]: len(svc["real_servers"]) for d in shown["directors"] if d["name"] == "lb0" for svc in d["services"]
    }
    servers = {svc.key: len(svc.real_servers) for svc in load_lab(LABS / name / "lab.yaml").services}
    assert listed == servers, f"lb0 lists {listed} real servers per service, the lab file has {servers}"
    assert labkit("verify", name, "-m", "not failover", "-k", REPAIRED).returncode == 0

    # a VM killed, as the OOM killer would: verify says so once and runs the other nodes' checks
    qemu = subprocess.run(["pgrep", "-f", f"guest={rs1},"], capture_output=True, text=True).stdout.split()
    assert len(qemu) == 1, f"expected one QEMU for {rs1}, found {qemu}"
    os.kill(int(qemu[0]), signal.SIGKILL)
    wait_for_state(rs1, "shut off")
    status = labkit("status", name)
    assert f"rs1: its VM is shutoff: labkit up {name} repairs it" in status.stderr, status.stderr
    result, seen = verify_outcomes(name)
    assert result.returncode == 1 and "TimeoutError" not in result.stdout, result.stdout[-3000:]
    assert f"rs1 is not there: its VM is shutoff. labkit up {name} repairs it" in result.stdout
    assert seen["test_lab.py::test_node_is_there[rs1]"] == "failed"
    assert seen["test_lab.py::test_hostname[rs1]"] == "skipped"
    assert seen["test_lab.py::test_hostname[lb0]"] == seen["test_lab.py::test_addresses[rs0]"] == "passed"
    assert "error" not in seen.values(), seen

    # then the host restarted: every VM off, every network inactive; the lab is stopped, not gone.
    # rs1's disk volume is deleted too, and the box gone from Vagrant: both named
    domains = [f"labkit-{name}-{node}" for node in load_lab(LABS / name / "lab.yaml").nodes]
    for domain in domains:
        virsh("destroy", domain)
    for net in ("ext", "int", "mgmt"):
        virsh("net-destroy", f"labkit-{name}-{net}")
    assert virsh("vol-delete", "--pool", "default", f"{rs1}.img").returncode == 0
    listed = labkit("list", "--json")
    assert [r["state"] for r in json.loads(listed.stdout) if r["name"] == name] == ["stopped"], listed.stdout
    # the box gone: status run with a Vagrant that has no box (the other labs of this run, which may
    # be booting at the same time, keep theirs)
    without = labkit("status", name, env={**os.environ, "VAGRANT_HOME": str(tmp_path / "vagrant.d")})
    assert "the box labkit/bookworm is gone from Vagrant" in without.stderr, without.stderr
    status = labkit("status", name)
    assert f"rs1: its disk volume is gone: labkit up {name} makes the VM again from the box" in status.stderr
    repaired = labkit("up", name)
    assert repaired.returncode == 0, repaired.stderr
    # three networks started, four VMs started again, rs1 made again from the box (not "started")
    assert repaired.stdout.count("repaired: ") == 3 + len(domains), repaired.stdout
    assert "repaired: rs1's VM removed, its disk gone: made again from the box" in repaired.stdout, repaired.stdout
    assert "repaired: lb0 started again (it was shutoff)" in repaired.stdout, repaired.stdout
    assert labkit("verify", name, "-m", "not failover").returncode == 0
    assert labkit("reset", name).returncode == 0  # the snapshot the repairing up took
    assert labkit("verify", name, "-m", "not failover", "-k", "split").returncode == 0


def test_second_provision_changes_nothing(lab):
    name, *_ = lab
    provision_changes_nothing(name)


def test_status_shows_every_node_running(lab):
    name, *_ = lab
    result = labkit("status", name)
    assert result.returncode == 0, result.stderr
    for node in load_lab(LABS / name / "lab.yaml").nodes:
        assert re.search(rf"\b{node}\b.*\brunning\b", result.stdout), f"{node} is not running:\n{result.stdout}"


def test_down_removes_everything(lab):
    name, *_ = lab
    if name in LOST_STATE:  # Vagrant no longer knows the machines: down finds them in libvirt by name
        shutil.rmtree(lab_dir(name) / ".vagrant")
    if name in STOPPED_BEFORE_DOWN:  # libvirt keeps a VM whose memory is saved unless told to drop it
        assert labkit("stop", name).returncode == 0
    down_leaves_nothing(name)
