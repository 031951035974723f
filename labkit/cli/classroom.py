"""A class: a copy of a lab per student over the hosts labkit knows (class up, status, reset,
bundle, down), and exercises to find in them (exercise list, start, check)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from labkit import box, home, labfile, lock
from labkit.cli.common import LabArg, columns, handled, out, say, warn
from labkit.describe import graph
from labkit.errors import LabkitError
from labkit.operate import classroom, faults
from labkit.verify import run

app = typer.Typer(help="A class: one copy of a lab per student, over the hosts labkit knows.", no_args_is_help=True)
exercises = typer.Typer(
    help="Faults for students to find in their copy, graded from the running copy.", no_args_is_help=True
)

StudentArg = Annotated[str, typer.Argument(help="A student of the class (labkit class status lists them).")]
SomeStudent = Annotated[str | None, typer.Argument(help="One student; every seat when left out.")]


@app.command("up")
@handled
def up(
    lab: LabArg,
    students: Annotated[str, typer.Option("--students", help="A file of names (one a line), or a number of seats.")],
    listen: Annotated[
        str, typer.Option(help="The address the students' ways in listen on, on each host (0.0.0.0: every address).")
    ] = classroom.LISTEN,
    port: Annotated[int, typer.Option(help="The first port of the ways in: one port per VM, seat after seat.")] = (
        classroom.PORT_BASE
    ),
) -> None:
    """Boot one copy of the lab per student over the hosts labkit knows, by the room each has, in waves their cores bear; go on past a seat that fails; run it again to continue.

    Example: labkit class up nat --students students.txt"""
    source, model = labfile.lab_file(lab), labfile.read_lab(lab)
    names = classroom.roster(students)
    chosen = box.DEFAULT_BOX
    rooms = classroom.placed(names, model, source, chosen, listen, port)
    started = time.monotonic()
    again = f"labkit class up {lab} --students {students}"
    with lock.writing("class", "class up", f"the class is partly up. Continue with: {again}"):
        classroom.boot_seats(names, model, source, chosen, rooms, say)
    record = classroom.need()
    failed = [s for s in names if record["seats"][s]["state"] != "up"]
    say(
        f"class on {model.name}: {len(names) - len(failed)} of {len(names)} seats up in {time.monotonic() - started:.0f} s"
    )
    if failed:
        raise LabkitError(
            f"seats not up: {', '.join(failed)} (logs in {home.home() / 'class'}/NAME/up.log). "
            f"Continue with: labkit class up {lab} --students {students}"
        )


@app.command("status")
@handled
def status(
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write the teacher's page here, again and again.")
    ] = None,
    every: Annotated[int, typer.Option(min=2, help="With --html: seconds between two writes of the page.")] = 10,
    once: Annotated[bool, typer.Option(help="With --html: write the page once and stop.")] = False,
) -> None:
    """Every seat: student, host, state, exercise, checks passed, when last checked. With --html, a page for a projector, written every few seconds until interrupted.

    Example: labkit class status --html class.html"""
    while True:
        record = classroom.need()
        table = classroom.rows(record, classroom.states(record))
        if html is None or once:
            for line in columns(table, out.width, droppable=("last checked", "host"))[0]:
                say(line)
        if html is not None:
            html.write_text(classroom.page(record, table, 0 if once else every))
        if html is None or once:
            return
        time.sleep(every)


@app.command("reset")
@handled
def reset(student: SomeStudent = None) -> None:
    """Put a seat (or every seat) back as class up left it, in seconds (libvirt snapshots); its exercise is gone.

    Example: labkit class reset ana"""
    record = classroom.need()
    for name in classroom.chosen(record, student):
        started = time.monotonic()
        with classroom.running(name) as running, lock.changing(running.name, "reset"):
            running.reset()
        classroom.update(name, exercise=None, checks=None, checked=None)
        say(f"{name} reset in {time.monotonic() - started:.0f} s")


@app.command("down")
@handled
def down(student: SomeStudent = None) -> None:
    """Remove a seat (or the whole class): its VMs, volumes and networks, its way in, its guard, its keys.

    Example: labkit class down"""
    record = classroom.need()
    for name in classroom.chosen(record, student):
        record = classroom.remove(name)
        say(f"{name}: down")
    if not record["seats"]:
        classroom.path().unlink()
        shutil.rmtree(home.home() / "class", ignore_errors=True)
        say("the class is down")


@app.command("bundle")
@handled
def bundle(
    student: StudentArg, folder: Annotated[Path, typer.Argument(help="Where to write it (made if missing).")]
) -> None:
    """What a student needs to reach their seat: ssh_config and key, the lab's picture, commands to try.

    Example: labkit class bundle ana ./ana"""
    record = classroom.need()
    s = classroom.seat(record, student)
    model = labfile.read_lab(record["lab"])
    folder.mkdir(parents=True, exist_ok=True)
    key = classroom.student_key(student)
    for part in (key, key.with_suffix(".pub")):
        shutil.copyfile(part, folder / part.name)
    (folder / key.name).chmod(0o600)
    address = classroom.address_of(record["listen"], s["host"])
    (folder / "ssh_config").write_text(classroom.ssh_config(address, s["ports"]))
    (folder / "README.txt").write_text(classroom.readme(student, model, list(s["ports"])))
    (folder / f"{model.name}.dot").write_text(graph.dot(model))
    if shutil.which("dot"):
        graph.draw(model, folder)
    else:
        warn("graphviz's dot is not installed: the bundle has the lab's picture as DOT only")
    say(f"{student}'s bundle is in {folder}: ssh_config, id_ed25519, README.txt and the lab's picture")


# ---- exercises -------------------------------------------------------------------------------


@exercises.command("list")
@handled
def exercise_list() -> None:
    """Every exercise: the labs it applies to and what the student sees.

    Example: labkit exercise list"""
    labs = {name: labfile.read_lab(name) for name in labfile.known_labs()}
    table = [("exercise", "labs", "node", "what the student sees")]
    for fault in faults.FAULTS:
        where = [name for name, lab in labs.items() if fault in faults.applying_to(lab)]
        table.append((fault.name, ",".join(where), fault.node, fault.symptom))
    for line in columns(table, 10_000)[0]:
        say(line)


@exercises.command("start")
@handled
def exercise_start(
    student: StudentArg, name: Annotated[str, typer.Argument(help="An exercise (labkit exercise list).")]
) -> None:
    """Break the student's copy as the exercise says, as someone with root would; tell them the symptom.

    Example: labkit exercise start ana nat-route-around"""
    with classroom.running(student) as running, lock.changing(running.name, "fail"):
        fault = faults.exercise(name, running.lab)
        for words in fault.commands:
            running.run(fault.node, ["sudo", "-n", *words])
    classroom.update(student, exercise=fault.name, checks="not checked", checked=None)
    say(f"{student}: {fault.name} started on {fault.node}.")
    say(f"What they see: {fault.symptom}.")
    say(f"A hint, when they ask: {fault.hint}")


@exercises.command("check")
@handled
def exercise_check(student: StudentArg) -> None:
    """Grade the student's exercise from their running copy, with the checks its fault breaks (nothing is provisioned).

    Example: labkit exercise check ana"""
    record = classroom.need()
    s = classroom.seat(record, student)
    if not s.get("exercise"):
        raise LabkitError(f"{student} has no exercise. Start one with: labkit exercise start {student} NAME")
    fault = faults.by_name(s["exercise"])
    running = classroom.running(student)
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "checks.xml"
        args = ["-q", "-m", "not failover", "-k", classroom.selection(fault.catches), f"--junitxml={report}"]
        code = run.verify(running.folder, running.ssh_config, args)
        if not report.exists():
            raise LabkitError(f"the checks of {student}'s copy did not run (pytest exit {code})")
        passed, total = classroom.grade(report.read_text(), fault.catches)
    classroom.update(student, checks=f"{passed}/{total}", checked=classroom.now())
    if total and passed == total:
        say(f"{student}: {fault.name} fixed, {passed}/{total} checks pass.")
        say(f"Why: {fault.explanation}")
        return
    say(f"{student}: {fault.name} not fixed yet, {passed}/{total} checks pass.")
    raise typer.Exit(1)
