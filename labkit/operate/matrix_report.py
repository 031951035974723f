"""The kernel matrix's report: every cell's results (its cell.json and the JUnit XML of its
verify) compared with the first kernel, the baseline, and with an earlier report when given,
written as matrix.json, matrix.md, matrix.html and matrix.xml (JUnit, for a CI server).

A kernel's runs (--repeat) are taken together: a check that passed in some and failed in others
is flaky, and a regression only when it failed in every run; a figure is the runs' median. A
regression is a splat or taint flag in the kernel's log that the baseline did not have, a check
that passed on the baseline and fails, errors or did not run on another kernel, a figure worse
than the baseline by more than its noise band, or a cell that did not run at all. A fix is a
check that failed on the baseline (or in the earlier report) and passes. Pure: reads and writes
files, runs nothing.
"""

from __future__ import annotations

import json
import math
import statistics
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatch
from html import escape
from pathlib import Path

from labkit.errors import LabkitError
from labkit.operate import splats
from labkit.operate.matrix import cell_folder

SMALL = 12  # a lab with this many checks or fewer has all of them in its table


# ---- the noise bands -----------------------------------------------------------------------


@dataclass(frozen=True)
class Band:
    """How much worse than the baseline a figure may get before it is a regression: by more
    than `plus` (in the figure's unit) and by more than `percent` of the baseline's value."""

    figure: str  # a pattern (fnmatch) for the property's name, the part after "testname:"
    higher_is_worse: bool
    plus: float
    percent: float
    unit: str
    why: str

    def allowance(self, baseline: float) -> float:
        return max(self.plus, abs(baseline) * self.percent / 100)

    def text(self) -> str:
        sign = "+" if self.higher_is_worse else "-"
        unit = f" {self.unit}" if self.unit else ""
        if not self.plus and not self.percent:
            return "any increase" if self.higher_is_worse else "any decrease"
        if not self.percent:
            return f"{sign}{_num(self.plus)}{unit}"
        if not self.plus:
            return f"{sign}{_num(self.percent)} %"
        return f"{sign}{_num(self.percent)} % and at least {sign}{_num(self.plus)}{unit}"


BANDS = [
    Band(
        "outage_seconds",
        True,
        1.5,
        0,
        "s",
        "the outage is counted in ticks of the client's 1 s timeout and the VRRP timeout lands on either "
        "side of one: on the same kernel a frozen director's outage was 3.09 s in one lab and 4.11 s in another",
    ),
    Band(
        "failed_requests_until_checked",
        True,
        12,
        0,
        "",
        "the load sends 10 requests a second until the checker (once a second) takes the server out: "
        "one tick more is 10 requests, plus a request or two in flight",
    ),
    Band("*failed_requests*", True, 2, 0, "", "a request or two in flight when a node breaks can fail on any kernel"),
    Band(
        "transfer_bytes_lost",
        True,
        0,
        0,
        "B",
        "the synced connection table keeps the long transfer whole; any byte lost is a real change",
    ),
    Band(
        "heal_seconds",
        True,
        5.0,
        50,
        "s",
        "healing restarts services and waits for health checks and VRRP; under emulation the same heal "
        "varied by up to 8 s between cells",
    ),
    Band("seconds_until_checked", True, 1.0, 0, "s", "keepalived checks the real servers once a second (delay_loop 1)"),
    Band(
        "bench_requests_per_second",
        False,
        0,
        25,
        "req/s",
        "throughput of emulated VMs on a shared host varies by a fifth from run to run",
    ),
    Band(
        "bench_p99_ms",
        True,
        20,
        50,
        "ms",
        "the 99th percentile of a short run rests on a few requests; small values jitter by whole milliseconds",
    ),
    Band(
        "boot_seconds",
        True,
        60,
        50,
        "s",
        "under software emulation the same 5 VMs took from 136 to 235 s to boot on one host, run to run",
    ),
    Band(
        "provision_seconds",
        True,
        10,
        50,
        "s",
        "provisioning is SSH round trips to guests still busy finishing their boot",
    ),
]


def band_for(figure: str) -> Band | None:
    """The band of a figure, by its property name ("test_director_stops:outage_seconds")."""
    name = figure.rsplit(":", 1)[-1]
    return next((band for band in BANDS if fnmatch(name, band.figure)), None)


# ---- reading: JUnit XML and cells ----------------------------------------------------------


@dataclass
class Junit:
    checks: dict[str, str] = field(default_factory=dict)  # "test_lab.py::test_vip[nat]" -> "passed"
    figures: dict[str, float] = field(default_factory=dict)  # "test_director_stops:outage_seconds" -> 1.2
    facts: dict[str, str] = field(default_factory=dict)  # "test_versions[lb0]:lb0_kernel" -> "6.1.0-40-amd64"


def check_key(testcase: ET.Element) -> str:
    """file::[Class::]name. xunit1 writes classname as the module's dotted path from the
    rootdir ("test_lab", "labkit.verify.checks.test_lab.TestClient") and the file beside it."""
    parts = testcase.get("classname", "").split(".")
    classes = []
    while len(parts) > 1 and parts[-1][:1].isupper():
        classes.insert(0, parts.pop())
    file = Path(testcase.get("file") or f"{parts[-1]}.py").name
    return "::".join([file, *classes, testcase.get("name", "")])


def outcome(testcase: ET.Element) -> str:
    tags = {child.tag for child in testcase}
    # a test that failed and then errored in its teardown failed first
    return next(
        (word for tag, word in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")) if tag in tags),
        "passed",
    )


def number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_junit(path: Path) -> Junit:
    """Each testcase's outcome, and its <property> values: numbers are figures, the rest
    (kernel releases, package versions) facts; both keyed "testname:property"."""
    found = Junit()
    for testcase in ET.parse(path).iter("testcase"):
        found.checks[check_key(testcase)] = outcome(testcase)
        for prop in testcase.iter("property"):
            key, value = f"{testcase.get('name')}:{prop.get('name')}", prop.get("value", "")
            if number(value) is None:
                found.facts[key] = value
            else:
                found.figures[key] = number(value)
    return found


@dataclass
class Cell:
    """One lab on one kernel: its cell.json with what its verify found."""

    lab: str
    kernel: str
    box: str | None
    release: str | None
    status: str  # passed, failed or error (did not run)
    error: str | None
    seconds: float | None
    figures: dict[str, float]  # the cell's own (boot, provision, bench), then the checks'
    checks: dict[str, str]
    facts: dict[str, str]
    run: int = 1
    host: str = "this host"
    splats: list[dict] = field(default_factory=list)  # splats.Splat as dicts, each with its run
    taints: dict[str, list[str]] = field(default_factory=dict)  # node -> flags
    runs: int = 1  # taken together: how many
    spread: dict[str, tuple[float, float]] = field(default_factory=dict)  # figure -> (min, max) over runs
    ran: dict[str, list[str]] = field(default_factory=dict)  # check -> its outcome in each run
    selected: str | None = None  # verify's -m expression (labkit matrix --checks); None: every check


def to_cell(record: dict, folder: Path) -> Cell:
    junit, error = Junit(), record.get("error")
    if record.get("junit"):
        try:
            junit = read_junit(folder / record["junit"])
        except (OSError, ET.ParseError) as exc:
            error = error or f"its verify report {folder / record['junit']} could not be read: {exc}"
    # uname -r as verify saw it on each node, when the cell.json does not say
    seen = sorted({value for key, value in junit.facts.items() if key.endswith("_kernel")})
    return Cell(
        lab=record["lab"],
        kernel=record["kernel"],
        box=record.get("box"),
        release=record.get("release") or (", ".join(seen) or None),
        status=record["status"],
        error=error,
        seconds=record.get("seconds"),
        figures={**record.get("figures", {}), **junit.figures},
        checks=junit.checks,
        facts=junit.facts,
        run=record.get("run", 1),
        host=record.get("host", "this host"),
        splats=[s | {"run": record.get("run", 1)} for s in (record.get("kernel_log") or {}).get("splats", [])],
        taints=(record.get("kernel_log") or {}).get("taints", {}),
        selected=record.get("checks"),
    )


def together(runs: list[Cell]) -> Cell:
    """A kernel's runs as one cell: each check's outcome ("flaky" when it passed in some runs and
    failed or errored in others), each figure's median with its range, every splat."""
    ran = [c for c in runs if c.status != "error"] or runs
    first = ran[0]
    outcomes = {check: [c.checks.get(check) or "not run" for c in ran] for c in ran for check in c.checks}

    def outcome(seen: list[str]) -> str:
        kinds = set(seen)
        if len(kinds) == 1:
            return seen[0]
        if "passed" in kinds and kinds & {"failed", "error"}:
            return "flaky"
        # otherwise the worst: a check not run in one run did not run there; skipped and passed passed
        return next(k for k in ("failed", "error", "not run", "passed", "skipped") if k in kinds)

    values: dict[str, list[float]] = {}
    for c in ran:
        for figure, value in c.figures.items():
            values.setdefault(figure, []).append(value)
    status = next((s for s in ("failed", "passed") if any(c.status == s for c in ran)), "error")
    errors = [f"run {c.run}: {c.error}" if len(runs) > 1 else c.error for c in runs if c.error]
    taints: dict[str, list[str]] = {}
    for c in ran:
        for node, flags in c.taints.items():
            taints[node] = sorted(set(taints.get(node, [])) | set(flags))
    return Cell(
        lab=first.lab,
        kernel=first.kernel,
        box=first.box,
        release=first.release,
        status=status,
        error="\n".join(errors) or None,
        seconds=round(sum(c.seconds or 0 for c in runs), 1),
        figures={f: statistics.median(v) for f, v in values.items()},
        checks={check: outcome(seen) for check, seen in outcomes.items()},
        facts=first.facts,
        run=0,
        host=", ".join(dict.fromkeys(c.host for c in runs)),
        splats=[s for c in ran for s in c.splats],
        taints=taints,
        runs=len(runs),
        spread={f: (min(v), max(v)) for f, v in values.items()},
        ran=outcomes,
        selected=first.selected,
    )


def load(report_dir: Path) -> list[Cell]:
    """Every cell found in a report folder."""
    return [to_cell(json.loads(path.read_text()), path.parent) for path in sorted(report_dir.glob("*/cell.json"))]


# ---- comparing -----------------------------------------------------------------------------


@dataclass
class Regression:
    lab: str
    kernel: str
    what: str  # the check, the figure, "cell", "splat" or "taint"
    reason: str
    lines: list[str] = field(default_factory=list)  # a splat's first lines
    against: str = "baseline"  # or "earlier report"
    shown: str = ""  # how the report names the kernel: a package by its release

    def __str__(self) -> str:
        return f"{self.lab} on {self.shown or self.kernel}: {self.reason}"


Fix = Regression  # the same facts, the other way: what failed before and passes now


@dataclass
class Flake:
    lab: str
    kernel: str
    check: str
    outcomes: list[str]  # in each run
    shown: str = ""  # how the report names the kernel

    def __str__(self) -> str:
        passed = self.outcomes.count("passed")
        return f"{self.lab} on {self.shown or self.kernel}: {self.check} passed in {passed} of {len(self.outcomes)} runs ({', '.join(self.outcomes)})"


@dataclass
class LabTable:
    lab: str
    cells: dict[str, Cell | None]  # kernel -> its cell; None: there is none
    checks: dict[str, dict[str, str | None]]  # check -> kernel -> outcome; None: it did not run
    figures: dict[str, dict[str, float | None]]  # figure -> kernel -> value
    facts: dict[str, dict[str, str | None]]  # "lb0_ipvsadm" -> kernel -> "1:1.31-1+b1"
    notes: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    kernels: list[str]  # the first is the baseline
    labs: list[LabTable]
    regressions: list[Regression]
    fixes: list[Regression] = field(default_factory=list)
    flakes: list[Flake] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # kernel -> how the report names it
    earlier: str | None = None  # the earlier report compared with

    def regressed(self, lab: str, kernel: str, what: str) -> bool:
        return any((r.lab, r.kernel, r.what) == (lab, kernel, what) for r in self.regressions)


def summary(error: str | None) -> str:
    """An error on one line: its first line (what failed) and its last (often why)."""
    lines = [line.strip() for line in (error or "").splitlines() if line.strip()]
    return " … ".join(lines[:1] + lines[-1:] if len(lines) > 1 else lines)


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _names(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def did_run(cell: Cell | None) -> bool:
    return cell is not None and cell.status != "error"


def check_regressions(table: LabTable, base: str, kernel: str) -> list[Regression]:
    cell = table.cells[kernel]
    passed = [check for check, seen in table.checks.items() if seen[base] == "passed"]
    if not did_run(cell):
        why = summary(cell.error) if cell else "it has no cell.json"
        lost = f" ({_count(len(passed), 'check')} that passed on {base} not run)" if passed else ""
        return [Regression(table.lab, kernel, "cell", f"did not run: {why}{lost}")]
    found = [
        Regression(table.lab, kernel, check, f"{check} passed on {base}, {seen[kernel]} on {kernel}")
        for check, seen in table.checks.items()
        if check in passed and seen[kernel] in ("failed", "error")
    ]
    missing = [check for check in passed if table.checks[check][kernel] is None]
    if missing:
        found.append(
            Regression(
                table.lab,
                kernel,
                "checks",
                f"{_count(len(missing), 'check')} that passed on {base} did not run on {kernel}: {_names(missing)}",
            )
        )
    return found


def worse_by(band: Band, baseline: float, value: float) -> float:
    return value - baseline if band.higher_is_worse else baseline - value


def allowance(band: Band, baseline: float, spread: tuple[float, float] | None, runs: int) -> float:
    """The band around the baseline; with 3 runs or more, the baseline's own spread where wider."""
    fixed = band.allowance(baseline)
    if spread is None or runs < 3:
        return fixed
    return max(fixed, spread[1] - spread[0])


def figure_regressions(table: LabTable, base: str, kernel: str) -> list[Regression]:
    found = []
    cell = table.cells[base]
    for figure, values in table.figures.items():
        band, baseline, value = band_for(figure), values[base], values[kernel]
        if band is None or baseline is None or value is None:
            continue
        allowed = allowance(band, baseline, cell.spread.get(figure) if cell else None, cell.runs if cell else 1)
        if worse_by(band, baseline, value) > allowed:
            unit = f" {band.unit}" if band.unit else ""
            wider = "" if allowed == band.allowance(baseline) else f", widened to {_num(allowed)}{unit} by its spread"
            found.append(
                Regression(
                    table.lab,
                    kernel,
                    figure,
                    f"{figure} went from {_num(baseline)} to "
                    f"{_num(value)}{unit}, beyond its band ({band.text()}{wider}) around {base}",
                )
            )
    return found


def splat_keys(cell: Cell | None) -> set[tuple[str, str]]:
    return {splats.Splat(**{k: v for k, v in s.items() if k != "run"}).key() for s in cell.splats} if cell else set()


def taint_set(cell: Cell | None) -> set[str]:
    return {flag for flags in (cell.taints if cell else {}).values() for flag in flags}


def log_regressions(table: LabTable, base: str, kernel: str, against: str = "baseline") -> list[Regression]:
    """Splats and taint flags on `kernel` that `base` (the baseline, or the same kernel in the
    earlier report) did not have."""
    cell, before = table.cells[kernel], table.cells[base]
    return log_news(table.lab, kernel, cell, splat_keys(before), taint_set(before), base, against)


def log_news(
    lab: str, kernel: str, cell: Cell | None, keys: set, taints: set[str], base: str, against: str
) -> list[Regression]:
    if cell is None:
        return []
    found, seen = [], set()
    for s in cell.splats:
        key = splats.Splat(**{k: v for k, v in s.items() if k != "run"}).key()
        if key in keys or (s["node"], key) in seen:
            continue
        seen.add((s["node"], key))
        runs = f" (run {s['run']})" if cell.runs > 1 else ""
        where = "the earlier report" if against != "baseline" else base
        found.append(
            Regression(
                lab,
                kernel,
                "splat",
                f"{s['kind']} on {s['node']}{runs}, {s['moment']}, not on {where}: {s['title']}",
                s["lines"],
                against,
            )
        )
    for node, flags in cell.taints.items():
        for flag in flags:
            if flag not in taints:
                where = "the earlier report" if against != "baseline" else base
                found.append(
                    Regression(
                        lab,
                        kernel,
                        "taint",
                        f"{node}'s kernel is tainted, not on {where}: {splats.taint_text(flag)}",
                        [],
                        against,
                    )
                )
    return found


def check_fixes(table: LabTable, base: str, kernel: str) -> list[Regression]:
    return [
        Regression(table.lab, kernel, check, f"{check} {seen[base]} on {base}, passes on {kernel}")
        for check, seen in table.checks.items()
        if seen[base] in ("failed", "error") and seen[kernel] == "passed"
    ]


def flakes(table: LabTable) -> list[Flake]:
    return [
        Flake(table.lab, kernel, check, cell.ran[check])
        for kernel, cell in table.cells.items()
        if cell is not None
        for check, outcome in cell.checks.items()
        if outcome == "flaky"
    ]


def with_earlier(table: LabTable, old: dict, kernels: list[str]) -> tuple[list[Regression], list[Regression]]:
    """Regressions and fixes of each kernel against the same kernel in an earlier matrix.json."""
    lab = old.get("labs", {}).get(table.lab)
    if not lab:
        return [], []
    bad, good = [], []
    for kernel in kernels:
        cell = table.cells[kernel]
        if not did_run(cell):
            continue
        before = {check: seen.get(kernel) for check, seen in lab.get("checks", {}).items()}
        if not any(before.values()):
            continue
        for check, outcome in cell.checks.items():
            was = before.get(check)
            if was == "passed" and outcome in ("failed", "error"):
                bad.append(
                    Regression(
                        table.lab,
                        kernel,
                        check,
                        f"{check} passed in the earlier report, {outcome} now",
                        [],
                        "earlier report",
                    )
                )
            if was in ("failed", "error") and outcome == "passed":
                good.append(
                    Regression(
                        table.lab,
                        kernel,
                        check,
                        f"{check} {was} in the earlier report, passes now",
                        [],
                        "earlier report",
                    )
                )
        for figure, values in lab.get("figures", {}).items():
            band, was, now = band_for(figure), values.get(kernel), cell.figures.get(figure)
            if band and was is not None and now is not None and worse_by(band, was, now) > band.allowance(was):
                bad.append(
                    Regression(
                        table.lab,
                        kernel,
                        figure,
                        f"{figure} went from {_num(was)} in the earlier report to {_num(now)}, beyond its band ({band.text()})",
                        [],
                        "earlier report",
                    )
                )
        log = lab.get("kernel_log", {}).get(kernel, {})
        keys = {tuple(k) for k in log.get("splats", [])}
        bad += log_news(table.lab, kernel, cell, keys, set(log.get("taints", [])), kernel, "earlier report")
    return bad, good


def kernel_names(cells: list[Cell], kernels: list[str]) -> dict[str, str]:
    """How the report names each kernel: a package by the release it holds, the rest as given."""
    names = {}
    for kernel in kernels:
        release = next((c.release for c in cells if c.kernel == kernel and c.release), None)
        names[kernel] = release if kernel.endswith(".deb") and release else kernel
    return names


def compare(cells: list[Cell], kernels: list[str], old: dict | None = None) -> Comparison:
    """Per lab, each check's outcome and each figure's value on each kernel (its runs taken
    together), the regressions and fixes against the first kernel, and against `old` (an
    earlier matrix.json) when given."""
    base = kernels[0]
    labs = list(dict.fromkeys(cell.lab for cell in cells if cell.kernel in kernels))
    tables, regressions, fixes, flaky = [], [], [], []
    for lab in labs:
        by_kernel = {}
        for k in kernels:
            runs = sorted((c for c in cells if (c.lab, c.kernel) == (lab, k)), key=lambda c: c.run)
            by_kernel[k] = together(runs) if runs else None
        ran = [c for c in by_kernel.values() if c is not None]
        checks = {
            check: {k: c.checks.get(check) if c else None for k, c in by_kernel.items()}
            for check in dict.fromkeys(check for c in ran for check in c.checks)
        }
        figures = {
            figure: {k: c.figures.get(figure) if c else None for k, c in by_kernel.items()}
            for figure in dict.fromkeys(figure for c in ran for figure in c.figures)
        }
        facts = {
            fact.rsplit(":", 1)[-1]: {k: c.facts.get(fact) if c else None for k, c in by_kernel.items()}
            for fact in dict.fromkeys(fact for c in ran for fact in c.facts)
        }
        table = LabTable(lab, by_kernel, checks, figures, facts)
        for selected in sorted({c.selected for c in ran if c.selected}):
            table.notes.append(f"verify ran only the checks {selected!r} selects (labkit matrix --checks)")
        if not did_run(by_kernel[base]):
            table.notes.append(f"{lab} did not run on the baseline {base}: nothing is compared")
        for kernel in kernels[1:]:
            if did_run(by_kernel[base]):
                regressions += log_regressions(table, base, kernel)
                regressions += check_regressions(table, base, kernel) + figure_regressions(table, base, kernel)
                fixes += check_fixes(table, base, kernel)
            elif not did_run(by_kernel[kernel]):  # still worth saying: it did not run
                regressions += check_regressions(table, base, kernel)
        if old is not None:
            bad, good = with_earlier(table, old, kernels)
            regressions, fixes = regressions + bad, fixes + good
        flaky += flakes(table)
        tables.append(table)
    # the kernel's own complaints first: they name the fault where a failed check only shows it
    regressions.sort(key=lambda r: r.what not in ("splat", "taint"))
    names = kernel_names(cells, kernels)
    for found in (*regressions, *fixes, *flaky):  # a package's path said once, in the kernels table
        found.shown = names[found.kernel]
        if isinstance(found, Regression):
            for kernel, name in names.items():
                found.reason = found.reason.replace(kernel, name)
    return Comparison(kernels, tables, regressions, fixes, flaky, names, old.get("generated") if old else None)


# ---- the tables, shared by Markdown and HTML -----------------------------------------------


def _num(value: float) -> str:
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _change(band: Band | None, baseline: float | None, value: float) -> str:
    if baseline is None or value == baseline:
        return ""
    if band is not None and band.percent and baseline:
        return f" ({(value - baseline) / abs(baseline) * 100:+.0f} %)"
    return f" ({'+' if value > baseline else ''}{_num(value - baseline)})"


def _label(comparison: Comparison, kernel: str) -> str:
    name = comparison.names.get(kernel, kernel)
    return f"{name} (baseline)" if kernel == comparison.kernels[0] else name


Row = list[tuple[str, bool]]  # (text, regressed)


def kernel_rows(comparison: Comparison) -> tuple[list[str], list[Row]]:
    rows = []
    for kernel in comparison.kernels:
        cells = [t.cells[kernel] for t in comparison.labs if t.cells[kernel] is not None]
        releases = ", ".join(dict.fromkeys(c.release for c in cells if c.release)) or "?"
        boxes = ", ".join(dict.fromkeys(c.box for c in cells if c.box)) or "?"
        given = kernel if kernel != comparison.names.get(kernel, kernel) else ""  # a package's path, once
        rows.append([(_label(comparison, kernel), False), (releases, False), (boxes, False), (given, False)])
    return ["kernel", "release", "box", "package"], rows


def cell_rows(comparison: Comparison, table: LabTable) -> tuple[list[str], list[Row]]:
    rows = []
    for kernel, cell in table.cells.items():
        bad = comparison.regressed(table.lab, kernel, "cell")
        if cell is None:
            rows.append(
                [(_label(comparison, kernel), False), ("no result", bad)]
                + [("", False)] * 3
                + [("no cell.json", False)]
            )
            continue
        seconds = f"{cell.seconds:.0f} s" if cell.seconds is not None else ""
        rows.append(
            [
                (_label(comparison, kernel), False),
                (cell.status, bad),
                (str(cell.runs), False),
                (cell.host, False),
                (seconds, False),
                (summary(cell.error), False),
            ]
        )
    return ["kernel", "status", "runs", "ran on", "time", "error"], rows


def shown_checks(table: LabTable) -> list[str]:
    if len(table.checks) <= SMALL:
        return list(table.checks)
    return [check for check, seen in table.checks.items() if set(seen.values()) != {"passed"}]


def all_pass(table: LabTable) -> bool:
    return bool(table.checks) and all(set(seen.values()) == {"passed"} for seen in table.checks.values())


def check_rows(comparison: Comparison, table: LabTable) -> tuple[list[str], list[Row]]:
    headers = ["check", *(_label(comparison, k) for k in comparison.kernels)]
    rows = [
        [
            (check, False),
            *(
                (table.checks[check][k] or "not run", comparison.regressed(table.lab, k, check))
                for k in comparison.kernels
            ),
        ]
        for check in shown_checks(table)
    ]
    return headers, rows


def figure_rows(comparison: Comparison, table: LabTable) -> tuple[list[str], list[Row]]:
    headers = ["figure", *(_label(comparison, k) for k in comparison.kernels), "band"]
    rows = []
    for figure, values in table.figures.items():
        band, baseline = band_for(figure), values[comparison.kernels[0]]
        row = [(figure, False)]
        for kernel, value in values.items():
            cell = table.cells[kernel]
            spread = cell.spread.get(figure) if cell is not None and cell.runs > 1 else None
            text = (
                "—"
                if value is None
                else _num(value)
                + (f" [{_num(spread[0])}–{_num(spread[1])}]" if spread else "")
                + ("" if kernel == comparison.kernels[0] else _change(band, baseline, value))
            )
            row.append((text, comparison.regressed(table.lab, kernel, figure)))
        rows.append(row + [(band.text() if band else "none", False)])
    return headers, rows


def fact_rows(comparison: Comparison, table: LabTable) -> tuple[list[str], list[Row]]:
    headers = ["version", *(_label(comparison, k) for k in comparison.kernels)]
    return headers, [
        [(fact, False), *((seen[k] or "—", False) for k in comparison.kernels)] for fact, seen in table.facts.items()
    ]


def splat_rows(comparison: Comparison) -> tuple[list[str], list[Row]]:
    """Per lab and kernel: the taint flags seen and how many splats of each kind."""
    rows = []
    for table in comparison.labs:
        for kernel, cell in table.cells.items():
            if cell is None:
                continue
            kinds: dict[str, int] = {}
            for s in cell.splats:
                kinds[s["kind"]] = kinds.get(s["kind"], 0) + 1
            flags = sorted({f for flags in cell.taints.values() for f in flags})
            bad = any(
                r.what in ("splat", "taint") and (r.lab, r.kernel) == (table.lab, kernel)
                for r in comparison.regressions
            )
            rows.append(
                [
                    (table.lab, False),
                    (_label(comparison, kernel), False),
                    (", ".join(f"{n} {k}" for k, n in kinds.items()) or "none", bad),
                    (", ".join(flags) or ("none" if cell.taints else "not read"), bad),
                ]
            )
    return ["lab", "kernel", "splats", "taint flags"], rows


def splat_list(comparison: Comparison) -> list[str]:
    """Every splat, one line each: where, when, and its first line."""
    return [
        f"{table.lab} on {_label(comparison, kernel)}"
        + (f", run {s['run']}" if cell.runs > 1 else "")
        + f", {s['node']}, {s['moment']}: {s['kind']}: {s['title']}"
        for table in comparison.labs
        for kernel, cell in table.cells.items()
        if cell is not None
        for s in cell.splats
    ]


def band_rows() -> tuple[list[str], list[Row]]:
    return (
        ["figure", "worse when", "band", "why"],
        [
            [(b.figure, False), ("higher" if b.higher_is_worse else "lower", False), (b.text(), False), (b.why, False)]
            for b in BANDS
        ],
    )


def checks_line(table: LabTable) -> str:
    if not table.checks:
        return "No checks ran (no verify report on any kernel)."
    if all_pass(table):
        return f"All {len(table.checks)} checks pass on every kernel."
    everywhere = sum(set(seen.values()) == {"passed"} for seen in table.checks.values())
    hidden = len(shown_checks(table)) < len(table.checks)
    return f"{everywhere} of {len(table.checks)} checks pass on every kernel" + ("; the others:" if hidden else ".")


# ---- Markdown ------------------------------------------------------------------------------


def _md_text(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(headers: list[str], rows: list[Row]) -> list[str]:
    lines = ["| " + " | ".join(_md_text(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [f"**{_md_text(text)}** ⚠" if bad else _md_text(text) for text, bad in row]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(comparison: Comparison) -> str:
    base = comparison.kernels[0]
    lines = [
        f"# Kernel matrix: {', '.join(t.lab for t in comparison.labs)}",
        "",
        f"Each kernel compared with the baseline, **{base}**. ⚠ marks a REGRESSION.",
        "",
    ]
    if comparison.earlier:
        lines += [f"Also compared with the earlier report of {comparison.earlier}: the same kernel then and now.", ""]
    lines += [f"## Regressions ({len(comparison.regressions)})", ""]
    for r in comparison.regressions:
        against = " (against the earlier report)" if r.against != "baseline" else ""
        lines.append(f"- ⚠ **{_md_text(str(r))}**{against}")
        if r.lines:
            lines += ["", "  ```", *(f"  {line}" for line in r.lines), "  ```"]
    lines += [""] if comparison.regressions else ["None.", ""]
    lines += [
        f"## Kernel log ({sum(len(c.splats) for t in comparison.labs for c in t.cells.values() if c)} splats)",
        "",
    ]
    lines += [*md_table(*splat_rows(comparison)), ""]
    lines += [f"- {_md_text(line)}" for line in splat_list(comparison)] + ([""] if splat_list(comparison) else [])
    lines += [f"## Flakes ({len(comparison.flakes)})", ""]
    lines += [f"- {_md_text(str(f))}" for f in comparison.flakes] or [
        "None: every check gave the same outcome in every run."
    ]
    lines += ["", f"## Fixes ({len(comparison.fixes)})", ""]
    lines += [f"- {_md_text(str(f))}" for f in comparison.fixes] or ["None."]
    lines += ["", "## Kernels", "", *md_table(*kernel_rows(comparison)), ""]
    for table in comparison.labs:
        lines += [f"## {table.lab}", "", *md_table(*cell_rows(comparison, table)), ""]
        lines += [f"Note: {note}." for note in table.notes] + ([""] if table.notes else [])
        for kernel, cell in table.cells.items():
            if cell is not None and cell.error and "\n" in cell.error.strip():
                lines += [f"{kernel}:", "", "```", cell.error.strip(), "```", ""]
        lines += ["### Checks", "", checks_line(table), ""]
        if shown_checks(table):
            lines += [*md_table(*check_rows(comparison, table)), ""]
        if table.figures:
            lines += ["### Figures", "", *md_table(*figure_rows(comparison, table)), ""]
        if table.facts:
            lines += ["### Versions", "", *md_table(*fact_rows(comparison, table)), ""]
    lines += [
        "## Noise bands",
        "",
        (
            "A figure regresses when it is worse than the baseline by more than its band; "
            "figures without a band are shown and never regress."
        ),
        "",
        *md_table(*band_rows()),
    ]
    return "\n".join(lines) + "\n"


# ---- HTML ----------------------------------------------------------------------------------

STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 90em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.bad { background: #fbe3e0; color: #a01c10; font-weight: bold; }
li.bad { color: #a01c10; }
pre { background: #f6f6f6; padding: 0.5em; overflow-x: auto; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; }
svg text { font-family: sans-serif; font-size: 12px; }
"""

BASE_COLOUR, KERNEL_COLOUR, BAD_COLOUR = "#8c8c8c", "#4a7fb5", "#c0392b"


def html_table(headers: list[str], rows: list[Row]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="bad">{escape(text)} ⚠</td>' if bad else f"<td>{escape(text)}</td>" for text, bad in row)
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def bar_chart(comparison: Comparison, table: LabTable, figure: str) -> str:
    """Horizontal bars, one per kernel; a dashed line where the band ends, worse than it regresses."""
    values, band = table.figures[figure], band_for(figure)
    baseline = values[comparison.kernels[0]]
    edge = None
    if band is not None and baseline is not None:
        allowance = band.allowance(baseline)
        edge = baseline + allowance if band.higher_is_worse else baseline - allowance
    top = max([abs(v) for v in values.values() if v is not None] + ([abs(edge)] if edge is not None else []) + [0])
    top = top or 1
    label_w, bar_w, row_h = 150, 170, 20
    width, height = label_w + bar_w + 70, 26 + row_h * len(values)
    parts = [
        f'<svg width="{width}" height="{height}" role="img">',
        f"<title>{escape(table.lab)}: {escape(figure)}</title>",
        f'<text x="0" y="14" font-weight="bold">{escape(figure)}</text>',
    ]
    for i, (kernel, value) in enumerate(values.items()):
        y = 22 + i * row_h
        name = kernel if len(kernel) <= 22 else kernel[:21] + "…"
        parts.append(f'<text x="0" y="{y + 13}">{escape(name)}</text>')
        if value is None:
            parts.append(f'<text x="{label_w}" y="{y + 13}">—</text>')
            continue
        colour = (
            BAD_COLOUR
            if comparison.regressed(table.lab, kernel, figure)
            else BASE_COLOUR
            if kernel == comparison.kernels[0]
            else KERNEL_COLOUR
        )
        w = round(abs(value) / top * bar_w, 1)
        parts.append(f'<rect x="{label_w}" y="{y + 2}" width="{w}" height="{row_h - 6}" fill="{colour}"/>')
        parts.append(f'<text x="{label_w + w + 4}" y="{y + 13}">{escape(_num(value))}</text>')
    if edge is not None:
        x = label_w + round(abs(edge) / top * bar_w, 1)
        parts.append(
            f'<line x1="{x}" y1="20" x2="{x}" y2="{height}" stroke="{BAD_COLOUR}" stroke-dasharray="3,3">'
            f"<title>band edge {escape(_num(edge))}</title></line>"
        )
    return "".join(parts) + "</svg>"


def html_page(comparison: Comparison) -> str:
    """One page that needs nothing else: styles inline, charts drawn as inline SVG."""
    labs = ", ".join(t.lab for t in comparison.labs)
    out = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>Kernel matrix: {escape(labs)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Kernel matrix: {escape(labs)}</h1>",
        (
            f"<p>Each kernel compared with the baseline, <b>{escape(comparison.kernels[0])}</b>. "
            "⚠ marks a regression; in the charts a red bar is one, and the dashed line is where the band ends.</p>"
        ),
    ]
    out.append(f'<h2 id="regressions">Regressions ({len(comparison.regressions)})</h2><ul>')
    for r in comparison.regressions:
        against = " (against the earlier report)" if r.against != "baseline" else ""
        lines = f"<pre>{escape(chr(10).join(r.lines))}</pre>" if r.lines else ""
        out.append(f'<li class="bad">⚠ {escape(str(r))}{against}{lines}</li>')
    out.append("</ul>" + ("" if comparison.regressions else "<p>None.</p>"))
    count = sum(len(c.splats) for t in comparison.labs for c in t.cells.values() if c)
    out += [f'<h2 id="kernel-log">Kernel log ({count} splats)</h2>', html_table(*splat_rows(comparison))]
    if splat_list(comparison):
        out.append("<ul>" + "".join(f"<li>{escape(line)}</li>" for line in splat_list(comparison)) + "</ul>")
    out.append(f'<h2 id="flakes">Flakes ({len(comparison.flakes)})</h2><ul>')
    out += [f"<li>{escape(str(f))}</li>" for f in comparison.flakes]
    out.append("</ul>" + ("" if comparison.flakes else "<p>None: every check gave the same outcome in every run.</p>"))
    out.append(f'<h2 id="fixes">Fixes ({len(comparison.fixes)})</h2><ul>')
    out += [f"<li>{escape(str(f))}</li>" for f in comparison.fixes]
    out.append("</ul>" + ("" if comparison.fixes else "<p>None.</p>"))
    out += ["<h2>Kernels</h2>", html_table(*kernel_rows(comparison))]
    for table in comparison.labs:
        out += [f"<h2>{escape(table.lab)}</h2>", html_table(*cell_rows(comparison, table))]
        out += [f"<p>Note: {escape(note)}.</p>" for note in table.notes]
        for kernel, cell in table.cells.items():
            if cell is not None and cell.error and "\n" in cell.error.strip():
                out.append(f"<p>{escape(kernel)}:</p><pre>{escape(cell.error.strip())}</pre>")
        out += ["<h3>Checks</h3>", f"<p>{escape(checks_line(table))}</p>"]
        if shown_checks(table):
            out.append(html_table(*check_rows(comparison, table)))
        if table.figures:
            out += ["<h3>Figures</h3>", html_table(*figure_rows(comparison, table)), '<div class="charts">']
            out += [bar_chart(comparison, table, figure) for figure in table.figures]
            out.append("</div>")
        if table.facts:
            out += ["<h3>Versions</h3>", html_table(*fact_rows(comparison, table))]
    out += [
        "<h2>Noise bands</h2>",
        (
            "<p>A figure regresses when it is worse than the baseline by more than its band; "
            "figures without a band are shown and never regress.</p>"
        ),
        html_table(*band_rows()),
        "</body></html>",
    ]
    return "\n".join(out) + "\n"


# ---- JSON and the files --------------------------------------------------------------------


def to_json(comparison: Comparison) -> dict:
    return {
        "kernels": comparison.kernels,
        "baseline": comparison.kernels[0],
        "names": comparison.names,
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "earlier": comparison.earlier,
        "cells": [asdict(c) for t in comparison.labs for c in t.cells.values() if c is not None],
        "labs": {
            t.lab: {
                "checks": t.checks,
                "figures": t.figures,
                "facts": t.facts,
                "notes": t.notes,
                "kernel_log": {
                    k: {"splats": sorted(splat_keys(c)), "taints": sorted(taint_set(c))}
                    for k, c in t.cells.items()
                    if c is not None
                },
            }
            for t in comparison.labs
        },
        "regressions": [asdict(r) | {"text": str(r)} for r in comparison.regressions],
        "fixes": [asdict(r) | {"text": str(r)} for r in comparison.fixes],
        "flakes": [asdict(f) | {"text": str(f)} for f in comparison.flakes],
        "bands": [asdict(b) | {"text": b.text()} for b in BANDS],
    }


def junit(comparison: Comparison) -> str:
    """One JUnit file for the whole matrix: a suite per lab and kernel, a test case per check
    (a flaky one passes with a <flakyFailure> per failed run, as Maven Surefire marks reruns),
    and one for the kernel log that fails on a splat or taint the baseline did not have."""
    suites = ET.Element("testsuites", name="labkit matrix")
    for table in comparison.labs:
        for kernel, cell in table.cells.items():
            suite = ET.SubElement(suites, "testsuite", name=f"{table.lab} on {_label(comparison, kernel)}")
            counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
            for check, seen in table.checks.items():
                outcome = seen[kernel] or "not run"
                case = ET.SubElement(suite, "testcase", classname=f"{table.lab}.{kernel}", name=check)
                counts["tests"] += 1
                if outcome in ("failed", "not run"):
                    ET.SubElement(case, "failure", message=f"{outcome} in every run")
                    counts["failures"] += 1
                elif outcome == "error":
                    ET.SubElement(case, "error", message="errored in every run")
                    counts["errors"] += 1
                elif outcome == "skipped":
                    ET.SubElement(case, "skipped")
                    counts["skipped"] += 1
                elif outcome == "flaky":
                    for n, run in enumerate(cell.ran[check], 1):
                        if run != "passed":
                            ET.SubElement(case, "flakyFailure", message=f"run {n}: {run}")
            case = ET.SubElement(suite, "testcase", classname=f"{table.lab}.{kernel}", name="kernel log")
            counts["tests"] += 1
            found = [
                r
                for r in comparison.regressions
                if (r.lab, r.kernel, r.against) == (table.lab, kernel, "baseline") and r.what in ("splat", "taint")
            ]
            if found:
                failure = ET.SubElement(case, "failure", message=found[0].reason)
                failure.text = "\n\n".join("\n".join([r.reason, *r.lines]) for r in found)
                counts["failures"] += 1
            if cell is None or cell.status == "error":
                ET.SubElement(case, "error", message=summary(cell.error) if cell else "no cell.json")
                counts["errors"] += 1
            suite.attrib.update({k: str(v) for k, v in counts.items()})
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def write(report_dir: Path, records: list[dict], kernels: list[str], old: dict | None = None) -> list[Regression]:
    """matrix.json, matrix.md, matrix.html and matrix.xml in the report folder, from the cells'
    records (their cell.json) and their verify reports; the regressions against the first
    kernel and the earlier report `old`."""
    cells = [to_cell(r, cell_folder(report_dir, r["lab"], r["kernel"], r.get("run", 1))) for r in records]
    comparison = compare(cells, kernels, old)
    (report_dir / "matrix.json").write_text(json.dumps(to_json(comparison), indent=2) + "\n")
    (report_dir / "matrix.md").write_text(markdown(comparison))
    (report_dir / "matrix.html").write_text(html_page(comparison))
    (report_dir / "matrix.xml").write_text(junit(comparison))
    return comparison.regressions


def read_earlier(path: Path) -> dict:
    """An earlier report's matrix.json, for --compare."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LabkitError(f"--compare {path}: cannot read it ({exc}). Give the matrix.json of an earlier run") from None
    if not isinstance(data, dict) or "labs" not in data or "kernels" not in data:
        raise LabkitError(
            f"--compare {path}: not a matrix.json (no labs and kernels in it). Give the matrix.json of an earlier run"
        )
    return data
