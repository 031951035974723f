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
    repeat: Annotated[
        int, typer.Option(help="Runs of each cell, each on a fresh boot: a check that passes and fails is flaky.")
    ] = 1,
    compare: Annotated[
        Path | None,
        typer.Option(help="An earlier run's matrix.json: also report each kernel's regressions and fixes since."),
    ] = None,
    connect: Annotated[
        list[str],
        typer.Option(
            help="A host to run cells on (a libvirt URI, or a host in config.yaml; qemu:///system is this one; "
            "'all': this host and every host in config.yaml). Give it once per host; cells run on all at once."
        ),
    ] = [],  # noqa: B006 (typer reads the default)
    per_host: Annotated[
        int | None,
        typer.Option(help="At most this many cells at once on a host (default: as many as its memory holds)."),
    ] = None,
    checks: Annotated[
        str | None,
        typer.Option(
            help="Only the verify checks this pytest -m expression selects, e.g. 'not failover' "
            "(default: every check, the failure scenarios included)."
        ),
    ] = None,
) -> None:
    """Every lab on every kernel (up, verify with the failure scenarios, bench, the kernel's log read, down), and a report comparing each kernel with the first. Exit status 1 when a kernel regresses.

    Example: labkit matrix nat dr --kernel bookworm --kernel trixie --repeat 2"""
    old = matrix_report.read_earlier(compare) if compare else None
    try:
        records = matrix.run(
            labs,
            kernel,
            report,
            again,
            lambda line: out.print(line, highlight=False, markup=False, soft_wrap=True),
            repeat=repeat,
            connect=connect,
            per_host=per_host,
            checks=checks,
        )
    except matrix.Interrupted as exc:
        err.print(
            f"interrupted ({exc}): the cells that ran were removed; the cells done are kept in {report}. "
            "Continue with the same command",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        raise typer.Exit(128 + exc.signum) from None
    regressions = matrix_report.write(report, records, kernel, old)
    for line in regressions:
        out.print(f"regression: {line}", highlight=False, markup=False, soft_wrap=True)
    out.print(
        f"report: {report / 'matrix.md'}, {report / 'matrix.html'}, {report / 'matrix.json'}, {report / 'matrix.xml'}",
        highlight=False,
        soft_wrap=True,
    )
    if regressions:
        raise typer.Exit(1)
