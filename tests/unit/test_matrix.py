"""`labkit matrix`'s own parts that need no VM: its cells, and the figures it reads from the
commands it runs."""

import json
import re
import threading
import time

import pytest
from typer.testing import CliRunner

import labkit.cli.lab
from labkit.box.image import BOX_FORMAT, PACKAGES_FILE, package_list
from labkit.cli import app
from labkit.errors import LabkitError
from labkit.operate import matrix
from labkit.record import Record

UP = {
    "name": "nat",
    "lab": "nat",
    "uri": "qemu:///system",
    "box": "labkit/linux-7.2",
    "kernel": "sid",
    "release": "7.2.13-amd64",
    "boot_seconds": 131,
    "provision_seconds": 41.3,
    "changes": 52,
    "snapshot_seconds": 1.2,
}


def test_up_figures_are_read_from_its_json_result_in_the_merged_output():
    # stderr merged into stdout: progress lines, some of them braces, around the result
    output = "    12s lb0: Starting domain.\n{ not json\n" + json.dumps(UP) + "\n[1, 2]\nsnapshot taken\n"
    assert matrix.last_json(output) == UP
    assert matrix.up_figures(matrix.last_json(output)) == {"boot_seconds": 131.0, "provision_seconds": 41.3}
    assert matrix.last_json("booted 5 nodes in 131 s\nerror: no box\n") == {}
    assert matrix.up_figures({}) == {}
    assert matrix.up_figures({"boot_seconds": 131, "provision_seconds": None}) == {"boot_seconds": 131.0}


BENCH = {
    "service": "tcp 192.168.55.100:80",
    "director": "lb0",
    "complete": 2000,
    "failed": 0,
    "per_second": 212.4,
    "mean_ms": 18.8,
    "percentiles": {"50": 17, "99": 41},
    "split": {},
}


def test_bench_figures_are_read_from_its_json_result():
    assert matrix.bench_figures("warming up\n" + json.dumps(BENCH) + "\n") == {
        "bench_requests_per_second": 212.4,
        "bench_p99_ms": 41,
        "bench_failed_requests": 0,
    }


def test_cells_are_lab_by_lab_in_the_kernels_order(tmp_path):
    cells = matrix.plan(["nat", "fwmark"], ["bookworm", "sid"], tmp_path)
    assert [(c.name, c.kernel) for c in cells] == [
        ("nat", "bookworm"),
        ("nat", "sid"),
        ("fwmark", "bookworm"),
        ("fwmark", "sid"),
    ]
    assert cells[1].folder == tmp_path / "nat-sid-1"
    assert cells[1].copy == "nat-sid-1" and str(cells[1]) == "nat on sid"
    deb = matrix.cell_folder(tmp_path, "nat", "/src/linux-image-6.18.0-rc1+_6.18.0-rc1-1_amd64.deb")
    assert deb == tmp_path / "nat-linux-image-6.18.0-rc1+_6.18.0-rc1-1_amd64-1"
    assert matrix.copy_name(deb.name) == "nat-linux-image-6-18-0-rc1-6-18-0-rc1-1-amd64-1"


def test_repeated_cells_each_boot_a_copy_of_their_own(tmp_path):
    cells = matrix.plan(["dr"], ["bookworm", "bookworm-backports"], tmp_path, repeat=2)
    assert [c.copy for c in cells] == [
        "dr-bookworm-1",
        "dr-bookworm-2",
        "dr-bookworm-backports-1",
        "dr-bookworm-backports-2",
    ]
    assert str(cells[3]) == "dr on bookworm-backports (run 2 of 2)"
    with pytest.raises(LabkitError, match="--repeat 0: give the number of runs"):
        matrix.plan(["dr"], ["bookworm"], tmp_path, repeat=0)


def test_hosts_are_this_one_and_each_connect_once(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path))
    (tmp_path / "config.yaml").write_text("hosts: {far: 'qemu+ssh://lab@far/system'}\n")
    assert matrix.hosts_for([]) == [None]
    assert matrix.hosts_for(["qemu:///system", "qemu+ssh://root@127.0.0.1:2222/system"]) == [
        None,
        "qemu+ssh://root@127.0.0.1:2222/system",
    ]
    assert matrix.hosts_for(["all"]) == [None, "far"]
    with pytest.raises(LabkitError, match="--connect near: no such host"):
        matrix.hosts_for(["near"])


@pytest.mark.parametrize(
    "labs, kernels, says",
    [
        (["nat", "nat"], ["bookworm"], "the lab nat is given twice. Give each lab once"),
        (["nat"], ["sid", "sid"], "the kernel sid is given twice. Give each kernel once"),
        (["nat"], ["bookworm", "6.12"], "unknown kernel '6.12'"),
    ],
)
def test_a_matrix_that_cannot_run_says_why_before_anything_boots(tmp_path, labs, kernels, says):
    with pytest.raises(LabkitError, match=says):
        matrix.plan(labs, kernels, tmp_path / "report")
    assert not (tmp_path / "report").exists()


def test_a_cell_is_done_once_it_ran_to_a_result(tmp_path):
    (cell,) = matrix.plan(["dr"], ["trixie"], tmp_path)
    assert not cell.done
    cell.folder.mkdir()
    for status, done in (("error", False), ("failed", True), ("passed", True)):
        (cell.folder / "cell.json").write_text(json.dumps({"status": status}))
        assert cell.done is done, status


def test_a_vm_that_did_not_boot_shows_its_last_console_lines(tmp_path):
    (tmp_path / "console-lb0.log").write_text("".join(f"line {n}\n" for n in range(40)))
    (tmp_path / "console-rs0.log").write_text("")
    tail = matrix.console_tail(tmp_path).splitlines()
    assert tail[0] == "lb0's console, last lines:" and tail[1:16] == [f"line {n}" for n in range(25, 40)]
    assert tail[16:] == ["rs0's console, last lines:", "(nothing: it never wrote to it)"]


CURRENT = {"ssh_key": "smbios-oem-string", "box_format": BOX_FORMAT}  # what this labkit's boxes say


def test_each_kernel_is_matched_to_its_box_once(tmp_path, monkeypatch):
    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path))
    for name, meta in (
        ("labkit-VAGRANTSLASH-bookworm", CURRENT),
        ("labkit-VAGRANTSLASH-linux-7.2", {"spec": "sid", **CURRENT}),
    ):
        folder = tmp_path / "boxes" / name / "1" / "libvirt"
        folder.mkdir(parents=True)
        (folder / "labkit-box.json").write_text(json.dumps(meta))
        (folder / PACKAGES_FILE).write_text(package_list())
    found, missing = matrix.boxes(["bookworm", "sid"], tmp_path, runner=None, say=print)  # nothing to build
    assert (found, missing) == ({"bookworm": "labkit/bookworm", "sid": "labkit/linux-7.2"}, {})


def test_an_older_box_is_built_again(tmp_path, monkeypatch):
    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path))
    meta = tmp_path / "boxes" / "labkit-VAGRANTSLASH-linux-7.2" / "1" / "libvirt" / "labkit-box.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"spec": "sid"}))  # an older labkit's box: the builder's key inside

    class Builds:
        calls = []

        def labkit(self, args, log):
            self.calls.append(args)
            meta.write_text(json.dumps({"spec": "sid", **CURRENT}))
            (meta.parent / PACKAGES_FILE).write_text(package_list())
            return 0, ""

    runner = Builds()
    found, missing = matrix.boxes(["sid"], tmp_path, runner=runner, say=print)
    assert (found, missing, runner.calls) == ({"sid": "labkit/linux-7.2"}, {}, [["box", "build", "--kernel", "sid"]])


def test_a_cell_boots_with_json_and_keeps_ups_figures_and_kernel_release(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path / "home"))

    class Commands:
        calls = []

        def labkit(self, args, log):
            self.calls.append(args)
            said = {"up": "booted 5 nodes in 131 s\n" + json.dumps(UP), "bench": json.dumps(BENCH)}
            return 0, said.get(args[0], "") + "\n"

        def quietly(self, args, log):
            self.calls.append(args)
            return 0

    (cell,) = matrix.plan(["nat"], ["sid"], tmp_path / "report")
    runner = Commands()
    from labkit.home import lab_dir

    lab_dir("nat-sid-1").mkdir(parents=True)  # what up made, which down removes
    clock = iter([{"lb0": 100.0}, {"lb0": 400.0}])  # lb0's uptime as verify, then bench, begin
    (cell.folder).mkdir(parents=True)
    (cell.folder / "verify.xml").write_text(
        '<testsuite><testcase name="test_vip" time="10.5"/><testcase name="test_director_dies" time="60"/></testsuite>'
    )
    seen = {}

    def kernel_log(copy, folder, marks):
        seen.update(marks)
        return {"splats": [], "taints": {"lb0": []}, "unread": []}

    record = matrix.run_cell(
        cell, "labkit/linux-7.2", runner, say=lambda step: None, kernel_log=kernel_log, clock=lambda c, n: next(clock)
    )
    assert seen["lb0"] == [
        ("up", 0.0),
        ("verify (test_vip)", 100.0),
        ("verify (test_director_dies)", 110.5),
        ("bench", 400.0),
    ]
    assert record["kernel_log"] == {"splats": [], "taints": {"lb0": []}, "unread": []}
    # a cell is never reset: its up takes no snapshot
    assert runner.calls[0] == ["up", "nat", "--kernel", "sid", "--as", "nat-sid-1", "--no-snapshot", "--json"]
    assert runner.calls[-1] == ["down", "nat-sid-1"]
    assert record["host"] == "this host" and record["copy"] == "nat-sid-1"
    assert (record["status"], record["release"]) == ("passed", "7.2.13-amd64")
    assert record["figures"] == {
        "boot_seconds": 131.0,
        "provision_seconds": 41.3,
        "bench_requests_per_second": 212.4,
        "bench_p99_ms": 41,
        "bench_failed_requests": 0,
    }


def test_up_json_is_the_one_line_on_stdout_that_the_matrix_reads(tmp_path, monkeypatch):
    """`labkit up --json` with the boot itself left out (no VMs here): progress on stderr, the
    result alone on stdout, and the matrix finds it in the two merged."""
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path / "vagrant"))

    class Booted:
        on_libvirt = False  # no snapshot

        def __init__(self, booked):
            self.booked, self.name = booked, booked.name

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    def boot(lab, source, target, progress, on_repair, on_done):
        progress("lb0", "Starting domain.")
        return Booted(Record.booked(lab, target)), time.monotonic()

    monkeypatch.setattr(labkit.cli.lab.booking, "boot", boot)
    result = CliRunner().invoke(app, ["up", "nat", "--as", "nat-2", "--accel", "tcg", "--json"])
    assert result.exit_code == 0, result.output
    assert "booted 5 nodes in 0 s" in result.stderr and "nat-2 is up (a copy of nat)" in result.stderr
    (line,) = result.stdout.splitlines()
    up = json.loads(line)
    assert {k: up[k] for k in ("name", "lab", "uri", "box", "kernel", "release", "changes", "snapshot_seconds")} == {
        "name": "nat-2",
        "lab": "nat",
        "uri": "qemu:///system",
        "box": "labkit/bookworm",
        "kernel": None,
        "release": None,
        "changes": 0,
        "snapshot_seconds": None,
    }
    assert matrix.last_json(result.stderr + result.stdout) == up
    assert set(matrix.up_figures(up)) == {"boot_seconds", "provision_seconds"}


def test_an_up_refused_before_it_made_anything_is_not_taken_down(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path / "home"))

    class Refused:
        calls = []

        def labkit(self, args, log):
            self.calls.append(args)
            return 1, "error: the host cannot hold the lab\n"

        def quietly(self, args, log):
            self.calls.append(args)
            return 0

    (cell,) = matrix.plan(["nat"], ["sid"], tmp_path / "report")
    runner = Refused()
    record = matrix.run_cell(cell, "labkit/linux-7.2", runner, say=lambda step: None)
    assert [c[0] for c in runner.calls] == ["up"]
    assert record["status"] == "error" and "the host cannot hold the lab" in record["error"]


def test_a_cell_interrupted_while_it_boots_is_taken_down(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path / "home"))
    from labkit.home import lab_dir

    class Interrupting:
        calls = []

        def labkit(self, args, log):
            self.calls.append(args)
            lab_dir("nat-sid-1").mkdir(parents=True)  # up made the copy, then the signal came
            raise matrix.Interrupted(2)

        def quietly(self, args, log):
            self.calls.append(args)
            return 0

    (cell,) = matrix.plan(["nat"], ["sid"], tmp_path / "report")
    runner = Interrupting()
    with pytest.raises(matrix.Interrupted):
        matrix.run_cell(cell, "labkit/linux-7.2", runner, say=lambda step: None)
    assert runner.calls[-1] == ["down", "nat-sid-1"]


def test_checks_are_given_to_verify_and_kept_in_the_cell(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path / "home"))
    calls = []

    class Commands:
        def labkit(self, args, log):
            calls.append(args)
            return 0, (json.dumps(UP) if args[0] == "up" else json.dumps(BENCH) if args[0] == "bench" else "") + "\n"

        def quietly(self, args, log):
            return 0

    (cell,) = matrix.plan(["nat"], ["sid"], tmp_path / "report")
    no_log = lambda copy, folder, marks: {"splats": [], "taints": {}, "unread": []}  # noqa: E731
    record = matrix.run_cell(
        cell, "b", Commands(), say=lambda step: None, kernel_log=no_log, clock=lambda c, n: {}, checks="not failover"
    )
    verify = next(args for args in calls if args[0] == "verify")
    assert verify[-2:] == ["-m", "not failover"]
    assert record["checks"] == "not failover"


@pytest.mark.parametrize(
    "done, given, says",
    [
        ("not failover", None, "ran the checks 'not failover': continue with --checks 'not failover'"),
        (None, "not failover", "ran every check: continue with no --checks"),
    ],
)
def test_a_matrix_continued_with_other_checks_says_how_to_go_on(tmp_path, done, given, says):
    first, _ = matrix.plan(["dr"], ["trixie"], tmp_path, repeat=2)
    first.folder.mkdir()
    (first.folder / "cell.json").write_text(json.dumps({"status": "passed", "checks": done}))
    with pytest.raises(LabkitError, match=re.escape(says) + ", or add --again"):
        matrix.run(["dr"], ["trixie"], tmp_path, again=False, say=print, repeat=2, checks=given)


def test_checks_that_are_no_marker_expression_are_refused_before_anything_is_made(tmp_path):
    with pytest.raises(
        LabkitError,
        match=r"--checks .not. is not a pytest -m expression \(ERROR: Wrong expression passed to .-m.: not: .*\): give marker names",
    ):
        matrix.run(["dr"], ["trixie"], tmp_path / "report", again=False, say=print, checks="not")
    assert not (tmp_path / "report").exists()


def test_each_node_asks_every_node_at_once_and_keeps_a_failure_to_its_node():
    """A cell reads its nodes' clocks and kernel logs at once: lb0 and cl0 each wait here until
    the other has been asked too (asked in turn, the first would wait in vain), and rs0's failure
    is rs0's alone."""
    both = threading.Barrier(2, timeout=10)

    def read(node: str) -> str:
        if node == "rs0":
            raise LabkitError("rs0 does not answer SSH")
        both.wait()
        return f"{node} read"

    lb0, rs0, cl0 = matrix.each_node(["lb0", "rs0", "cl0"], read)
    assert (lb0, cl0) == ("lb0 read", "cl0 read")
    assert isinstance(rs0, LabkitError) and "rs0 does not answer" in str(rs0)
