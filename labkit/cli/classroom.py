"""A class: a copy of a lab per student over the hosts labkit knows (class up, status, reset,
bundle, down), and exercises to find in them (exercise list, start, check)."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import typer

from labkit import box, home, labfile, lock
from labkit.boot import booking, host, leftovers, libvirt, target
from labkit.boot.vagrant import Accel
from labkit.cli.common import LabArg, columns, handled, out, say, warn
from labkit.describe import graph
from labkit.errors import LabkitError
from labkit.labfile import Lab
from labkit.operate import classroom, faults
from labkit.render.vagrantfile import Provider
from labkit.running import RunningLab
from labkit.verify import run

app = typer.Typer(help="A class: one copy of a lab per student, over the hosts labkit knows.", no_args_is_help=True)
exercises = typer.Typer(
    help="Faults for students to find in their copy, graded from the running copy.", no_args_is_help=True
)

StudentArg = Annotated[str, typer.Argument(help="A student of the class (labkit class status lists them).")]
SomeStudent = Annotated[str | None, typer.Argument(help="One student; every seat when left out.")]

_saving = threading.Lock()


def _update(student: str, **fields) -> dict:
    """Change one seat in the class's record; seats boot at once, so read, change and write under a lock."""
    with _saving:
        record = classroom.need()
        record["seats"][student].update(fields)
        classroom.save(record)
        return record


def _rooms(lab: Lab, source: Path, chosen: str, record: dict) -> list[classroom.Room]:
    """The room for seats on this host and every host of LABKIT_HOME/config.yaml, less what the
    seats placed there and not yet up will take."""
    found = []
    for uri in [libvirt.LOCAL, *dict.fromkeys(home.hosts().values())]:
        if libvirt.virsh(uri, "version").returncode != 0:
            found.append(classroom.Room(uri, 0, 1, 1, "its libvirt does not answer"))
            continue
        booked = target.target_for(source, chosen, Provider.libvirt, Accel.auto, None, uri)
        need = host.memory_needed(lab, booked)
        pending = sum(need for s in record["seats"].values() if s["host"] == uri and s["state"] != "up")
        found.append(classroom.Room(uri, host.available_memory_mib(uri) - pending, need, classroom.cores(uri)))
    return found


def _seat_up(student: str, lab: Lab, source: Path, chosen: str) -> None:
    """Boot, guard, provision and snapshot one seat, then open its way in; what happened goes to
    the seat's log."""
    record = classroom.need()
    s = record["seats"][student]
    copy, uri = classroom.copy_of(student), s["host"]
    log = classroom.folder(student) / "up.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    if s["state"] != "up":
        key = classroom.student_key(student)
        booked = target.target_for(source, chosen, Provider.libvirt, Accel.auto, copy, uri)
        booked = dataclasses.replace(booked, student_key=classroom.public(key))
        again = target.up_command(str(source), chosen, None, copy, None if libvirt.is_local(uri) else uri)
        _update(student, state="booting", error=None)
        with log.open("a") as said, lock.changing(copy, "up", up=again):

            def progress(node: str, message: str) -> None:
                said.write(f"{node}: {message}\n")
                said.flush()

            running = booking.boot(lab, source, booked, progress, lambda line: progress("repaired", line))
            classroom.guard(uri, copy)
            with running:
                running.provision(on_done=lambda r: progress(r.node, r.error or f"{len(r.changed)} changed"))
                running.snapshot()
    running = RunningLab(home.lab_dir(copy))
    if not classroom.relay_alive(uri, s.get("relay")):
        classroom.guard(uri, copy)  # a host restarted since forgets both
        addresses = classroom.vm_addresses(running.ssh_config)
        pid = classroom.start_relay(uri, record["listen"], s["ports"], addresses)
        _update(student, relay=pid)
    _update(student, state="up", error=None)


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
    record = classroom.load() or {"lab": model.name, "listen": listen, "port_base": port, "seats": {}}
    if record["lab"] != model.name:
        raise LabkitError(f"the class runs the lab {record['lab']}, not {model.name}: labkit class down first")
    chosen = box.DEFAULT_BOX
    placed = {student: s["host"] for student, s in record["seats"].items()}
    rooms = _rooms(model, source, chosen, record)
    where = classroom.place(names, rooms, placed)
    for student in names:
        if student not in record["seats"]:
            record["seats"][student] = {
                "host": where[student],
                "state": "placed",
                "ports": classroom.ports(record, model),
            }
    classroom.save(record)
    todo = names  # a seat that is up is left alone but for its way in, started again if it stopped
    started = time.monotonic()
    by_host = {r.uri: [s for s in todo if record["seats"][s]["host"] == r.uri] for r in rooms}
    cores = {r.uri: r.cores for r in rooms}
    for uri, seats in by_host.items():
        if seats:
            say(f"{libvirt.shown(uri)}: {', '.join(seats)}")

    def one(student: str) -> None:
        began = time.monotonic()
        try:
            _seat_up(student, model, source, chosen)
        except Exception as exc:  # one seat's failure is said and the others go on
            _update(student, state="failed", error=str(exc).splitlines()[0] if str(exc) else repr(exc))
            say(f"{student}: failed after {time.monotonic() - began:.0f} s: {exc}")
        else:
            say(f"{student}: up in {time.monotonic() - began:.0f} s")

    def boot_host(uri: str) -> None:
        for wave in classroom.waves(by_host[uri], cores[uri], model):
            with ThreadPoolExecutor(max_workers=len(wave)) as pool:
                list(pool.map(one, wave))

    again = f"labkit class up {lab} --students {students}"
    with lock.writing("class", "class up", f"the class is partly up. Continue with: {again}"):
        with ThreadPoolExecutor(max_workers=max(1, len(by_host))) as pool:
            list(pool.map(boot_host, by_host))
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


def _states(record: dict) -> dict[str, str]:
    model = labfile.read_lab(record["lab"])
    held = {uri: libvirt.domains(uri) for uri in {s["host"] for s in record["seats"].values()}}
    return {student: classroom.state_of(student, s, model, held[s["host"]]) for student, s in record["seats"].items()}


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
        table = classroom.rows(record, _states(record))
        if html is None or once:
            for line in columns(table, out.width, droppable=("last checked", "host"))[0]:
                say(line)
        if html is not None:
            html.write_text(classroom.page(record, table, 0 if once else every))
        if html is None or once:
            return
        time.sleep(every)


def _running(student: str) -> RunningLab:
    record = classroom.need()
    s = classroom.seat(record, student)
    copy = classroom.copy_of(student)
    if s["state"] != "up" or copy not in RunningLab.names():
        raise LabkitError(
            f"{student}'s seat is {s['state']}, not up. Continue it with: labkit class up {record['lab']} --students ..."
        )
    return RunningLab(home.lab_dir(copy))


@app.command("reset")
@handled
def reset(student: SomeStudent = None) -> None:
    """Put a seat (or every seat) back as class up left it, in seconds (libvirt snapshots); its exercise is gone.

    Example: labkit class reset ana"""
    record = classroom.need()
    for name in classroom.chosen(record, student):
        started = time.monotonic()
        with _running(name) as running, lock.changing(running.name, "reset"):
            running.reset()
        _update(name, exercise=None, checks=None, checked=None)
        say(f"{name} reset in {time.monotonic() - started:.0f} s")


@app.command("down")
@handled
def down(student: SomeStudent = None) -> None:
    """Remove a seat (or the whole class): its VMs, volumes and networks, its way in, its guard, its keys.

    Example: labkit class down"""
    record = classroom.need()
    model = labfile.read_lab(record["lab"])
    for name in classroom.chosen(record, student):
        s = record["seats"][name]
        copy, uri = classroom.copy_of(name), s["host"]
        classroom.stop_relay(uri, s.get("relay"))
        if copy in RunningLab.names():
            with lock.changing(copy, "down"):
                RunningLab(home.lab_dir(copy)).destroy()
        else:
            left = leftovers.remove_all(copy, model, uri)
            if left:
                raise LabkitError(f"{name}: these could not be removed: {', '.join(left)}")
        classroom.unguard(uri, copy)
        shutil.rmtree(classroom.folder(name), ignore_errors=True)
        with _saving:
            record = classroom.need()
            del record["seats"][name]
            classroom.save(record)
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
    with _running(student) as running, lock.changing(running.name, "fail"):
        fault = faults.exercise(name, running.lab)
        for words in fault.commands:
            running.run(fault.node, ["sudo", "-n", *words])
    _update(student, exercise=fault.name, checks="not checked", checked=None)
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
    running = _running(student)
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "checks.xml"
        args = ["-q", "-m", "not failover", "-k", classroom.selection(fault.catches), f"--junitxml={report}"]
        code = run.verify(running.folder, running.ssh_config, args)
        if not report.exists():
            raise LabkitError(f"the checks of {student}'s copy did not run (pytest exit {code})")
        passed, total = classroom.grade(report.read_text(), fault.catches)
    _update(student, checks=f"{passed}/{total}", checked=classroom.now())
    if total and passed == total:
        say(f"{student}: {fault.name} fixed, {passed}/{total} checks pass.")
        say(f"Why: {fault.explanation}")
        return
    say(f"{student}: {fault.name} not fixed yet, {passed}/{total} checks pass.")
    raise typer.Exit(1)
