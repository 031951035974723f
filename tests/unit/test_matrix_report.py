"""The kernel matrix's report: JUnit XML read, cells compared with the baseline within the
noise bands, and the report written as JSON, Markdown and one self-contained HTML page.

samples/verify-bookworm.xml and verify-trixie.xml were written by pytest itself
(`-o junit_family=xunit1 --junitxml=...`, as `labkit verify` runs it) on throwaway tests that
call record_property like the checks do."""

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from labkit.operate.matrix import cell_folder
from labkit.operate.matrix_report import (
    SMALL,
    Cell,
    band_for,
    check_key,
    compare,
    load,
    markdown,
    read_junit,
    write,
)

SAMPLES = Path(__file__).parent / "samples"


def test_junit_checks_are_keyed_by_file_and_name_with_their_outcome():
    checks = read_junit(SAMPLES / "verify-trixie.xml").checks
    assert checks["test_failover.py::test_director_stops"] == "passed"
    assert checks["test_failover.py::test_director_dies"] == "failed"
    assert checks["test_failover.py::test_sync_daemon"] == "error"  # its fixture failed
    assert checks["test_failover.py::test_tun_only"] == "skipped"
    assert checks["test_lab.py::test_versions[lb0]"] == "passed"
    assert checks["test_lab.py::TestClient::test_answers_from_every_real_server"] == "passed"
    assert len(checks) == 10


@pytest.mark.parametrize(
    "testcase, key",
    [
        ('<testcase classname="test_lab" name="test_vip[nat]" file="test_lab.py"/>', "test_lab.py::test_vip[nat]"),
        (
            '<testcase classname="labkit.verify.checks.test_lab" name="test_vip" file="labkit/verify/checks/test_lab.py"/>',
            "test_lab.py::test_vip",
        ),
        (
            '<testcase classname="labkit.verify.checks.test_lab.TestClient" name="test_vip"/>',
            "test_lab.py::TestClient::test_vip",
        ),
    ],
)
def test_check_key_from_classname_and_file(testcase, key):
    assert check_key(ET.fromstring(testcase)) == key


def test_junit_properties_are_figures_when_numeric_and_facts_otherwise():
    junit = read_junit(SAMPLES / "verify-bookworm.xml")
    assert junit.figures["test_director_stops:outage_seconds"] == 1.2
    assert junit.figures["test_director_stops:transfer_bytes_lost"] == 0
    assert junit.figures["test_real_server_dies:failed_requests_until_checked"] == 4
    assert junit.facts["test_versions[lb0]:lb0_kernel"] == "6.1.0-40-amd64"
    assert junit.facts["test_versions[lb0]:lb0_ipvsadm"] == "1:1.31-1+b1"
    assert not any("kernel" in k or "ipvsadm" in k for k in junit.figures)


def test_bands_match_the_property_name():
    assert band_for("test_director_dies:outage_seconds").figure == "outage_seconds"
    assert band_for("test_real_server_dies:failed_requests_until_checked").figure == "failed_requests_until_checked"
    assert band_for("bench_failed_requests").figure == "*failed_requests*"
    assert band_for("test_x:some_new_figure") is None


def cell(
    kernel: str,
    figures: dict | None = None,
    checks: dict | None = None,
    status: str = "passed",
    error: str | None = None,
    lab: str = "nat",
) -> Cell:
    return Cell(
        lab=lab,
        kernel=kernel,
        box=f"labkit/{kernel}",
        release=None,
        status=status,
        error=error,
        seconds=300.0,
        figures=figures or {},
        checks=checks or {},
        facts={},
    )


KERNELS = ["bookworm", "trixie"]


def regressions(base: Cell, other: Cell) -> list[str]:
    return [str(r) for r in compare([base, other], KERNELS).regressions]


@pytest.mark.parametrize(
    "figure, before, after, regressed",
    [
        ("test_director_dies:outage_seconds", 1.2, 2.8, True),  # +1.6 s, band +1.5 s
        ("test_director_dies:outage_seconds", 3.09, 4.1, False),  # one tick of the client's timeout
        ("test_real_server_dies:failed_requests_until_checked", 6, 11, False),  # one checker tick
        ("test_real_server_dies:failed_requests_until_checked", 6, 19, True),
        ("test_real_server_dies:heal_seconds", 21.1, 28.2, False),  # band +50 %, at least 5 s
        ("test_real_server_dies:heal_seconds", 10, 15.5, True),
        ("test_director_dies:outage_seconds", 2.5, 0.2, False),  # better
        ("test_director_dies:failed_requests", 3, 6, True),  # +3, band +2
        ("test_director_dies:failed_requests", 3, 5, False),
        ("test_director_dies:transfer_bytes_lost", 0, 1, True),  # any increase
        ("test_director_dies:transfer_bytes_lost", 0, 0, False),
        ("bench_requests_per_second", 100, 70, True),  # lower is worse: -30 %, band -25 %
        ("bench_requests_per_second", 100, 80, False),
        ("bench_requests_per_second", 100, 300, False),
        ("bench_p99_ms", 10, 25, False),  # +150 % but only +15 ms
        ("bench_p99_ms", 100, 140, False),  # +40 ms but only +40 %
        ("bench_p99_ms", 100, 160, True),
        ("boot_seconds", 150, 226, True),  # band +50 %, at least 60 s
        ("boot_seconds", 150, 224, False),
        ("boot_seconds", 60, 119, False),
        ("provision_seconds", 5, 16, True),
        ("test_x:some_new_figure", 1, 1000, False),  # no band: shown, never a regression
    ],
)
def test_a_figure_regresses_only_beyond_its_band(figure, before, after, regressed):
    found = regressions(cell("bookworm", {figure: before}), cell("trixie", {figure: after}))
    assert bool(found) == regressed, found


def test_a_regressed_figure_says_what_and_by_how_much():
    found = regressions(
        cell("bookworm", {"bench_requests_per_second": 120}), cell("trixie", {"bench_requests_per_second": 80})
    )
    assert found == [
        ("nat on trixie: bench_requests_per_second went from 120 to 80 req/s, beyond its band (-25 %) around bookworm")
    ]


def test_a_check_that_passed_on_the_baseline_and_fails_is_a_regression():
    base = cell("bookworm", checks={"test_failover.py::test_director_dies": "passed", "test_lab.py::test_ok": "failed"})
    other = cell(
        "trixie",
        status="failed",
        checks={"test_failover.py::test_director_dies": "error", "test_lab.py::test_ok": "failed"},
    )
    assert regressions(base, other) == [
        ("nat on trixie: test_failover.py::test_director_dies passed on bookworm, error on trixie")
    ]


def test_checks_that_did_not_run_on_a_kernel_are_a_regression():
    base = cell("bookworm", checks={f"test_lab.py::test_{n}": "passed" for n in range(5)})
    other = cell("trixie", status="failed", checks={"test_lab.py::test_0": "passed"})
    assert regressions(base, other) == [
        (
            "nat on trixie: 4 checks that passed on bookworm did not run on trixie: "
            "test_lab.py::test_1, test_lab.py::test_2, test_lab.py::test_3 and 1 more"
        )
    ]


def test_a_cell_that_did_not_run_is_a_regression():
    base = cell("bookworm", {"boot_seconds": 100}, {"test_lab.py::test_ok": "passed"})
    other = cell("trixie", status="error", error="labkit up failed (exit 1):\nlb0: timed out")
    assert regressions(base, other) == [
        (
            "nat on trixie: did not run: labkit up failed (exit 1): … lb0: timed out "
            "(1 check that passed on bookworm not run)"
        )
    ]


def test_a_baseline_that_did_not_run_compares_nothing():
    base = cell("bookworm", status="error", error="no box for kernel bookworm")
    other = cell("trixie", {"boot_seconds": 900}, {"test_lab.py::test_ok": "failed"}, status="failed")
    comparison = compare([base, other], KERNELS)
    assert comparison.regressions == []
    assert comparison.labs[0].notes == ["nat did not run on the baseline bookworm: nothing is compared"]


def test_a_lab_missing_on_a_kernel_did_not_run():
    comparison = compare([cell("bookworm")], KERNELS)
    assert [str(r) for r in comparison.regressions] == ["nat on trixie: did not run: it has no cell.json"]


def test_many_checks_that_pass_everywhere_are_one_line():
    checks = {f"test_lab.py::test_{n}": "passed" for n in range(SMALL + 1)}
    md = markdown(compare([cell("bookworm", checks=checks), cell("trixie", checks=checks)], KERNELS))
    assert f"All {SMALL + 1} checks pass on every kernel." in md
    assert "test_lab.py::test_0" not in md


def test_many_checks_show_only_those_that_differ():
    checks = {f"test_lab.py::test_{n}": "passed" for n in range(SMALL + 1)}
    worse = cell("trixie", checks=checks | {"test_lab.py::test_3": "failed"}, status="failed")
    md = markdown(compare([cell("bookworm", checks=checks), worse], KERNELS))
    assert f"{SMALL} of {SMALL + 1} checks pass on every kernel; the others:" in md
    assert "| test_lab.py::test_3 | passed | **failed** ⚠ |" in md
    assert "test_lab.py::test_0 " not in md


# ---- the written report --------------------------------------------------------------------

RECORDS = [
    {
        "lab": "nat",
        "kernel": "bookworm",
        "box": "labkit/linux-6.1.0-40-amd64",
        "release": "6.1.0-40-amd64",
        "status": "passed",
        "error": None,
        "seconds": 512.3,
        "junit": "verify.xml",
        "figures": {
            "boot_seconds": 160.2,
            "provision_seconds": 21.0,
            "bench_requests_per_second": 120.5,
            "bench_p99_ms": 45,
            "bench_failed_requests": 0,
        },
    },
    {
        "lab": "nat",
        "kernel": "trixie",
        "box": "labkit/linux-6.12.48+deb13-amd64",
        "release": None,
        "status": "failed",
        "error": None,
        "seconds": 530.0,
        "junit": "verify.xml",
        "figures": {
            "boot_seconds": 170.0,
            "provision_seconds": 22.5,
            "bench_requests_per_second": 80.1,
            "bench_p99_ms": 60,
            "bench_failed_requests": 0,
        },
    },
    {
        "lab": "dr",
        "kernel": "bookworm",
        "box": "labkit/linux-6.1.0-40-amd64",
        "release": "6.1.0-40-amd64",
        "status": "passed",
        "error": None,
        "seconds": 480.0,
        "junit": None,
        "figures": {"boot_seconds": 150.0},
    },
    {
        "lab": "dr",
        "kernel": "trixie",
        "box": None,
        "release": None,
        "status": "error",
        "error": "labkit up failed (exit 1):\nlb0: Timed out while waiting for the machine to boot\n"
        "lb0's console, last lines:\n[  3.2] Kernel panic - not syncing: VFS: Unable to mount root fs",
        "seconds": 95.0,
        "junit": None,
        "figures": {},
    },
]


@pytest.fixture
def report(tmp_path: Path) -> Path:
    for record in RECORDS:
        folder = cell_folder(tmp_path, record["lab"], record["kernel"])
        folder.mkdir()
        (folder / "cell.json").write_text(json.dumps(record))
        if record["junit"]:
            shutil.copy(SAMPLES / f"verify-{record['kernel']}.xml", folder / "verify.xml")
    return tmp_path


def test_write_returns_the_regressions(report: Path):
    found = [str(r) for r in write(report, RECORDS, KERNELS)]
    assert found == [
        "nat on trixie: test_failover.py::test_director_dies passed on bookworm, failed on trixie",
        "nat on trixie: test_failover.py::test_sync_daemon passed on bookworm, error on trixie",
        "nat on trixie: bench_requests_per_second went from 120.5 to 80.1 req/s, beyond its band (-25 %) around bookworm",
        "nat on trixie: test_director_dies:outage_seconds went from 2.9 to 4.5 s, beyond its band (+1.5 s) around bookworm",
        "nat on trixie: test_director_dies:failed_requests went from 5 to 9, beyond its band (+2) around bookworm",
        (
            "dr on trixie: did not run: labkit up failed (exit 1): … "
            "[  3.2] Kernel panic - not syncing: VFS: Unable to mount root fs"
        ),
    ]


def test_markdown_marks_the_regressions(report: Path):
    write(report, RECORDS, KERNELS)
    md = (report / "matrix.md").read_text()
    assert md.startswith("# Kernel matrix: nat, dr\n")
    assert "## Regressions (6)" in md
    assert "| test_failover.py::test_director_dies | passed | **failed** ⚠ |" in md
    assert "| test_director_dies:outage_seconds | 2.9 | **4.5 (+1.6)** ⚠ | +1.5 s |" in md
    assert "| test_director_stops:outage_seconds | 1.2 | 2.1 (+0.9) | +1.5 s |" in md  # within its band
    assert "| bench_p99_ms | 45 | 60 (+33 %) | +50 % and at least +20 ms |" in md
    assert "| lb0_ipvsadm | 1:1.31-1+b1 | 1:1.31-1+b2 |" in md
    # the kernels with the release verify saw where the cell.json has none
    assert "| trixie | 6.12.48+deb13-amd64 | labkit/linux-6.12.48+deb13-amd64 |" in md
    assert "Kernel panic - not syncing" in md  # a cell's error in full
    assert "| transfer_bytes_lost | higher | any increase |" in md
    assert md.index("## Regressions") < md.index("## nat") < md.index("## Noise bands")


def test_markdown_says_when_every_check_passes(tmp_path: Path):
    records = [dict(RECORDS[0], status="passed", kernel=k) for k in KERNELS]
    for record in records:
        folder = cell_folder(tmp_path, "nat", record["kernel"])
        folder.mkdir()
        shutil.copy(SAMPLES / "verify-bookworm.xml", folder / "verify.xml")
    write(tmp_path, records, KERNELS)
    md = (tmp_path / "matrix.md").read_text()
    assert "## Regressions (0)\n\nNone." in md
    assert "9 of 10 checks pass on every kernel." in md  # one is skipped on both
    assert "| test_failover.py::test_tun_only | skipped | skipped |" in md


def test_html_is_one_self_contained_page(report: Path):
    write(report, RECORDS, KERNELS)
    page = (report / "matrix.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=|<link|<script|@import|url\(""", page)
    assert "http://" not in page and "https://" not in page
    assert page.count("<svg") == len(json.loads((report / "matrix.json").read_text())["labs"]["nat"]["figures"]) + 1
    assert "test_director_dies:outage_seconds" in page and "#c0392b" in page  # its bar is red
    assert "lb0&#x27;s console" in page  # text is escaped


def test_html_escapes_what_the_cells_say(tmp_path: Path):
    record = dict(RECORDS[3], kernel="bookworm", error="<script>alert(1)</script>")
    cell_folder(tmp_path, "dr", "bookworm").mkdir()
    write(tmp_path, [record], ["bookworm"])
    page = (tmp_path / "matrix.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_json_round_trips(report: Path):
    found = write(report, RECORDS, KERNELS)
    data = json.loads((report / "matrix.json").read_text())
    assert data["baseline"] == "bookworm" and data["kernels"] == KERNELS
    assert [(r["lab"], r["kernel"], r["what"], r["text"]) for r in data["regressions"]] == [
        (r.lab, r.kernel, r.what, str(r)) for r in found
    ]
    assert data["labs"]["nat"]["checks"]["test_failover.py::test_director_dies"] == {
        "bookworm": "passed",
        "trixie": "failed",
    }
    assert data["labs"]["nat"]["figures"]["bench_p99_ms"] == {"bookworm": 45, "trixie": 60}
    assert data["labs"]["dr"]["figures"]["boot_seconds"] == {"bookworm": 150.0, "trixie": None}
    assert {b["figure"]: b["text"] for b in data["bands"]}["bench_requests_per_second"] == "-25 %"
    cells = sorted((Cell(**c) for c in data["cells"]), key=lambda c: (c.lab, c.kernel))
    assert [(c.lab, c.kernel, c.status, c.figures, c.checks) for c in cells] == [
        (c.lab, c.kernel, c.status, c.figures, c.checks) for c in load(report)
    ]


# ---- runs taken together, the kernel's log, fixes, an earlier report, JUnit ---------------

HUNG = {
    "node": "lb1",
    "kind": "hung task",
    "title": "INFO: task touch:1204 blocked for more than 1 seconds.",
    "lines": [
        "INFO: task touch:1204 blocked for more than 1 seconds.",
        '"echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.',
    ],
    "seconds": 312.5,
    "moment": "during verify (test_director_dies), 40 s in",
}


def run(kernel: str, n: int, checks=None, figures=None, splats=(), taints=None, release=None) -> Cell:
    found = cell(kernel, figures, checks)
    found.run, found.release = n, release
    found.host = "this host" if n % 2 else "qemu+ssh://lab@far/system"
    found.splats = [s | {"run": n} for s in splats]
    found.taints = taints if taints is not None else {"lb0": [], "lb1": []}
    return found


def test_a_check_that_passes_and_fails_on_one_kernel_is_flaky_not_a_regression():
    cells = [
        run("bookworm", 1, {"test_vip": "passed"}),
        run("bookworm", 2, {"test_vip": "passed"}),
        run("trixie", 1, {"test_vip": "failed"}),
        run("trixie", 2, {"test_vip": "passed"}),
    ]
    found = compare(cells, KERNELS)
    assert found.regressions == []
    assert [str(f) for f in found.flakes] == ["nat on trixie: test_vip passed in 1 of 2 runs (failed, passed)"]
    assert found.labs[0].checks["test_vip"] == {"bookworm": "passed", "trixie": "flaky"}


def test_a_check_that_fails_in_every_run_is_a_regression():
    cells = [run("bookworm", n, {"test_vip": "passed"}) for n in (1, 2)]
    cells += [run("trixie", n, {"test_vip": "failed"}) for n in (1, 2)]
    assert [str(r) for r in compare(cells, KERNELS).regressions] == [
        "nat on trixie: test_vip passed on bookworm, failed on trixie"
    ]


def test_figures_of_repeated_runs_are_their_median_with_their_range():
    cells = [run("bookworm", n, figures={"boot_seconds": v}) for n, v in ((1, 150), (2, 170), (3, 160))]
    table = compare(cells, KERNELS[:1]).labs[0]
    assert table.figures["boot_seconds"] == {"bookworm": 160}
    assert table.cells["bookworm"].spread["boot_seconds"] == (150, 170)
    assert table.cells["bookworm"].host == "this host, qemu+ssh://lab@far/system"  # where the runs ran


def test_with_three_runs_the_baselines_own_spread_widens_a_narrow_band():
    # bench_failed_requests has a band of +2; the baseline itself went from 0 to 9
    base = [run("bookworm", n, figures={"bench_failed_requests": v}) for n, v in ((1, 0), (2, 9), (3, 4))]
    other = [run("trixie", n, figures={"bench_failed_requests": 12}) for n in (1, 2, 3)]
    assert compare(base + other, KERNELS).regressions == []  # 12 - 4 = 8, within the spread of 9
    worse = [run("trixie", n, figures={"bench_failed_requests": 14}) for n in (1, 2, 3)]
    (found,) = compare(base + worse, KERNELS).regressions
    assert "widened to 9 by its spread" in str(found)
    two = [c for c in base if c.run < 3] + other[:2]  # with two runs the fixed band holds
    assert [r.what for r in compare(two, KERNELS).regressions] == ["bench_failed_requests"]


def test_a_splat_the_baseline_did_not_have_is_a_regression_first_with_its_lines():
    cells = [run("bookworm", 1, {"test_vip": "passed"}), run("trixie", 1, {"test_vip": "failed"}, splats=[HUNG])]
    found = compare(cells, KERNELS).regressions
    assert [r.what for r in found] == ["splat", "test_vip"]
    assert str(found[0]) == (
        "nat on trixie: hung task on lb1, during verify (test_director_dies), 40 s in, not on bookworm: "
        "INFO: task touch:1204 blocked for more than 1 seconds."
    )
    assert found[0].lines == HUNG["lines"]


def test_a_splat_the_baseline_had_too_is_no_regression():
    other = dict(HUNG, title="INFO: task touch:977 blocked for more than 1 seconds.")  # another pid, same place
    cells = [run("bookworm", 1, splats=[HUNG]), run("trixie", 1, splats=[other])]
    assert compare(cells, KERNELS).regressions == []


def test_a_taint_flag_the_baseline_did_not_have_is_a_regression():
    cells = [run("bookworm", 1, taints={"lb0": ["E"]}), run("trixie", 1, taints={"lb0": ["E"], "rs0": ["W"]})]
    assert [str(r) for r in compare(cells, KERNELS).regressions] == [
        "nat on trixie: rs0's kernel is tainted, not on bookworm: W: kernel issued a warning"
    ]


def test_a_check_that_failed_on_the_baseline_and_passes_is_a_fix():
    cells = [run("bookworm", 1, {"test_vip": "failed"}), run("trixie", 1, {"test_vip": "passed"})]
    found = compare(cells, KERNELS)
    assert [str(f) for f in found.fixes] == ["nat on trixie: test_vip failed on bookworm, passes on trixie"]
    assert found.regressions == []


def earlier(tmp_path: Path, cells: list[Cell]) -> dict:
    from labkit.operate.matrix_report import to_json

    return json.loads(json.dumps(to_json(compare(cells, KERNELS))))


def test_against_an_earlier_report_the_same_kernel_is_compared(tmp_path: Path):
    old = earlier(
        tmp_path, [run("bookworm", 1, {"a": "passed", "b": "failed"}), run("trixie", 1, {"a": "passed", "b": "failed"})]
    )
    now = [
        run("bookworm", 1, {"a": "passed", "b": "failed"}),
        run("trixie", 1, {"a": "failed", "b": "passed"}, splats=[HUNG]),
    ]
    found = compare(now, KERNELS, old)
    against = [(r.what, r.against) for r in found.regressions]
    assert ("a", "earlier report") in against and ("splat", "earlier report") in against
    assert [str(f) for f in found.fixes if f.against == "earlier report"] == [
        "nat on trixie: b failed in the earlier report, passes now"
    ]


def test_an_earlier_report_that_cannot_be_read_is_one_line(tmp_path: Path):
    from labkit.errors import LabkitError
    from labkit.operate.matrix_report import read_earlier

    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(LabkitError, match=r"--compare .*bad.json: not a matrix.json"):
        read_earlier(tmp_path / "bad.json")
    with pytest.raises(LabkitError, match="cannot read it"):
        read_earlier(tmp_path / "none.json")


def test_a_kernel_package_is_named_by_its_release_with_its_path_once():
    deb = "/src/linux-image-6.18.0-rc1_6.18.0-rc1-1_amd64.deb"
    cells = [run("bookworm", 1, {"a": "passed"}), run(deb, 1, {"a": "failed"}, release="6.18.0-rc1-amd64")]
    cells[1].box = "labkit/linux-6.18.0-rc1-amd64"
    comparison = compare(cells, ["bookworm", deb])
    md = markdown(comparison)
    assert md.count(deb) == 1  # in the kernels table
    assert "| 6.18.0-rc1-amd64 | 6.18.0-rc1-amd64 |" in md
    assert "| a | passed | **failed** ⚠ |" in md


def test_one_junit_file_a_suite_per_lab_and_kernel_flakes_marked(tmp_path: Path):
    from labkit.operate.matrix_report import junit

    cells = [run("bookworm", n, {"a": "passed", "b": "passed"}) for n in (1, 2)]
    cells += [
        run("trixie", 1, {"a": "failed", "b": "failed"}, splats=[HUNG]),
        run("trixie", 2, {"a": "passed", "b": "failed"}),
    ]
    root = ET.fromstring(junit(compare(cells, KERNELS)).split("\n", 1)[1])
    assert [s.get("name") for s in root] == ["nat on bookworm (baseline)", "nat on trixie"]
    cases = {c.get("name"): c for c in root[1]}
    assert [e.tag for e in cases["a"]] == ["flakyFailure"] and cases["a"].find("flakyFailure").get(
        "message"
    ) == "run 1: failed"
    assert cases["b"].find("failure").get("message") == "failed in every run"
    assert "INFO: task touch:1204" in cases["kernel log"].find("failure").text
    assert (root[1].get("tests"), root[1].get("failures")) == ("3", "2")
    assert root[0].get("failures") == "0"


def test_the_report_has_its_sections_even_when_they_are_empty(tmp_path: Path):
    md = markdown(compare([run("bookworm", 1, {"a": "passed"}), run("trixie", 1, {"a": "passed"})], KERNELS))
    for section in ("## Regressions (0)", "## Kernel log (0 splats)", "## Flakes (0)", "## Fixes (0)"):
        assert section in md
    assert "| nat | trixie | none | none |" in md


def test_a_check_skipped_in_one_run_and_passed_in_another_is_not_flaky():
    cells = [run("bookworm", 1, {"a": "passed"}), run("bookworm", 2, {"a": "skipped"})]
    found = compare(cells, KERNELS[:1])
    assert found.flakes == [] and found.labs[0].checks["a"] == {"bookworm": "passed"}


def test_the_report_says_when_verify_ran_only_some_checks(tmp_path: Path):
    records = [dict(RECORDS[0], status="passed", kernel=k, checks="not failover") for k in KERNELS]
    for record in records:
        folder = cell_folder(tmp_path, "nat", record["kernel"])
        folder.mkdir()
        shutil.copy(SAMPLES / "verify-bookworm.xml", folder / "verify.xml")
    write(tmp_path, records, KERNELS)
    assert (
        "Note: verify ran only the checks 'not failover' selects (labkit matrix --checks)."
        in (tmp_path / "matrix.md").read_text()
    )
