"""Every lab on every kernel, and the report comparing them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from labkit.cli.common import KERNEL_HELP, err, handled, out
from labkit.operate import matrix, matrix_report

app = typer.Typer()


@app.command("matrix")
@handled
def matrix_cmd(
    labs: Annotated[list[str], typer.Argument(help="The labs, e.g. nat tun dr.")],
    kernel: Annotated[
        list[str], typer.Option(help=KERNEL_HELP + " Give it once per kernel; the first is the baseline.")
    ],
    report: Annotated[Path, typer.Option(help="The report folder.")] = Path("labkit-matrix"),
    again: Annotated[bool, typer.Option("--again", help="Run the cells already done again.")] = False,
) -> None:
    """Every lab on every kernel (up, verify with the failure scenarios, bench, down), and a report comparing each kernel with the first. Exit status 1 when a kernel regresses.

    Example: labkit matrix nat dr --kernel bookworm --kernel trixie"""
    try:
        records = matrix.run(labs, kernel, report, again, lambda line: out.print(line, highlight=False, markup=False))
    except matrix.Interrupted as exc:
        err.print(
            f"interrupted ({exc}): the cell that ran was removed; the cells done are kept in {report}. "
            "Continue with the same command",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        raise typer.Exit(128 + exc.signum) from None
    regressions = matrix_report.write(report, records, kernel)
    for line in regressions:
        out.print(f"regression: {line}", highlight=False, markup=False, soft_wrap=True)
    out.print(f"report: {report / 'matrix.md'}, {report / 'matrix.html'}, {report / 'matrix.json'}", highlight=False)
    if regressions:
        raise typer.Exit(1)
