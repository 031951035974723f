"""`labkit matrix`: every lab on every kernel, each as many times as --repeat says (up, verify
with the failure scenarios, bench, the kernel's own log read, down), each cell's results in a
folder of its own, then the report that compares the kernels with the first one.

Each cell boots a copy of its lab under a name of its own (`up --as nat-sid-1`), so cells run
at once: on each host given with --connect, as many as its memory has room for. Each step is
the labkit command a user would type, run as a child process: its output goes to the cell's
log, and an interrupt stops every command that runs the way it stops that command, then
removes every running cell's copy. A cell that ran to a result (passed or failed) has its
cell.json; the same matrix run again goes on with the cells that have none.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from labkit import box, home
from labkit.boot import host as room
from labkit.boot import libvirt
from labkit.boot.target import target_for
from labkit.boot.vagrant import Accel
from labkit.errors import LabkitError
from labkit.labfile import read_lab as read
from labkit.operate import failover, splats
from labkit.render.vagrantfile import Provider
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
    name: str  # the lab's name
    kernel: str  # the SPEC its box was built from
    folder: Path
    run: int = 1  # of --repeat: each run boots afresh
    runs: int = 1

    @property
    def copy(self) -> str:
        """The name the cell's copy of the lab is booted under, never a plain lab's name:
        nat-bookworm-backports-2."""
        return copy_name(self.folder.name)

    @property
    def done(self) -> bool:
        """It ran to a result: passed or failed. A cell that could not run is tried again."""
        path = self.folder / "cell.json"
        return path.exists() and json.loads(path.read_text())["status"] != "error"

    def __str__(self) -> str:
        return f"{self.name} on {self.kernel}" + (f" (run {self.run} of {self.runs})" if self.runs > 1 else "")


def cell_folder(report: Path, name: str, kernel: str, run: int = 1) -> Path:
    """report/nat-bookworm-backports-1; a kernel package's path becomes its file name."""
    spec = Path(kernel).name.removesuffix(".deb")
    return report / re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{name}-{spec}-{run}")


def copy_name(folder: str) -> str:
    """A copy's name as `up --as` takes it (lower-case letters, digits, '-', at most 63)."""
    name = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", folder.lower())).strip("-")
    return name[-63:].lstrip("-0123456789") or "cell"


class Runner:
    """Runs labkit commands as child processes, each one's output appended to a log. Cells run
    in threads, each with its command; a signal to the matrix goes on to every command that
    runs, and each cell then stops (Interrupted) and removes its copy."""

    def __init__(self) -> None:
        self.children: set[subprocess.Popen] = set()
        self.signum: int | None = None
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._stop)

    def _stop(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum = signum
        for child in list(self.children):
            if child.poll() is None:
                child.send_signal(signum)

    def check(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)

    def labkit(self, args: list[str], log: Path) -> tuple[int, str]:
        """Run `labkit ARGS`, return its exit status and output. Interrupted, the command is
        waited for (it stops what it started itself) before the interrupt goes on."""
        self.check()
        lines: list[str] = []
        with log.open("a") as out:
            out.write(f"$ labkit {' '.join(args)}\n")
            out.flush()
            child = subprocess.Popen(
                [sys.executable, "-m", "labkit", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=_plain_env(),
                start_new_session=True,  # a terminal's Ctrl-C reaches it through the matrix only
            )
            self.children.add(child)
            if self.signum is not None:  # the signal came while it started
                child.send_signal(self.signum)
            try:
                for line in child.stdout:
                    out.write(line)
                    lines.append(line)
                code = child.wait()
            finally:
                self.children.discard(child)
            out.write(f"-> exit {code}\n\n")
        self.check()
        return code, "".join(lines)

    def quietly(self, args: list[str], log: Path) -> int:
        """Like labkit(), but not to be cut short by an interrupt: for the teardown."""
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


def _plain_env() -> dict[str, str]:
    # wide and colourless: the logs are read as text, and up's progress table stays one line a row
    return {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "TERM": "dumb"}


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


def new_record(
    cell: Cell, box_name: str | None, error: str | None = None, host: str = libvirt.LOCAL, checks: str | None = None
) -> dict:
    """A cell's cell.json, as it stands before its steps run (or when they cannot)."""
    return {
        "lab": cell.name,
        "kernel": cell.kernel,
        "run": cell.run,
        "copy": cell.copy,
        "host": libvirt.shown(host),
        "box": box_name,
        "release": None,
        "status": "error",
        "error": error,
        "seconds": 0,
        "figures": {},
        "junit": None,
        "checks": checks,  # verify's -m expression; None: every check
        "kernel_log": None,
    }


def each_node(nodes: list[str], read: Callable[[str], object]) -> list:
    """read(node) for every node at once (each login costs most of a second under emulation):
    the results in the nodes' order, or the exception a node raised."""

    def one(node: str) -> object:
        try:
            return read(node)
        except (LabkitError, OSError, ValueError, IndexError) as exc:
            return exc

    if not nodes:
        return []
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        return list(pool.map(one, nodes))


def uptimes(copy: str, nodes: list[str]) -> dict[str, float]:
    """Each node's seconds since it booted: the kernel log's clock, to place its splats. A node
    that does not answer is left out: its splats are not placed."""
    with RunningLab(home.lab_dir(copy)) as running:
        found = each_node(nodes, lambda node: float(running.run(node, ["cat", "/proc/uptime"]).split()[0]))
    return {node: up for node, up in zip(nodes, found) if not isinstance(up, Exception)}


def scenario_marks(junit: Path) -> list[tuple[str, float]]:
    """(check, seconds after verify began) for each check verify ran, from its JUnit times."""
    marks, at = [], 0.0
    try:
        cases = list(ET.parse(junit).iter("testcase"))
    except (OSError, ET.ParseError):
        return []
    for case in cases:
        marks.append((case.get("name", "?"), at))
        at += float(case.get("time") or 0)
    return marks


def read_kernel_log(copy: str, folder: Path, marks: dict[str, list[tuple[str, float]]]) -> dict:
    """Every VM's kernel log after the cell's steps: splats from dmesg and the console log, and
    /proc/sys/kernel/tainted decoded; `marks`: node -> (step, its uptime when the step began)."""
    found: list[splats.Splat] = []
    taints: dict[str, list[str]] = {}
    unread: list[str] = []
    running = RunningLab(home.lab_dir(copy))
    try:
        nodes = list(running.lab.nodes)
    except (LabkitError, OSError) as exc:
        return {"splats": [], "taints": {}, "unread": [f"the lab: {exc}"]}

    def read(node: str) -> tuple[list[splats.Splat], list[str]]:
        dmesg = splats.parse(running.run(node, ["sudo", "-n", "dmesg"]), node)
        return dmesg, splats.taint_flags(int(running.run(node, ["cat", "/proc/sys/kernel/tainted"]).strip()))

    with running:
        for node, seen in zip(nodes, each_node(nodes, read)):
            console = folder / f"console-{node}.log"
            from_console = splats.parse(console.read_text(errors="replace"), node) if console.exists() else []
            if isinstance(seen, Exception):
                dmesg = []
                unread.append(f"{node}: {(str(seen).splitlines() or ['?'])[0][:200]}")
            else:
                dmesg, taints[node] = seen
            for splat in splats.merged(dmesg, from_console):
                splat.moment = splats.moment(splat.seconds, marks.get(node, []))
                found.append(splat)
    return {"splats": [asdict(s) for s in found], "taints": taints, "unread": unread}


def run_cell(
    cell: Cell,
    box_name: str,
    runner: Runner,
    say: Callable[[str], None],
    connect: str | None = None,
    kernel_log: Callable[[str, Path, dict], dict] = read_kernel_log,
    clock: Callable[[str, list[str]], dict[str, float]] = uptimes,
    checks: str | None = None,
) -> dict:
    """up, verify (failure scenarios included, or the checks `checks` selects), bench, the kernel
    log read, down. The record for cell.json."""
    cell.folder.mkdir(parents=True, exist_ok=True)
    log = cell.folder / "log.txt"
    log.write_text("")
    host = target_uri(connect)
    record = new_record(cell, box_name, host=host, checks=checks)
    started = time.monotonic()
    try:
        say("up" + ("" if libvirt.is_local(host) else f" on {libvirt.shown(host)}"))
        where = ["--connect", connect] if connect else []
        up_args = ["up", cell.lab, "--kernel", cell.kernel, "--as", cell.copy, *where, "--no-snapshot", "--json"]
        code, text = runner.labkit(up_args, log)
        if code != 0:
            console = console_tail(home.lab_dir(cell.copy))
            record["error"] = f"labkit up failed (exit {code}):\n{last_lines(text)}" + (
                f"\n{console}" if console else ""
            )
            return record
        up = last_json(text)
        record["release"] = up.get("release")  # the box's kernel, as labkit booked it
        record["figures"].update(up_figures(up))
        lab = read(cell.lab)
        nodes = list(lab.nodes)
        if lab.impair:  # up put the lab file's netem on: verify and bench run under it
            record["impaired"] = [failover.Impair(net, impairment).what for net, impairment in lab.impair.items()]
            say("; ".join(record["impaired"]))
        at_verify = clock(cell.copy, nodes)
        say("verify")
        junit = cell.folder / "verify.xml"
        selected = ["-m", checks] if checks else []
        verified, _ = runner.labkit(["verify", cell.copy, "--junitxml", str(junit), *selected], log)
        record["junit"] = junit.name if junit.exists() else None
        at_bench = clock(cell.copy, nodes)
        say("bench")
        benched, text = runner.labkit(["bench", cell.copy, *BENCH, "--json"], log)
        if benched == 0:
            record["figures"].update(bench_figures(text))
        record["status"] = "passed" if verified == 0 and benched == 0 else "failed"
        if benched != 0:
            record["error"] = f"labkit bench failed (exit {benched}):\n{last_lines(text)}"
        say("kernel log")
        checks = scenario_marks(junit)
        marks = {
            node: [("up", 0.0)]
            + [(f"verify ({name})", at_verify[node] + at) for name, at in checks if node in at_verify]
            + ([("bench", at_bench[node])] if node in at_bench else [])
            for node in nodes
        }
        _copy_consoles(cell)
        try:
            record["kernel_log"] = kernel_log(cell.copy, cell.folder, marks)
        except Exception as exc:  # the log unread is said in the report; the cell's results stand
            record["kernel_log"] = {"splats": [], "taints": {}, "unread": [f"{type(exc).__name__}: {exc}"]}
        return record
    finally:
        if home.lab_dir(cell.copy).exists():  # an up refused before it made anything leaves nothing
            _copy_consoles(cell)
            say("down")
            if runner.quietly(["down", cell.copy], log) != 0:
                record["status"], record["error"] = "error", f"labkit down {cell.copy} failed: see {log}"
        record["seconds"] = round(time.monotonic() - started, 1)


def _copy_consoles(cell: Cell) -> None:
    for console in home.lab_dir(cell.copy).glob("console-*.log"):  # the kernels' own words, kept
        shutil.copy(console, cell.folder)


def target_uri(connect: str | None) -> str:
    return libvirt.uri_for(connect, home.hosts()) if connect else libvirt.LOCAL


def check_nothing_up(cells: list[Cell]) -> None:
    up = sorted({c.copy for c in cells} & set(RunningLab.names()))
    if up:
        raise LabkitError(
            f"{', '.join(up)} {'is' if len(up) == 1 else 'are'} up: the matrix boots and removes its own "
            f"copy of each lab. Bring {'it' if len(up) == 1 else 'them'} down first: "
            + "; ".join(f"labkit down {n}" for n in up)
        )


def check_expression(checks: str) -> None:
    """--checks must be an expression verify's pytest can take."""
    import pytest  # here, not at the top: every labkit command would load it (0.1 s) to start

    with tempfile.TemporaryDirectory() as nothing:  # pytest reads -m even with no tests to select
        said = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", checks],
            cwd=nothing,
            capture_output=True,
            text=True,
        )
    if said.returncode == pytest.ExitCode.USAGE_ERROR:
        raise LabkitError(
            f"--checks {checks!r} is not a pytest -m expression ({said.stderr.strip().splitlines()[-1]}): "
            "give marker names with and, or, not and parentheses, e.g. 'not failover'"
        )


def check_same_checks(done: list[Cell], checks: str | None, report: Path) -> None:
    """A matrix continued runs the checks its done cells ran: the report compares like with like."""
    for cell in done:
        ran = json.loads((cell.folder / "cell.json").read_text()).get("checks")
        if ran != checks:
            give = f"--checks {ran!r}" if ran else "no --checks"
            raise LabkitError(
                f"the cells done in {report} ran {f'the checks {ran!r}' if ran else 'every check'}: "
                f"continue with {give}, or add --again to run every cell anew"
            )


def plan(labs: list[str], kernels: list[str], report: Path, repeat: int = 1) -> list[Cell]:
    """The cells, lab by lab, each lab's kernels in the order given (the first is the baseline),
    each kernel's runs one after the other."""
    for given, what in ((labs, "lab"), (kernels, "kernel")):
        twice = sorted({x for x in given if given.count(x) > 1})
        if twice:
            raise LabkitError(f"the {what} {twice[0]} is given twice. Give each {what} once")
    if repeat < 1:
        raise LabkitError(f"--repeat {repeat}: give the number of runs of each cell, 1 or more")
    for kernel in kernels:
        box.parse_kernel(kernel)  # an unknown kernel fails here, before any boot
    names = {lab: read(lab).name for lab in labs}  # a bad lab file fails here too
    return [
        Cell(lab, names[lab], kernel, cell_folder(report, names[lab], kernel, run), run, repeat)
        for lab in labs
        for kernel in kernels
        for run in range(1, repeat + 1)
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


def hosts_for(connect: list[str]) -> list[str | None]:
    """The hosts cells run on, as --connect values (None: this host). "all": this host and
    every host in labkit's config file."""
    if not connect:
        return [None]
    given: list[str | None] = []
    for value in connect:
        if value == "all":
            given += [None, *home.hosts()]
        else:
            given.append(None if libvirt.is_local(target_uri(value)) else value)  # a bad one fails here
    uris = [target_uri(v) for v in given]
    return [v for i, v in enumerate(given) if uris[i] not in uris[:i]]


def host_room(cells: list[Cell], boxes_found: dict[str, str], connect: str | None, per_host: int | None) -> int:
    """How many cells a host runs at once: copies of the biggest lab its memory has room for
    (the count `up` checks), at most `per_host`."""
    uri = target_uri(connect)
    available = room.available_memory_mib(uri)
    fits = []
    for cell in {c.lab: c for c in cells if c.kernel in boxes_found}.values():
        lab = read(cell.lab)
        target = target_for(Path(cell.lab), boxes_found[cell.kernel], Provider.libvirt, Accel.auto, cell.copy, uri)
        fits.append(room.copies_that_fit(lab, target, available))
    count = min(fits) if fits else 1
    return min(count, per_host) if per_host else count


def reachable(connect: str | None) -> bool:
    return connect is None or libvirt.virsh(target_uri(connect), "uri").returncode == 0


def run(
    labs: list[str],
    kernels: list[str],
    report: Path,
    again: bool,
    say: Callable[[str], None],
    repeat: int = 1,
    connect: list[str] = (),
    per_host: int | None = None,
    checks: str | None = None,
) -> list[dict]:
    """Run every cell that is not done (all of them with `again`), on every host at once; the
    records of all cells. `checks`: verify's -m expression, every check when None."""
    cells = plan(labs, kernels, report, repeat)
    if per_host is not None and per_host < 1:
        raise LabkitError(f"--per-host {per_host}: give how many cells a host runs at once, 1 or more")
    hosts = hosts_for(list(connect))
    check_nothing_up(cells)
    if checks is not None:
        check_expression(checks)
    todo = [c for c in cells if again or not c.done]
    check_same_checks([c for c in cells if c not in todo], checks, report)
    report.mkdir(parents=True, exist_ok=True)
    runner = Runner()
    found, no_box = boxes(sorted({c.kernel for c in todo}, key=kernels.index), report, runner, say)
    rooms = {h: host_room(todo, found, h, per_host) for h in hosts} if todo else {}
    if todo and not any(rooms.values()):
        raise LabkitError(
            "no host has room for a copy of the lab: "
            + "; ".join(f"{libvirt.shown(target_uri(h))}: 0" for h in hosts)
            + ". Take a running lab down (labkit down LAB), or add a host with --connect"
        )
    number = {id(c): n for n, c in enumerate(cells, 1)}
    lock = threading.Lock()

    def tell(cell: Cell, step: str) -> None:
        with lock:
            say(f"[{number[id(cell)]}/{len(cells)}] {cell}: {step}")

    for cell in cells:
        if cell not in todo:
            status = json.loads((cell.folder / "cell.json").read_text())["status"]
            tell(cell, f"done before ({status}); --again runs it again")

    queue = list(todo)
    running: dict[str | None, list[threading.Thread]] = {h: [] for h in hosts}
    results: dict[int, tuple[dict, str | None]] = {}
    gone: set[str | None] = set()

    def one(cell: Cell, host: str | None) -> None:
        try:
            if cell.kernel in no_box:
                record = new_record(cell, None, no_box[cell.kernel], target_uri(host))
            else:
                record = run_cell(cell, found[cell.kernel], runner, lambda step: tell(cell, step), host, checks=checks)
        except Interrupted:
            return
        except Exception as exc:  # one cell's trouble is that cell's result, never the others'
            record = new_record(cell, found.get(cell.kernel), f"{type(exc).__name__}: {exc}", target_uri(host))
        results[id(cell)] = (record, host)

    while queue or results or any(running.values()):
        for host in hosts:
            running[host] = [t for t in running[host] if t.is_alive()]
        for cell in [c for c in todo if id(c) in results]:
            record, host = results.pop(id(cell))
            if record["status"] == "error" and host not in gone and not reachable(host):
                gone.add(host)  # a host that dropped: its cell goes to another host
                tell(cell, f"{libvirt.shown(target_uri(host))} cannot be reached; the cell goes to another host")
                if set(hosts) - gone:
                    queue.insert(0, cell)
                    continue
            (cell.folder).mkdir(parents=True, exist_ok=True)
            (cell.folder / "cell.json").write_text(json.dumps(record, indent=2) + "\n")
            where = "" if len(hosts) == 1 else f" on {record['host']}"
            tell(
                cell,
                f"{record['status']} in {record['seconds']:.0f} s{where}"
                + (f"\n{record['error']}" if record["error"] else ""),
            )
        if runner.signum is not None:
            queue.clear()
        for host in hosts:
            while queue and host not in gone and len(running[host]) < rooms.get(host, 0):
                thread = threading.Thread(target=one, args=(queue.pop(0), host), daemon=True)
                running[host].append(thread)
                thread.start()
        if queue and not any(running.values()) and set(hosts) <= gone:
            for cell in queue:
                results[id(cell)] = (new_record(cell, found.get(cell.kernel), "no host could be reached"), None)
            queue.clear()
            continue
        time.sleep(0.2)
    if runner.signum is not None:
        raise Interrupted(runner.signum)
    return [json.loads((c.folder / "cell.json").read_text()) for c in cells if (c.folder / "cell.json").exists()]
