"""A lab without booting it: its Vagrantfile, its commands, its picture, and the lab file's schema."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from labkit import box, labfile
from labkit.boot import booking, target
from labkit.boot.vagrant import Accel
from labkit.cli.common import AccelOpt, AsOpt, BoxOpt, ConnectOpt, KernelOpt, LabArg, ProviderOpt, handled, out
from labkit.describe import explain, graph
from labkit.errors import LabkitError
from labkit.labfile import Lab
from labkit.render import vagrantfile
from labkit.render.vagrantfile import Provider

app = typer.Typer()


@app.command()
@handled
def render(
    lab: LabArg,
    box_name: BoxOpt = box.DEFAULT_BOX,
    kernel: KernelOpt = None,
    provider: ProviderOpt = Provider.libvirt,
    accel: AccelOpt = Accel.auto,
    as_name: AsOpt = None,
    connect: ConnectOpt = None,
) -> None:
    """Print the lab's Vagrantfile (its management network as on first use). Boots nothing.

    Example: labkit render nat --as alice"""
    model = labfile.read_lab(lab)
    source, chosen = labfile.lab_file(lab), target.box_to_boot(box_name, kernel)
    uri = target.uri_for(connect)
    booked = target.target_for(source, chosen, provider, accel, target.copy_name(as_name), uri)
    # the box's kernel as up boots it, once up has put it in the host's pool
    sys.stdout.write(vagrantfile.render(model, booking.direct_boot(booked, uri, upload=False)))


@app.command("explain")
@handled
def explain_cmd(lab: LabArg, node: Annotated[str | None, typer.Option(help="Only this node.")] = None) -> None:
    """The commands labkit applies on each node, in order, each with its reason. Boots nothing.

    Example: labkit explain dr --node rs0"""
    model = labfile.read_lab(lab)
    if node is not None and node not in model.nodes:
        raise LabkitError(f"the lab {model.name} has no node {node!r}. Its nodes: {', '.join(model.nodes)}")
    for name in [node] if node else list(model.nodes):
        out.print(f"[bold]## {name}[/] ({model.nodes[name].role.value})", highlight=False)
        for i, (why, commands) in enumerate(explain.walkthrough(model, name), 1):
            out.print(f"\n# {i}. {why}", style="dim", highlight=False, soft_wrap=True)
            for line in commands:
                out.print(line, highlight=False, markup=False, soft_wrap=True)
        out.print()


@app.command("graph")
@handled
def graph_cmd(
    lab: LabArg, out_dir: Annotated[Path, typer.Option("--out", help="Folder for <lab>.svg and <lab>.png.")] = Path(".")
) -> None:
    """Draw the lab: networks, addresses, VIPs, forwarding method, request and reply paths. Boots nothing.

    Example: labkit graph tun --out pictures"""
    for path in graph.draw(labfile.read_lab(lab), out_dir):
        out.print(str(path), highlight=False)


@app.command()
@handled
def schema() -> None:
    """Print the lab file's JSON Schema, for editors that check and complete lab.yaml files.

    Example: labkit schema > lab.schema.json"""
    sys.stdout.write(json.dumps(Lab.model_json_schema(), indent=2) + "\n")
