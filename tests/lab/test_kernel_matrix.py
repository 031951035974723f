"""`labkit matrix` on real VMs: the dr lab (two directors that fail over) on bookworm's kernel
(the baseline) and on bookworm-backports', across two hosts at once: this one and the same
libvirt through qemu+ssh:// (the `remote` fixture), one cell at a time on each. Each box is built
by the matrix if it is missing. CI runs each kernel once and verifies without the failure
scenarios (`--checks 'not failover'`); the full suite (scripts/test --full) runs each twice
(`--repeat 2`, a fresh boot each time, so a check that fails in one run only is a flake) with
every check, in the matrix and in test_labs.py on dr.

The matrix is interrupted with SIGINT once the last pair of cells boots (in the full suite the
first pair is done by then), and the same command then continues it. While the first backports
cell verifies, the test makes one real kernel complain in lb1: with kernel.hung_task_timeout_secs
at 1 it freezes the root filesystem (fsfreeze) under a writer for a few seconds, and khungtaskd
reports the writer blocked (a "hung task" splat), then it sets the U taint flag through the
kernel.tainted sysctl. The matrix must report both as regressions of that kernel, the splat with
its lines. Needs scripts/setup: without it these tests fail, they do not skip.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET

import pytest

from labkit.home import lab_dir
from labkit.running import RunningLab

pytestmark = pytest.mark.lab

LAB = "dr"
KERNELS = ["bookworm", "bookworm-backports"]
FULL = bool(os.environ.get("LABKIT_FULL"))
REPEAT = 2 if FULL else 1
CELLS = len(KERNELS) * REPEAT
LAST_PAIR = {str(CELLS - 1), str(CELLS)}
RUN_1 = " (run 1)" if REPEAT > 1 else ""  # how a regression names the run it was seen in
SELECTED = None if FULL else "not failover"  # --checks
COPIES = [f"{LAB}-{kernel}-{run}" for kernel in KERNELS for run in range(1, REPEAT + 1)]
HURT = "dr-bookworm-backports-1"  # the cell whose kernel the test makes complain
# the kernel's hung-task detector, and a taint flag userspace may set (Documentation/admin-guide/tainted-kernels.rst)
COMPLAIN = (
    "echo 1 > /proc/sys/kernel/hung_task_timeout_secs; fsfreeze -f /; (touch /var/tmp/matrix-hung-task &); "
    "sleep 6; fsfreeze -u /; echo 120 > /proc/sys/kernel/hung_task_timeout_secs; echo 64 > /proc/sys/kernel/tainted"
)


def matrix_command(report, remote) -> list[str]:
    return [
        sys.executable,
        "-m",
        "labkit",
        "matrix",
        LAB,
        *(f"--kernel={k}" for k in KERNELS),
        f"--repeat={REPEAT}",
        "--connect=qemu:///system",
        f"--connect={remote}",
        "--per-host=1",
        *([f"--checks={SELECTED}"] if SELECTED else []),
        "--report",
        str(report),
    ]


def domains() -> list[str]:
    """The matrix's copies' domains (not the dr lab's own, which test_labs.py may be running)."""
    names = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--all", "--name"], capture_output=True, text=True
    ).stdout
    return [d for d in names.split() if any(d.startswith(f"labkit-{copy}-") for copy in COPIES)]


def label(kernel: str, run: int) -> str:
    """How the matrix names a cell in what it prints."""
    return f"{LAB} on {kernel}" + (f" (run {run} of {REPEAT})" if REPEAT > 1 else "")


def interrupted_matrix(report, remote) -> tuple[subprocess.CompletedProcess, dict]:
    """The matrix stopped with SIGINT once the last two cells' VMs are being created (with
    --repeat 2 the first two are done by then); what it said, and what it left: the copies'
    domains and folders, the cells kept."""
    process = subprocess.Popen(
        matrix_command(report, remote), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    said, booting = [], set()
    for line in process.stdout:
        said.append(line)
        found = re.match(rf"\[(\d+)/{CELLS}\] .*: up", line)
        if found and found[1] in LAST_PAIR:
            booting.add(found[1])
        if booting == LAST_PAIR:
            break
    logs = [lab_dir(copy) / "vagrant.log" for copy in COPIES[-2:]]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not all(
        log.exists() and "Creating domain" in log.read_text(errors="replace") for log in logs
    ):
        time.sleep(0.5)
    time.sleep(5)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=600)
    stdout = "".join(said) + stdout
    print(f"$ labkit matrix ... (SIGINT)  -> exit {process.returncode}\n{stdout}\n{stderr}")
    left = {
        "domains": domains(),
        "lab folders": [copy for copy in COPIES if lab_dir(copy).exists()],
        "cells": sorted(path.parent.name for path in report.glob("*/cell.json")),
    }
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), left


def continued_matrix(report, remote) -> tuple[subprocess.CompletedProcess, str]:
    """The same command again; while HURT verifies, lb1's kernel is made to complain."""
    process = subprocess.Popen(
        matrix_command(report, remote), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    said, complained = [], []

    def complain():
        with RunningLab(lab_dir(HURT)) as running:
            complained.append(running.run("lb1", ["sudo", "-n", "sh", "-c", COMPLAIN]))

    stderr = []
    reader = threading.Thread(target=lambda: stderr.append(process.stderr.read()), daemon=True)
    reader.start()
    for line in process.stdout:
        said.append(line)
        if re.match(rf"\[\d+/{CELLS}\] {re.escape(label('bookworm-backports', 1))}: verify", line):
            threading.Thread(target=complain, daemon=True).start()
    process.wait(timeout=3600)
    reader.join()
    stdout = "".join(said)
    print(f"$ labkit matrix ...  -> exit {process.returncode}\n{stdout}\n{''.join(stderr)}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, "".join(stderr)), complained


@pytest.fixture(scope="module")
def matrix(tmp_path_factory, remote):
    report = tmp_path_factory.mktemp("matrix")
    started = time.monotonic()
    stopped = interrupted_matrix(report, remote)
    result, complained = continued_matrix(report, remote)
    print(f"the matrix took {time.monotonic() - started:.0f} s in all")
    yield report, stopped, result, complained
    for copy in COPIES:
        if (lab_dir(copy) / "Vagrantfile").exists():
            subprocess.run([sys.executable, "-m", "labkit", "down", copy])


def cells(report) -> dict[str, dict]:
    return {copy: json.loads((report / copy / "cell.json").read_text()) for copy in COPIES}


def test_an_interrupted_matrix_removes_every_running_cell(matrix):
    report, (stopped, left), _, _ = matrix
    assert stopped.returncode == 128 + signal.SIGINT, stopped.stderr
    assert "Continue with the same command" in stopped.stderr
    done = COPIES[:-2]  # the cells before the last pair
    if done:
        assert f"[1/{CELLS}] {label('bookworm', 1)}: passed" in stopped.stdout
    assert left == {"domains": [], "lab folders": [], "cells": done}, stopped.stdout[-3000:]


def test_continued_it_runs_the_rest_on_both_hosts(matrix, remote):
    report, _, result, _ = matrix
    for n in range(1, CELLS - 1):
        assert f"[{n}/{CELLS}] {label('bookworm', n)}: done before (passed)" in result.stdout
    for n in (CELLS - 1, CELLS):
        assert re.search(rf"\[{n}/{CELLS}\] .*: passed in \d+ s on ", result.stdout), result.stdout[-3000:]
    found = cells(report)
    assert {c["status"] for c in found.values()} == {"passed"}
    hosts = {c["host"] for c in found.values()}
    assert hosts == {"this host", remote.split("?")[0]}, hosts  # the report says where each ran
    assert [c["copy"] for c in found.values()] == COPIES
    assert {c["checks"] for c in found.values()} == {SELECTED}
    for copy in COPIES[-2:]:  # a cell is never reset: its up took no snapshot
        log = (report / copy / "log.txt").read_text()
        assert re.search(r"booted \d+ nodes in", log) and "snapshot taken" not in log, log[-3000:]


def emulated(splat: str) -> bool:
    """A splat the emulator makes on any kernel, not the kernel under test: an RCU stall or a soft
    lockup (a starved vCPU; bookworm's lb0 had a stall 30 s into its boot in a run here, and
    backports' rs1 "soft lockup - CPU#0 stuck for 22s! [swapper/0:1]" 97 s into its boot while ten
    VMs booted on two cores), or the warning for a single-step trap taken in kernel mode, whose
    known cause, the kernel's comment says, is QEMU leaking the trap into its guest (backports'
    IPVS sync thread had one during bench in a run here, no debugger attached)."""
    return any(kind in splat for kind in ("RCU stall", "soft lockup", "exc_debug_kernel"))


def test_a_splat_and_a_taint_on_one_kernel_are_regressions_with_their_lines(matrix):
    report, _, result, complained = matrix
    assert complained == [""], "the test could not make lb1's kernel complain"
    assert result.returncode == 1, result.stderr
    data = json.loads((report / "matrix.json").read_text())
    first = data["regressions"][0]
    assert (first["lab"], first["what"]) == (LAB, "splat"), data["regressions"]
    # the writer, and any other task that wrote to the frozen disk meanwhile (journald, a kworker)
    hung = [r for r in data["regressions"] if r["what"] == "splat" and ": hung task on " in r["text"]]
    assert all(
        r["text"].startswith(f"{LAB} on bookworm-backports: hung task on lb1{RUN_1}, during verify") for r in hung
    )
    touch = [r for r in hung if re.search(r"INFO: task touch:\d+ blocked for more than \d+ seconds", r["text"])]
    assert touch, data["regressions"]
    assert any("hung_task_timeout_secs" in line for line in touch[0]["lines"]), touch[0]["lines"]
    others = [r["text"] for r in data["regressions"] if r["what"] == "splat" and r not in hung]
    assert all(emulated(text) for text in others), others
    assert f"regression: {first['text']}" in result.stdout
    markdown = (report / "matrix.md").read_text()
    assert markdown.index("## Regressions") < markdown.index("hung task on lb1") < markdown.index("## Kernel log")
    # no hung task and no taint anywhere else: they came from the one guest the test hurt
    found = cells(report)
    for copy, cell in found.items():
        splats = [s for s in cell["kernel_log"]["splats"] if s["node"] != "lb1" or copy != HURT]
        assert all(emulated(f"{s['kind']}: {s['title']}") for s in splats), (copy, splats)
        # the flags those splats set: W for a warning, L for a soft lockup
        flagged = {(s["node"], {"WARNING": "W", "soft lockup": "L"}.get(s["kind"])) for s in splats}
        flags = {node: [x for x in f if (node, x) not in flagged] for node, f in cell["kernel_log"]["taints"].items()}
        assert {node: f for node, f in flags.items() if f} == ({"lb1": ["U"]} if copy == HURT else {}), (copy, flags)


def test_the_report_has_its_sections_and_both_kernels_side_by_side(matrix):
    report, _, _, _ = matrix
    data = json.loads((report / "matrix.json").read_text())
    markdown = (report / "matrix.md").read_text()
    for section in ("## Regressions", "## Kernel log", "## Flakes", "## Fixes", "## Kernels", f"## {LAB}"):
        assert section in markdown
    releases = data["labs"][LAB]["facts"]["lb0_kernel"]
    assert list(releases) == KERNELS
    assert releases["bookworm"].startswith("6.1.") and releases["bookworm-backports"].startswith("6.12."), releases
    # every check ran on both kernels, in every run; a check that failed once is a flake, not a regression
    flaky = {f["check"] for f in data["flakes"]}
    for check, seen in data["labs"][LAB]["checks"].items():
        assert set(seen.values()) <= {"passed", "flaky", "skipped"}, (check, seen)
        assert ("flaky" in seen.values()) == (check in flaky)
    # nothing but the test's own splat and taint, and figures beyond their band, may regress:
    # a check that failed in every run on backports would be one
    figures = set(data["labs"][LAB]["figures"])
    assert [r["text"] for r in data["regressions"] if r["what"] not in figures | {"splat", "taint"}] == []
    # each figure is the median of the runs, with their range when there are two
    spread = r" \[[\d.]+–[\d.]+\]" if REPEAT > 1 else r" \|"
    assert re.search(r"\| bench_requests_per_second \| [\d.]+" + spread, markdown), markdown


def test_one_junit_file_for_the_whole_matrix(matrix):
    report, _, _, _ = matrix
    suites = ET.parse(report / "matrix.xml").getroot()
    assert [s.get("name") for s in suites] == [f"{LAB} on bookworm (baseline)", f"{LAB} on bookworm-backports"]
    verify = ET.parse(report / "dr-bookworm-1" / "verify.xml")
    checks = len(list(verify.iter("testcase")))
    for suite in suites:
        cases = {c.get("name"): c for c in suite.iter("testcase")}
        assert len(cases) == checks + 1 and "kernel log" in cases
        assert int(suite.get("tests")) == len(cases)
    hurt = {c.get("name"): c for c in suites[1].iter("testcase")}["kernel log"]
    assert "INFO: task touch" in hurt.find("failure").text
    assert {c.get("name"): c for c in suites[0].iter("testcase")}["kernel log"].find("failure") is None


def test_the_page_renders_in_a_real_browser_loading_nothing_from_outside(matrix, browser):
    report, _, _, _ = matrix
    page, outside = browser
    page.goto((report / "matrix.html").as_uri())
    headings = page.locator("h2").all_inner_texts()
    for section in ("Regressions", "Kernel log", "Flakes", "Fixes", "Kernels", LAB):
        assert any(h.startswith(section) for h in headings), headings
    assert page.locator("table").count() >= 5
    assert page.locator("svg rect").count() >= 2  # the figures' bars
    assert "hung task on lb1" in page.locator("#regressions + ul").inner_text()
    assert outside == []
    assert os.path.getsize(report / "matrix.html") > 0
