"""The box labs boot from (box build, export, import, list), and whether a host can boot labs (doctor)."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Annotated

import typer

from labkit import box, home
from labkit.boot import doctor, target
from labkit.cli.common import KERNEL_HELP, BoxOpt, ConnectOpt, ProviderOpt, columns, handled, out, say
from labkit.operate.show import left_out
from labkit.render.vagrantfile import Provider

app = typer.Typer()
boxes = typer.Typer(help="The Vagrant box labs boot from.", no_args_is_help=True)


@app.command("doctor")
@handled
def doctor_cmd(
    provider: ProviderOpt = Provider.libvirt, box_name: BoxOpt = box.DEFAULT_BOX, connect: ConnectOpt = None
) -> None:
    """Check that this host (or with --connect, that libvirt host) can boot labs; print the fix for each problem.

    Example: labkit doctor --connect qemu+ssh://teacher@big/system"""
    found = doctor.probes(provider, box_name, uri=target.uri_for(connect))
    for p in found:
        mark = "[green]ok  [/]" if p.ok else ("[red]FAIL[/]" if p.fatal else "[yellow]warn[/]")
        out.print(f"{mark}  {p.what}" + ("" if p.ok else f"\n      fix: {p.fix}"), highlight=False, soft_wrap=True)
    if any(p.fatal and not p.ok for p in found):
        raise typer.Exit(1)


@boxes.command("build")
@handled
def build(
    kernel: Annotated[str, typer.Option(help=KERNEL_HELP)] = "bookworm",
    force: Annotated[bool, typer.Option(help="Rebuild even if the box exists.")] = False,
    mirror: Annotated[str | None, typer.Option(help="Debian mirror; default: the one apt uses.")] = None,
    name: Annotated[
        str | None,
        typer.Option(
            help=f"Name of the box in Vagrant; default {box.DEFAULT_BOX}, or labkit/linux-RELEASE for another kernel."
        ),
    ] = None,
) -> None:
    """Build labkit's box from Debian packages, or the same box with another kernel.

    Example: labkit box build --kernel trixie"""
    spec = box.parse_kernel(kernel)
    started = time.monotonic()
    built = box.build_box(
        mirror=mirror or box.debian_mirror(),
        cache_dir=home.cache_dir(),
        kernel=spec,
        name=name,
        force=force,
        log=lambda line: out.print(line, highlight=False),
    )
    if built:
        out.print(
            f"box {built} built and added in {time.monotonic() - started:.0f} s. "
            f"Boot a lab on it: labkit up LAB --kernel {kernel}",
            highlight=False,
        )
    else:
        out.print(f"the box for kernel {kernel} is already in Vagrant (--force rebuilds it)", highlight=False)


def _shared_line(what: str, shared: box.Shared, file: Path) -> str:
    where = "to" if what == "exported" else "from"
    return (
        f"{what} box {shared.name} {shared.version} (kernel {shared.kernel or '?'}) {where} {file}: "
        f"{shared.size / 1024**2:.0f} MiB in {shared.seconds:.1f} s"
    )


@boxes.command("export")
@handled
def export(
    file: Annotated[Path, typer.Argument(help="The file to write, e.g. labkit-bookworm.box.")],
    box_name: BoxOpt = box.DEFAULT_BOX,
) -> None:
    """Write a box to one file that another installation imports (labkit box import FILE).

    Example: labkit box export labkit-bookworm.box"""
    shared = box.export_box(file, box_name)
    out.print(_shared_line("exported", shared, file), highlight=False, soft_wrap=True)


@boxes.command("import")
@handled
def import_cmd(
    file: Annotated[Path, typer.Argument(help="A file labkit box export wrote.")],
    force: Annotated[bool, typer.Option(help="Replace another version of the same box.")] = False,
) -> None:
    """Check a box file labkit box export wrote and add the box to Vagrant.

    Example: labkit box import labkit-bookworm.box"""
    shared = box.import_box(file, force=force, log=lambda line: out.print(line, highlight=False))
    if shared.added:
        out.print(_shared_line("imported", shared, file), highlight=False, soft_wrap=True)
    else:
        out.print(
            f"box {shared.name} {shared.version} is already in Vagrant, identical: nothing to do",
            highlight=False,
            soft_wrap=True,
        )


@boxes.command("list")
@handled
def list_cmd() -> None:
    """The boxes labkit built, with their kernels and where each came from.

    Example: labkit box list"""
    found = box.labkit_boxes()
    if not found:
        out.print("no labkit box yet: labkit box build (and labkit box build --kernel SPEC for another kernel)")
        return
    for line in box_lines(found, out.width):
        say(line)


def box_lines(found: list[box.Box], width: int) -> list[str]:
    """`labkit box list`'s columns in `width`: the build date, the package versions, the box version
    and then where it came from are left out when they do not fit."""
    rows = [("box", "version", "kernel", "from", "ipvsadm", "keepalived", "built")]
    rows += [
        (b.name, b.version, b.kernel or "?", b.spec or "?", b.ipvsadm or "?", b.keepalived or "?", b.built or "?")
        for b in found
    ]
    lines, dropped = columns(rows, width, droppable=("built", "keepalived", "ipvsadm", "version", "from"))
    return lines + (textwrap.wrap(left_out(dropped, json=False), width) if dropped else [])
