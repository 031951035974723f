"""`labkit matrix`: every lab on every kernel, one cell after the other (up, verify with the
failure scenarios, bench, down), each cell's results in a folder of its own, then the report
that compares the kernels with the first one.

Each step is the labkit command a user would type, run as a child process: its output goes to
the cell's log, and an interrupt stops it the way it stops that command, then removes the
cell's lab. A cell that ran to a result (passed or failed) has its cell.json; the same matrix
run again goes on with the cells that have none.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from labkit import box, home
from labkit.errors import LabkitError
from labkit.labfile import read_lab as read
from labkit.running import RunningLab

BENCH = ["--requests", "2000", "--concurrency", "4"]
CONSOLE_LINES = 15  # of a VM that did not boot


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class Cell:
    lab: str  # as given: a shipped lab's name, a folder or a lab.yaml
    name: str  # the lab's name, which its commands take
    kernel: str  # the SPEC its box was built from
    folder: Path

    @property
    def done(self) -> bool:
        """It ran to a result: passed or failed. A cell that could not run is tried again."""
        path = self.folder / "cell.json"
        return path.exists() and json.loads(path.read_text())["status"] != "error"

    def __str__(self) -> str:
        return f"{self.name} on {self.kernel}"


def cell_folder(report: Path, name: str, kernel: str) -> Path:
    """report/nat-bookworm-backports; a kernel package's path becomes its file name."""
    spec = Path(kernel).name.removesuffix(".deb")
    return report / re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{name}-{spec}")


class Runner:
    """Runs labkit commands as child processes, each one's output appended to a log; a signal
    to the matrix goes on to the command that runs, then ends the matrix."""

    def __init__(self) -> None:
        self.child: subprocess.Popen | None = None
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._stop)

    def _stop(self, signum: int, frame) -> None:
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)
        raise Interrupted(signum)

    def labkit(self, args: list[str], log: Path) -> tuple[int, str]:
        """Run `labkit ARGS`, return its exit status and output. Interrupted, the command is
        waited for (it stops what it started itself) before the interrupt goes on."""
        lines: list[str] = []
        with log.open("a") as out:
            out.write(f"$ labkit {' '.join(args)}\n")
            out.flush()
            self.child = subprocess.Popen(
                [sys.executable, "-m", "labkit", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=_plain_env(),
            )
            try:
                for line in self.child.stdout:
                    out.write(line)
                    lines.append(line)
                code = self.child.wait()
            except Interrupted:
                _wait(self.child)
                raise
            finally:
                self.child = None
            out.write(f"-> exit {code}\n\n")
        return code, "".join(lines)

    def quietly(self, args: list[str], log: Path) -> int:
        """Like labkit(), but not to be cut short by a second interrupt: for the teardown."""
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            with log.open("a") as out:
                out.write(f"$ labkit {' '.join(args)}\n")
                out.flush()
                return subprocess.run(
                    [sys.executable, "-m", "labkit", *args],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=_plain_env(),
                    start_new_session=True,
                ).returncode
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _plain_env() -> dict[str, str]:
    # wide and colourless: the logs are read as text, and up's progress table stays one line a row
    return {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "TERM": "dumb"}


def _wait(child: subprocess.Popen) -> None:
    try:
        child.wait(timeout=60)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


UP_FIGURES = ("boot_seconds", "provision_seconds")  # of `labkit up --json`, compared across kernels


def last_json(text: str) -> dict:
    """The last line of a command's output that is a JSON object: what `--json` prints last on
    stdout, found in output that has the command's stderr merged in. Empty when there is none."""
    for line in reversed(text.splitlines()):
        try:
            found = json.loads(line)
        except ValueError:
            continue
        if isinstance(found, dict):
            return found
    return {}


def up_figures(result: dict) -> dict[str, float]:
    """Boot and provision seconds from `labkit up --json`'s result."""
    return {k: float(result[k]) for k in UP_FIGURES if isinstance(result.get(k), int | float)}


def bench_figures(text: str) -> dict[str, float]:
    """Requests per second and the 99th percentile of latency from `labkit bench --json`."""
    result = json.loads(text.strip().splitlines()[-1])
    return {
        "bench_requests_per_second": result["per_second"],
        "bench_p99_ms": result["percentiles"]["99"],
        "bench_failed_requests": result["failed"],
    }


def console_tail(lab_folder: Path) -> str:
    """The last lines each VM wrote to its serial console (the Vagrantfile logs it to a file)."""
    parts = []
    for log in sorted(lab_folder.glob("console-*.log")):
        lines = log.read_text(errors="replace").splitlines()[-CONSOLE_LINES:]
        node = log.stem.removeprefix("console-")
        parts.append(f"{node}'s console, last lines:\n" + ("\n".join(lines) or "(nothing: it never wrote to it)"))
    return "\n".join(parts)


def last_lines(text: str, n: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def new_record(cell: Cell, box_name: str | None, error: str | None = None) -> dict:
    """A cell's cell.json, as it stands before its steps run (or when they cannot)."""
    return {
        "lab": cell.name,
        "kernel": cell.kernel,
        "box": box_name,
        "release": None,
        "status": "error",
        "error": error,
        "seconds": 0,
        "figures": {},
        "junit": None,
    }


def run_cell(cell: Cell, box_name: str, runner: Runner, say: Callable[[str], None]) -> dict:
    """up, verify (failure scenarios included), bench, down. The record for cell.json."""
    cell.folder.mkdir(parents=True, exist_ok=True)
    log = cell.folder / "log.txt"
    log.write_text("")
    record = new_record(cell, box_name)
    started = time.monotonic()
    try:
        say("up")
        code, text = runner.labkit(["up", cell.lab, "--kernel", cell.kernel, "--json"], log)
        if code != 0:
            console = console_tail(home.lab_dir(cell.name))
            record["error"] = f"labkit up failed (exit {code}):\n{last_lines(text)}" + (
                f"\n{console}" if console else ""
            )
            return record
        up = last_json(text)
        record["release"] = up.get("release")  # the box's kernel, as labkit booked it
        record["figures"].update(up_figures(up))
        say("verify")
        junit = cell.folder / "verify.xml"
        verified, _ = runner.labkit(["verify", cell.name, "--junitxml", str(junit)], log)
        record["junit"] = junit.name if junit.exists() else None
        say("bench")
        benched, text = runner.labkit(["bench", cell.name, *BENCH, "--json"], log)
        if benched == 0:
            record["figures"].update(bench_figures(text))
        record["status"] = "passed" if verified == 0 and benched == 0 else "failed"
        if benched != 0:
            record["error"] = f"labkit bench failed (exit {benched}):\n{last_lines(text)}"
        return record
    finally:
        for console in home.lab_dir(cell.name).glob("console-*.log"):  # the kernels' own words, kept
            shutil.copy(console, cell.folder)
        say("down")
        if runner.quietly(["down", cell.name], log) != 0:
            record["status"], record["error"] = "error", f"labkit down {cell.name} failed: see {log}"
        record["seconds"] = round(time.monotonic() - started, 1)


def check_nothing_up(cells: list[Cell]) -> None:
    up = sorted({c.name for c in cells} & set(RunningLab.names()))
    if up:
        raise LabkitError(
            f"{', '.join(up)} {'is' if len(up) == 1 else 'are'} up: the matrix boots and removes its own "
            f"copy of each lab. Bring {'it' if len(up) == 1 else 'them'} down first: "
            + "; ".join(f"labkit down {n}" for n in up)
        )


def plan(labs: list[str], kernels: list[str], report: Path) -> list[Cell]:
    """The cells, lab by lab, each lab's kernels in the order given (the first is the baseline)."""
    for given, what in ((labs, "lab"), (kernels, "kernel")):
        twice = sorted({x for x in given if given.count(x) > 1})
        if twice:
            raise LabkitError(f"the {what} {twice[0]} is given twice. Give each {what} once")
    for kernel in kernels:
        box.parse_kernel(kernel)  # an unknown kernel fails here, before any boot
    names = {lab: read(lab).name for lab in labs}  # a bad lab file fails here too
    return [
        Cell(lab, names[lab], kernel, cell_folder(report, names[lab], kernel)) for lab in labs for kernel in kernels
    ]


def boxes(
    kernels: list[str], report: Path, runner: Runner, say: Callable[[str], None]
) -> tuple[dict[str, str], dict[str, str]]:
    """Kernel SPEC -> its box, and kernel SPEC -> why its cells cannot run; builds the boxes
    that are missing."""
    found, missing = {}, {}
    for kernel in kernels:
        name = box.box_for(box.parse_kernel(kernel))
        if name is None or box.why_outdated(name):  # an older labkit's box: a key inside, or not lean
            say(f"building the box for kernel {kernel}")
            log = report / f"box-{cell_folder(report, 'kernel', kernel).name}.log"
            code, text = runner.labkit(["box", "build", "--kernel", kernel], log)
            name = box.box_for(box.parse_kernel(kernel)) if code == 0 else None
            if name is None:
                missing[kernel] = (
                    f"no box for kernel {kernel}: labkit box build --kernel {kernel} failed:\n{last_lines(text)}"
                )
                continue
        found[kernel] = name
    return found, missing


def run(labs: list[str], kernels: list[str], report: Path, again: bool, say: Callable[[str], None]) -> list[dict]:
    """Run every cell that is not done (all of them with `again`); the records of all cells."""
    cells = plan(labs, kernels, report)
    check_nothing_up(cells)
    report.mkdir(parents=True, exist_ok=True)
    runner = Runner()
    todo = [c for c in cells if again or not c.done]
    found, no_box = boxes(sorted({c.kernel for c in todo}, key=kernels.index), report, runner, say)
    for n, cell in enumerate(cells, 1):
        tell = lambda step, cell=cell, n=n: say(f"[{n}/{len(cells)}] {cell}: {step}")  # noqa: E731
        if cell not in todo:
            tell(
                f"done before ({json.loads((cell.folder / 'cell.json').read_text())['status']}); --again runs it again"
            )
            continue
        if cell.kernel in no_box:
            record = new_record(cell, None, no_box[cell.kernel])
        else:
            record = run_cell(cell, found[cell.kernel], runner, tell)
        cell.folder.mkdir(parents=True, exist_ok=True)
        (cell.folder / "cell.json").write_text(json.dumps(record, indent=2) + "\n")
        tell(f"{record['status']} in {record['seconds']:.0f} s" + (f"\n{record['error']}" if record["error"] else ""))
    return [json.loads((c.folder / "cell.json").read_text()) for c in cells]
