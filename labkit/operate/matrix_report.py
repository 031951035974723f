"""The kernel matrix's report: every cell's results (its cell.json and the JUnit XML of its
verify) compared with the first kernel, the baseline, and written as matrix.json, matrix.md
and matrix.html.

A regression is a check that passed on the baseline and fails, errors or did not run on
another kernel, a figure that got worse than the baseline by more than its noise band, or a
cell that did not run at all. Pure: reads and writes files, runs nothing.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatch
from html import escape
from pathlib import Path

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
    )


def load(report_dir: Path) -> list[Cell]:
    """Every cell found in a report folder."""
    return [to_cell(json.loads(path.read_text()), path.parent) for path in sorted(report_dir.glob("*/cell.json"))]


# ---- comparing -----------------------------------------------------------------------------


@dataclass
class Regression:
    lab: str
    kernel: str
    what: str  # the check, the figure, or "cell"
    reason: str

    def __str__(self) -> str:
        return f"{self.lab} on {self.kernel}: {self.reason}"


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


def figure_regressions(table: LabTable, base: str, kernel: str) -> list[Regression]:
    found = []
    for figure, values in table.figures.items():
        band, baseline, value = band_for(figure), values[base], values[kernel]
        if band is None or baseline is None or value is None:
            continue
        if worse_by(band, baseline, value) > band.allowance(baseline):
            unit = f" {band.unit}" if band.unit else ""
            found.append(
                Regression(
                    table.lab,
                    kernel,
                    figure,
                    f"{figure} went from {_num(baseline)} to "
                    f"{_num(value)}{unit}, beyond its band ({band.text()}) around {base}",
                )
            )
    return found


def compare(cells: list[Cell], kernels: list[str]) -> Comparison:
    """Per lab, each check's outcome and each figure's value on each kernel, and the
    regressions against the first kernel."""
    base = kernels[0]
    labs = list(dict.fromkeys(cell.lab for cell in cells if cell.kernel in kernels))
    tables, regressions = [], []
    for lab in labs:
        by_kernel = {k: next((c for c in cells if (c.lab, c.kernel) == (lab, k)), None) for k in kernels}
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
        if not did_run(by_kernel[base]):
            table.notes.append(f"{lab} did not run on the baseline {base}: nothing is compared")
        for kernel in kernels[1:]:
            if did_run(by_kernel[base]):
                regressions += check_regressions(table, base, kernel) + figure_regressions(table, base, kernel)
            elif not did_run(by_kernel[kernel]):  # still worth saying: it did not run
                regressions += check_regressions(table, base, kernel)
        tables.append(table)
    return Comparison(kernels, tables, regressions)


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
    return f"{kernel} (baseline)" if kernel == comparison.kernels[0] else kernel


Row = list[tuple[str, bool]]  # (text, regressed)


def kernel_rows(comparison: Comparison) -> tuple[list[str], list[Row]]:
    rows = []
    for kernel in comparison.kernels:
        cells = [t.cells[kernel] for t in comparison.labs if t.cells[kernel] is not None]
        releases = ", ".join(dict.fromkeys(c.release for c in cells if c.release)) or "?"
        boxes = ", ".join(dict.fromkeys(c.box for c in cells if c.box)) or "?"
        rows.append([(_label(comparison, kernel), False), (releases, False), (boxes, False)])
    return ["kernel", "release", "box"], rows


def cell_rows(comparison: Comparison, table: LabTable) -> tuple[list[str], list[Row]]:
    rows = []
    for kernel, cell in table.cells.items():
        bad = comparison.regressed(table.lab, kernel, "cell")
        if cell is None:
            rows.append([(_label(comparison, kernel), False), ("no result", bad), ("", False), ("no cell.json", False)])
            continue
        seconds = f"{cell.seconds:.0f} s" if cell.seconds is not None else ""
        rows.append(
            [(_label(comparison, kernel), False), (cell.status, bad), (seconds, False), (summary(cell.error), False)]
        )
    return ["kernel", "status", "time", "error"], rows


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
            text = (
                "—"
                if value is None
                else _num(value) + ("" if kernel == comparison.kernels[0] else _change(band, baseline, value))
            )
            row.append((text, comparison.regressed(table.lab, kernel, figure)))
        rows.append(row + [(band.text() if band else "none", False)])
    return headers, rows


def fact_rows(comparison: Comparison, table: LabTable) -> tuple[list[str], list[Row]]:
    headers = ["version", *(_label(comparison, k) for k in comparison.kernels)]
    return headers, [
        [(fact, False), *((seen[k] or "—", False) for k in comparison.kernels)] for fact, seen in table.facts.items()
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
    if comparison.regressions:
        lines += [f"## Regressions ({len(comparison.regressions)})", ""]
        lines += [f"- ⚠ **{_md_text(str(r))}**" for r in comparison.regressions] + [""]
    else:
        lines += ["No regressions.", ""]
    lines += ["## Kernels", "", *md_table(*kernel_rows(comparison)), ""]
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
    if comparison.regressions:
        out.append(f"<h2>Regressions ({len(comparison.regressions)})</h2><ul>")
        out += [f'<li class="bad">⚠ {escape(str(r))}</li>' for r in comparison.regressions]
        out.append("</ul>")
    else:
        out.append("<p>No regressions.</p>")
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
        "cells": [asdict(c) for t in comparison.labs for c in t.cells.values() if c is not None],
        "labs": {
            t.lab: {"checks": t.checks, "figures": t.figures, "facts": t.facts, "notes": t.notes}
            for t in comparison.labs
        },
        "regressions": [asdict(r) | {"text": str(r)} for r in comparison.regressions],
        "bands": [asdict(b) | {"text": b.text()} for b in BANDS],
    }


def write(report_dir: Path, records: list[dict], kernels: list[str]) -> list[Regression]:
    """matrix.json, matrix.md and matrix.html in the report folder, from the cells' records
    (their cell.json) and their verify reports; the regressions against the first kernel."""
    cells = [to_cell(r, cell_folder(report_dir, r["lab"], r["kernel"])) for r in records]
    comparison = compare(cells, kernels)
    (report_dir / "matrix.json").write_text(json.dumps(to_json(comparison), indent=2) + "\n")
    (report_dir / "matrix.md").write_text(markdown(comparison))
    (report_dir / "matrix.html").write_text(html_page(comparison))
    return comparison.regressions
