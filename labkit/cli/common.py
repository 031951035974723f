"""What every command shares: the consoles, expected failures turned into messages, the
options several commands take, and plain columns that fit the terminal."""

from __future__ import annotations

import functools
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from labkit import box
from labkit.boot.vagrant import Accel
from labkit.errors import LabkitError
from labkit.labfile import LabError
from labkit.render.vagrantfile import Provider

out = Console()
err = Console(stderr=True)


def handled(command):
    """Expected failures become their message on stderr and their exit status, not a
    traceback; each problem of a lab file is a line of its own."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except LabkitError as exc:
            lines = str(exc).splitlines() if isinstance(exc, LabError) else [str(exc)]
            for line in lines:
                err.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True, markup=True)
            raise typer.Exit(exc.code) from None

    return run


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


def say(line: str) -> None:
    """A line as it is: no markup, no highlighting, not wrapped again (it was made to fit)."""
    out.print(line, highlight=False, markup=False, soft_wrap=True)


LabArg = Annotated[str, typer.Argument(help="A lab name (nat, tun, dr, fwmark), its folder, or a lab.yaml path.")]
RunningArg = Annotated[str | None, typer.Argument(help="The lab; may be left out when only one is up.")]
BoxOpt = Annotated[
    str, typer.Option("--box", help="Vagrant box to boot; any other than labkit's gets the lab packages installed.")
]
ProviderOpt = Annotated[Provider, typer.Option(help="Vagrant provider.")]
AccelOpt = Annotated[
    Accel, typer.Option(help="libvirt: KVM, or QEMU software emulation (tcg); auto uses KVM when it works.")
]
KERNEL_HELP = (
    f"A Debian suite whose linux-image-amd64 to use ({', '.join(box.SUITES)}) or the path of a linux-image-*.deb."
)
KernelOpt = Annotated[
    str | None, typer.Option(help=KERNEL_HELP + " Boots the box labkit box build --kernel made for it.")
]
AsOpt = Annotated[
    str | None,
    typer.Option(
        "--as",
        help="Run a copy of the lab under this name: its own VMs and networks; every command then takes the name.",
    ),
]
ConnectOpt = Annotated[
    str | None,
    typer.Option(
        "--connect",
        help="Another host's libvirt, qemu+ssh://user@host/system, or a host named in LABKIT_HOME/config.yaml.",
    ),
]
ServiceOpt = Annotated[
    str | None,
    typer.Option(
        "--service", help="The service, as labkit status lists it (e.g. 'tcp 192.168.55.100:80'); default the first."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def columns(rows: list[tuple[str, ...]], width: int, droppable: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """Plain columns under the headings in rows[0], never cut: names, hosts and kernel releases are
    what matter. Where they are wider than `width`, the `droppable` columns are left out, first
    first, until they fit. The lines, and the headings left out."""
    headings, dropped = list(rows[0]), []
    keep = list(range(len(headings)))
    lines = _aligned(rows, keep)
    for heading in droppable:
        if max(map(len, lines)) <= width:
            break
        keep.remove(headings.index(heading))
        dropped.append(heading)
        lines = _aligned(rows, keep)
    return lines, dropped


def _aligned(rows: list[tuple[str, ...]], keep: list[int]) -> list[str]:
    widths = {i: max(len(row[i]) for row in rows) for i in keep}
    return ["  ".join(row[i].ljust(widths[i]) for i in keep).rstrip() for row in rows]
