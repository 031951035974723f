"""`labkit matrix` on real VMs: the fwmark lab (and with scripts/test --full the nat lab, with
its failure scenarios) on bookworm's kernel (the baseline), on bookworm-backports' and on sid's,
each box built by the matrix if it is missing. The first run is interrupted with SIGINT while the
second cell boots; the same command then continues it. Needs scripts/setup: without it these
tests fail, they do not skip.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from labkit.home import lab_dir

pytestmark = pytest.mark.lab

KERNELS = ["bookworm", "bookworm-backports", "sid"]
LABS = ["fwmark"] + (["nat"] if os.environ.get("LABKIT_FULL") else [])
LAB = LABS[0]  # the one interrupted
CELLS = len(LABS) * len(KERNELS)


def matrix_command(report) -> list[str]:
    return [
        sys.executable,
        "-m",
        "labkit",
        "matrix",
        *LABS,
        *(f"--kernel={k}" for k in KERNELS),
        "--report",
        str(report),
    ]


def interrupted_matrix(report) -> tuple[subprocess.CompletedProcess, dict]:
    """The matrix stopped with SIGINT once the second cell's VMs are being created; what it said,
    and what it left: the lab's libvirt domains and folder, and the cells it kept."""
    process = subprocess.Popen(matrix_command(report), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    said = []
    for line in process.stdout:  # one line per step; the second cell's up starts after the first is done
        said.append(line)
        if line.startswith(f"[2/{CELLS}]") and line.rstrip().endswith(": up"):
            break
    log = lab_dir(LAB) / "vagrant.log"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (log.exists() and "Creating domain" in log.read_text(errors="replace")):
        time.sleep(0.5)
    time.sleep(5)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    stdout = "".join(said) + stdout
    print(f"$ labkit matrix ... (SIGINT)  -> exit {process.returncode}\n{stdout}\n{stderr}")
    domains = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--all", "--name"], capture_output=True, text=True
    ).stdout
    left = {
        "domains": [d for d in domains.split() if d.startswith(f"labkit-{LAB}-")],
        "lab folder": lab_dir(LAB).exists(),
        "cells": sorted(path.parent.name for path in report.glob("*/cell.json")),
    }
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), left


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    report = tmp_path_factory.mktemp("matrix")
    stopped = interrupted_matrix(report)
    result = subprocess.run(matrix_command(report), capture_output=True, text=True, timeout=3600)
    print(f"$ labkit matrix ...  -> exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    yield report, stopped, result
    for lab in LABS:
        if (lab_dir(lab) / "Vagrantfile").exists():
            subprocess.run([sys.executable, "-m", "labkit", "down", lab])


def statuses(report) -> dict[str, str]:
    return {
        f"{lab} on {kernel}": json.loads((report / f"{lab}-{kernel}" / "cell.json").read_text())["status"]
        for lab in LABS
        for kernel in KERNELS
    }


def test_an_interrupted_matrix_removes_the_cell_it_ran(matrix):
    report, (stopped, left), _ = matrix
    assert stopped.returncode == 128 + signal.SIGINT, stopped.stderr
    assert "Continue with the same command" in stopped.stderr
    assert f"[1/{CELLS}] {LAB} on bookworm: passed" in stopped.stdout
    assert left == {"domains": [], "lab folder": False, "cells": [f"{LAB}-bookworm"]}


def test_continued_it_keeps_what_was_done_and_runs_the_rest(matrix):
    report, _, result = matrix
    assert f"[1/{CELLS}] {LAB} on bookworm: done before (passed)" in result.stdout
    cells = list(statuses(report))
    for n, cell in enumerate(cells[1:], 2):
        assert f"[{n}/{CELLS}] {cell}: passed" in result.stdout, result.stdout[-3000:]
    assert statuses(report) == dict.fromkeys(cells, "passed")


def test_every_kernel_balances_fails_over_and_keeps_its_checks(matrix):
    """Every check passes on every kernel: a check that regressed would fail its cell. Only a
    figure beyond its noise band may make the matrix exit 1, and then it says which."""
    report, _, result = matrix
    assert result.returncode in (0, 1), result.stderr
    regressions = [line for line in result.stdout.splitlines() if line.startswith("regression:")]
    assert (result.returncode == 1) == bool(regressions), result.stdout
    data = json.loads((report / "matrix.json").read_text())
    assert len(data["regressions"]) == len(regressions)
    figures = {figure for lab in LABS for figure in data["labs"][lab]["figures"]}
    assert [r["text"] for r in data["regressions"] if r["what"] not in figures] == []


def test_the_report_shows_each_kernel_side_by_side(matrix):
    report, _, _ = matrix
    data = json.loads((report / "matrix.json").read_text())
    markdown = (report / "matrix.md").read_text()
    page = (report / "matrix.html").read_text()
    for lab in LABS:
        releases = data["labs"][lab]["facts"]["lb0_kernel"]  # kernel SPEC -> what lb0's uname -r said
        assert list(releases) == KERNELS
        assert releases["bookworm"].startswith("6.1.") and releases["bookworm-backports"].startswith("6.12.")
        assert int(releases["sid"].split(".")[0]) >= 6 and len(set(releases.values())) == 3, releases
        for release in releases.values():
            assert release in markdown and release in page
        for kernel in KERNELS:
            assert (report / f"{lab}-{kernel}" / "verify.xml").exists()
    assert "bench_requests_per_second" in markdown and "<svg" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "the page must not load anything"
