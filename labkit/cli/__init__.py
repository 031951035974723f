"""The `labkit` command: arguments in, what happened printed. Each module holds the commands users
reach for together; the work is done by the lab's rooms (labfile, render, plan, boot, apply,
verify, operate, describe, box)."""

import typer

from labkit.cli import box, classroom, describe, lab, matrix, operate

app = typer.Typer(
    help="Linux Virtual Server labs on real virtual machines.\n\nExample: labkit up nat",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
for commands in (lab.app, operate.app, describe.app, matrix.app, box.app):
    app.add_typer(commands)
app.add_typer(box.boxes, name="box")
app.add_typer(classroom.app, name="class")
app.add_typer(classroom.exercises, name="exercise")

__all__ = ["app"]
