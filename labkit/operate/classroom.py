"""A class: one copy of a lab per student (a seat), placed over the libvirt hosts labkit knows,
each student let into their own copy's VMs and nowhere else, and exercises (faults from the
catalogue) to find in it.

The class's record is one plain JSON file, LABKIT_HOME/class.json, read and written by every
class command: the lab, the address the ways in listen on, and per seat its host, state, ports,
exercise and last grade. Each seat is an ordinary copy (`class-NAME`): `labkit status`, `verify`
and `ssh` work on it as on any other.

The way in is a relay on the seat's host: one TCP port per VM, forwarded to that VM's sshd on its
management network, bound to the address the teacher names. The student needs no account on the
host, reaches nothing but port 22 of their own VMs, and only their own key opens those: each VM
trusts the installation's key (for labkit) and the seat's student key, both handed over at boot
as SMBIOS OEM strings. A relay rather than kernel NAT: DNAT from outside needs the host to
forward packets (it does not, for isolated management networks) and rules that must sit before
libvirt's own in the FORWARD chain; a relay needs neither, and stops with its process.

The guard keeps students, who are root in their VMs, off the host: on the seat's management
bridge the host accepts DHCP and replies to the connections it opened itself (SSH from labkit and
the relay), and rejects everything else, to its own services and through it to other networks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import textwrap
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from urllib.parse import urlsplit

from labkit import home, labfile, lock
from labkit.boot import booking, host, leftovers, libvirt, names, target
from labkit.boot.doctor import ssh_words
from labkit.boot.vagrant import Accel
from labkit.errors import LabkitError
from labkit.labfile import Lab
from labkit.labfile.model import HOSTNAME
from labkit.render.vagrantfile import Provider
from labkit.running import RunningLab

FILE = "class.json"
PREFIX = "class-"  # a seat's copy is named class-STUDENT
LISTEN = "127.0.0.1"  # where the ways in listen unless the teacher names an address: this host only
PORT_BASE = 22000
MAX_NAME = 20  # the copy's name ends up in libvirt's names: class-NAME-lb0


# ---- the roster -------------------------------------------------------------------------------


def roster(students: str) -> list[str]:
    """The students: N numbered seats (seat1...), or the names in a file, one a line ('#' starts
    a comment). One line on the first name that is not a plain name or is given twice."""
    if students.isdigit():
        if not 1 <= int(students) <= 200:
            raise LabkitError(f"--students {students}: give a number of seats from 1 to 200, or a file of names")
        return [f"seat{i}" for i in range(1, int(students) + 1)]
    path = Path(students)
    if not path.is_file():
        raise LabkitError(f"--students {students}: neither a number of seats nor a file of names")
    found: list[str] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        name = line.split("#")[0].strip()
        if not name:
            continue
        if not HOSTNAME.match(name) or len(name) > MAX_NAME:
            raise LabkitError(
                f"{path}:{number}: {name!r} is not a plain name: lower-case letters, digits and '-', "
                f"starting with a letter, at most {MAX_NAME} characters"
            )
        if name in found:
            raise LabkitError(f"{path}:{number}: {name} is given twice: each student has one seat")
        found.append(name)
    if not found:
        raise LabkitError(f"{path} names no student: one name a line")
    return found


def copy_of(student: str) -> str:
    return PREFIX + student


# ---- the record -------------------------------------------------------------------------------


def path() -> Path:
    return home.home() / FILE


def folder(student: str) -> Path:
    """The student's key pair and bundle sources."""
    return home.home() / "class" / student


def load() -> dict | None:
    if not path().exists():
        return None
    try:
        return json.loads(path().read_text())
    except ValueError as exc:
        raise LabkitError(f"{path()} is not a class's record ({exc}). Fix it, or remove it") from None


def need() -> dict:
    found = load()
    if found is None:
        raise LabkitError("no class is up. Start one with: labkit class up nat --students FILE")
    return found


def save(record: dict) -> None:
    path().parent.mkdir(parents=True, exist_ok=True)
    new = path().with_suffix(".new")
    new.write_text(json.dumps(record, indent=2) + "\n")
    new.replace(path())


def seat(record: dict, student: str) -> dict:
    if student not in record["seats"]:
        raise LabkitError(f"no student {student!r} in the class. Its students: {', '.join(record['seats'])}")
    return record["seats"][student]


def chosen(record: dict, student: str | None) -> list[str]:
    """The seats a command acts on: one student's, or every seat."""
    if student is None:
        return list(record["seats"])
    seat(record, student)  # one line when there is no such student
    return [student]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---- placing seats ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Room:
    uri: str
    available_mib: int
    seat_mib: int  # what one copy of the lab takes there
    cores: int
    problem: str | None = None  # why it takes no seat at all (its libvirt does not answer)

    @property
    def seats(self) -> int:
        return 0 if self.problem else max(0, self.available_mib) // self.seat_mib


def place(students: list[str], rooms: list[Room], placed: dict[str, str]) -> dict[str, str]:
    """Student -> host URI: the seats already placed stay, each new one goes to the host with room
    that holds the fewest seats (spread over the cores), the first named on a tie (this host). One
    line saying how many fit where when they do not all fit."""
    left = {r.uri: r.seats for r in rooms}
    new = [s for s in students if s not in placed]
    if len(new) > sum(left.values()):
        where = ", ".join(
            f"{r.seats} on {libvirt.shown(r.uri)}" + (f" ({r.problem})" if r.problem else "") for r in rooms
        )
        raise LabkitError(
            f"{len(new)} seats do not fit: the hosts have room for {sum(left.values())} ({where}). "
            "Take labs down, add a host to LABKIT_HOME/config.yaml, or seat fewer students"
        )
    found = dict(placed)
    held = {uri: list(found.values()).count(uri) for uri in left}
    for student in new:
        uri = min((u for u in left if left[u] > 0), key=lambda u: held[u])
        found[student] = uri
        left[uri] -= 1
        held[uri] += 1
    return found


def waves(students: list[str], cores: int, lab: Lab) -> list[list[str]]:
    """The seats of one host in the groups it boots at once: as many copies as its cores bear
    (every booting VM keeps a core busy under emulation), at least one."""
    at_once = max(1, cores // max(1, len(lab.nodes) * lab.cpus) or 1)
    return [students[i : i + at_once] for i in range(0, len(students), at_once)]


def ports(record: dict, lab: Lab) -> dict[str, int]:
    """The next free block of ports, one per node, above every seat's so far."""
    used = [p for s in record["seats"].values() for p in s.get("ports", {}).values()]
    first = max(used) + 1 if used else record["port_base"]
    return {node: first + i for i, node in enumerate(lab.nodes)}


def cores(uri: str) -> int:
    if libvirt.is_local(uri):
        return os.cpu_count() or 1
    m = re.search(r"^CPU\(s\):\s+(\d+)", libvirt.virsh(uri, "nodeinfo").stdout, re.M)
    return int(m[1]) if m else 1


# ---- commands on a seat's host ------------------------------------------------------------------


def on_host(uri: str, words: list[str], check: bool = True) -> subprocess.CompletedProcess:
    """A command on the libvirt host itself: here, or over SSH as libvirt reaches that host."""
    command = words if libvirt.is_local(uri) else [*ssh_words(uri), shlex.join(words)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise LabkitError(f"on {libvirt.shown(uri)}: {shlex.join(words)} failed: {result.stderr.strip()}")
    return result


def bridge(uri: str, network: str) -> str:
    m = re.search(r"<bridge name='([^']+)'", libvirt.virsh(uri, "net-dumpxml", network).stdout)
    if not m:
        raise LabkitError(f"libvirt on {libvirt.shown(uri)} has no bridge for the network {network}")
    return m[1]


def guard_rules(bridge_name: str, tag: str) -> list[list[str]]:
    """iptables rules (after `iptables`) that let a seat's VMs ask the host for DHCP and answer
    the host's own connections, and nothing else: inserted first, in reverse, so they end in this
    order at the top of INPUT and FORWARD, before libvirt's."""
    mark = ["-m", "comment", "--comment", tag]
    return [
        ["-I", "INPUT", "-i", bridge_name, "-p", "udp", "--dport", "67", *mark, "-j", "ACCEPT"],
        [
            "-I",
            "INPUT",
            "-i",
            bridge_name,
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED,RELATED",
            *mark,
            "-j",
            "ACCEPT",
        ],
        ["-I", "INPUT", "-i", bridge_name, *mark, "-j", "REJECT"],
        ["-I", "FORWARD", "-i", bridge_name, *mark, "-j", "REJECT"],
    ]


def guard_tag(copy: str) -> str:
    return f"labkit-guard:{copy}"


def guard(uri: str, copy: str) -> None:
    unguard(uri, copy)  # once, however often the class is continued
    for rule in reversed(guard_rules(bridge(uri, names.management(copy)), guard_tag(copy))):
        on_host(uri, ["iptables", "-w", *rule])


def guarded(uri: str, copy: str) -> list[str]:
    """The guard's rules in place on the host, as iptables -S lists them."""
    listed = on_host(uri, ["iptables", "-w", "-S"], check=False).stdout.splitlines()
    return [line for line in listed if f'"{guard_tag(copy)}"' in line or f" {guard_tag(copy)} " in line + " "]


def unguard(uri: str, copy: str) -> None:
    for line in guarded(uri, copy):
        words = shlex.split(line)
        on_host(uri, ["iptables", "-w", "-D", *words[1:]], check=False)


# A relay: one listening port per VM, each connection joined to that VM's port 22. Python's
# standard library only, so any host with python3 runs it; it is sent along with the command.
RELAY = r"""
import asyncio, sys
listen = sys.argv[1]
pairs = [a.split("=") for a in sys.argv[2:]]
async def pipe(r, w):
    try:
        while data := await r.read(65536):
            w.write(data); await w.drain()
    except Exception: pass
    finally: w.close()
def joined(ip):
    async def serve(r1, w1):
        try: r2, w2 = await asyncio.open_connection(ip, 22)
        except OSError: w1.close(); return
        await asyncio.gather(pipe(r1, w2), pipe(r2, w1))
    return serve
async def main():
    servers = [await asyncio.start_server(joined(ip), listen, int(port)) for port, ip in pairs]
    await asyncio.gather(*(s.serve_forever() for s in servers))
asyncio.run(main())
"""


def vm_addresses(ssh_config: Path) -> dict[str, str]:
    """Node -> its management address, from the lab's ssh_config (labkit's, or Vagrant's)."""
    found, host = {}, None
    for line in ssh_config.read_text().splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "Host":
            host = words[1]
        elif len(words) == 2 and words[0] == "HostName" and host:
            found[host] = words[1]
    return found


def relay_alive(uri: str, pid: int | None) -> bool:
    if not pid:
        return False
    state = on_host(uri, ["ps", "-o", "stat=", "-p", str(pid)], check=False).stdout.strip()
    return bool(state) and not state.startswith("Z")  # a zombie has let go of its ports


def start_relay(uri: str, listen: str, ports_of: dict[str, int], addresses: dict[str, str]) -> int:
    """Start the seat's relay on its host, detached; its process id."""
    args = [f"{ports_of[node]}={addresses[node]}" for node in ports_of]
    words = ["sh", "-c", 'nohup python3 -c "$0" "$@" >/dev/null 2>&1 </dev/null & echo $!', RELAY, listen, *args]
    pid = int(on_host(uri, words).stdout.split()[-1])
    time.sleep(1)
    if not relay_alive(uri, pid):
        raise LabkitError(
            f"the way in on {libvirt.shown(uri)} did not start: ports {min(ports_of.values())}-"
            f"{max(ports_of.values())} on {listen} may be taken (labkit class up --port another)"
        )
    return pid


def stop_relay(uri: str, pid: int | None) -> None:
    if relay_alive(uri, pid):
        on_host(uri, ["kill", str(pid)], check=False)
        for _ in range(20):
            if not relay_alive(uri, pid):
                return
            time.sleep(0.25)


# ---- a student's key and bundle ----------------------------------------------------------------


def student_key(student: str) -> Path:
    """The student's key pair, made once: their VMs trust its public half."""
    key = folder(student) / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"labkit-class-{student}", "-f", str(key)], check=True
        )
    return key


def public(key: Path) -> str:
    return " ".join(key.with_suffix(".pub").read_text().split()[:2])


def address_of(listen: str, uri: str) -> str:
    """The address a student's ssh is given: the one the relay listens on, or, when it listens on
    every address, the host's name."""
    if listen not in ("0.0.0.0", "::"):
        return listen
    return urlsplit(uri).hostname if not libvirt.is_local(uri) else os.uname().nodename


def ssh_config(address: str, ports_of: dict[str, int]) -> str:
    """The student's ssh_config: read from the bundle's folder (ssh -F ssh_config lb0)."""
    blocks = [
        textwrap.dedent(f"""\
            Host {node}
              HostName {address}
              Port {port}
              User vagrant
              IdentityFile id_ed25519
              IdentitiesOnly yes
              UserKnownHostsFile known_hosts
              StrictHostKeyChecking accept-new
            """)
        for node, port in ports_of.items()
    ]
    return "# Your seat's VMs: run ssh from this folder, e.g. ssh -F ssh_config lb0\n\n" + "\n".join(blocks)


def readme(student: str, lab: Lab, nodes: list[str]) -> str:
    vip = lab.services[0].vip if lab.services else None
    first = lab.directors[0] if lab.directors else nodes[0]
    lines = [
        f"Your seat, {student}: a copy of the lab {lab.name}, {lab.description}.",
        f"The picture: {lab.name}.svg. Your VMs: {', '.join(nodes)}; you are root on each (sudo).",
        "",
        "From this folder (chmod 600 id_ed25519 first, if it was copied):",
        "",
        f"  ssh -F ssh_config {first}",
        f"  ssh -F ssh_config {first} sudo ipvsadm -L -n",
    ]
    if vip is not None and lab.clients:
        lines.append(f"  ssh -F ssh_config {lab.clients[0]} curl -s http://{vip}/")
    lines += ["", "Your teacher sees when your exercise's checks pass: labkit exercise check " + student]
    return "\n".join(lines) + "\n"


# ---- the teacher's view ------------------------------------------------------------------------


def rows(record: dict, states: dict[str, str]) -> list[tuple[str, ...]]:
    """The status table: a heading, then one row per seat."""
    found = [("student", "host", "state", "exercise", "checks passed", "last checked")]
    for student, s in record["seats"].items():
        found.append(
            (
                student,
                libvirt.shown(s["host"]),
                states.get(student, s["state"]),
                s.get("exercise") or "-",
                s.get("checks") or "-",
                (s.get("checked") or "-").replace("T", " ").replace("+00:00", " UTC"),
            )
        )
    return found


def grade(junit_xml: str, checks: tuple[str, ...]) -> tuple[int, int]:
    """(passed, total) of exactly these checks in a JUnit XML report: a -k selection may have run
    a few more (test_split[...:80] also selects ...:8080)."""
    wanted = {c.split("::")[-1] for c in checks}
    found = [case for case in ET.fromstring(junit_xml).iter("testcase") if case.get("name") in wanted]
    failed = [case for case in found if case.find("failure") is not None or case.find("error") is not None]
    return len(found) - len(failed), len(wanted)


def state_of(student: str, record_seat: dict, lab: Lab, domains: dict | None) -> str:
    """A seat's state as libvirt sees it now, or as the record has it while it is not up."""
    if record_seat["state"] != "up" or domains is None:
        return record_seat["state"]
    states = [domains[d].state if d in domains else "missing" for d in names.domains(copy_of(student), lab.nodes)]
    running = states.count("running")
    return "up" if running == len(states) else f"{running}/{len(states)} running"


def selection(checks: tuple[str, ...]) -> str:
    """A pytest -k expression selecting these checks ("test_lab.py::test_x[rs0]" -> "(test_x and rs0)")."""
    return " or ".join(
        "(" + " and ".join(filter(None, [c.split("::")[-1].split("[")[0], c.partition("[")[2].rstrip("]")])) + ")"
        for c in checks
    )


def page(record: dict, table: list[tuple[str, ...]], every: int) -> str:
    """The teacher's page: the status table, reloading itself every `every` seconds. Nothing
    loaded from elsewhere (a projector's machine may be offline)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in table[0])
    body = []
    for row in table[1:]:
        passed = row[4]
        kind = (
            "ok" if "/" in passed and passed.split("/")[0] == passed.split("/")[1] else "todo" if "/" in passed else ""
        )
        cells = "".join(f"<td>{escape(c)}</td>" for c in row)
        body.append(f'<tr class="{kind}" data-student="{escape(row[0])}">{cells}</tr>')
    refresh = f'<meta http-equiv="refresh" content="{every}">' if every else ""
    return textwrap.dedent(f"""\
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8">{refresh}
        <title>labkit class: {escape(record["lab"])}</title>
        <style>
        body {{ font: 20px system-ui, sans-serif; margin: 2em; }}
        table {{ border-collapse: collapse; }} th, td {{ padding: .4em 1em; border-bottom: 1px solid #ccc; text-align: left; }}
        tr.ok td {{ background: #d8f5d8; }} tr.todo td {{ background: #fbe3c8; }}
        </style></head><body>
        <h1>Class on the lab {escape(record["lab"])}</h1>
        <p>{len(table) - 1} seats; written {escape(now().replace("T", " "))} UTC.</p>
        <table><thead><tr>{head}</tr></thead><tbody>
        {"".join(body)}
        </tbody></table></body></html>
        """)


# ---- a seat's lifecycle ------------------------------------------------------------------------

_saving = threading.Lock()


def update(student: str, **fields) -> dict:
    """Change one seat in the class's record; seats boot at once, so read, change and write under a lock."""
    with _saving:
        record = need()
        record["seats"][student].update(fields)
        save(record)
        return record


def rooms(lab: Lab, source: Path, chosen: str, record: dict) -> list[Room]:
    """The room for seats on this host and every host of LABKIT_HOME/config.yaml, less what the
    seats placed there and not yet up will take."""
    found = []
    for uri in [libvirt.LOCAL, *dict.fromkeys(home.hosts().values())]:
        if libvirt.virsh(uri, "version").returncode != 0:
            found.append(Room(uri, 0, 1, 1, "its libvirt does not answer"))
            continue
        booked = target.target_for(source, chosen, Provider.libvirt, Accel.auto, None, uri)
        seat_mib = host.memory_needed(lab, booked)
        pending = sum(seat_mib for s in record["seats"].values() if s["host"] == uri and s["state"] != "up")
        found.append(Room(uri, host.available_memory_mib(uri) - pending, seat_mib, cores(uri)))
    return found


def seat_up(student: str, lab: Lab, source: Path, chosen: str) -> None:
    """Boot, guard, provision and snapshot one seat, then open its way in; what happened goes to
    the seat's log."""
    record = need()
    s = record["seats"][student]
    copy, uri = copy_of(student), s["host"]
    log = folder(student) / "up.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    if s["state"] != "up":
        key = student_key(student)
        booked = target.target_for(source, chosen, Provider.libvirt, Accel.auto, copy, uri)
        booked = dataclasses.replace(booked, student_key=public(key))
        again = target.up_command(str(source), chosen, None, copy, None if libvirt.is_local(uri) else uri)
        update(student, state="booting", error=None)
        with log.open("a") as said, lock.changing(copy, "up", up=again):

            def progress(node: str, message: str) -> None:
                said.write(f"{node}: {message}\n")
                said.flush()

            booted, _ = booking.boot(
                lab,
                source,
                booked,
                progress,
                lambda line: progress("repaired", line),
                lambda r: progress(r.node, r.error or f"{len(r.changed)} changed"),
            )
            guard(uri, copy)
            with booted:
                booted.snapshot()
    if not relay_alive(uri, s.get("relay")):
        guard(uri, copy)  # a host restarted since forgets both
        addresses = vm_addresses(RunningLab(home.lab_dir(copy)).ssh_config)
        pid = start_relay(uri, record["listen"], s["ports"], addresses)
        update(student, relay=pid)
    update(student, state="up", error=None)


def placed(students: list[str], lab: Lab, source: Path, chosen: str, listen: str, port_base: int) -> list[Room]:
    """Give each new student a seat on a host with room (place), in the class's record (made
    here for a new class); the rooms the hosts had."""
    record = load() or {"lab": lab.name, "listen": listen, "port_base": port_base, "seats": {}}
    if record["lab"] != lab.name:
        raise LabkitError(f"the class runs the lab {record['lab']}, not {lab.name}: labkit class down first")
    found = rooms(lab, source, chosen, record)
    where = place(students, found, {student: s["host"] for student, s in record["seats"].items()})
    for student in students:
        if student not in record["seats"]:
            record["seats"][student] = {"host": where[student], "state": "placed", "ports": ports(record, lab)}
    save(record)
    return found


def boot_seats(
    students: list[str], lab: Lab, source: Path, chosen: str, found: list[Room], tell: Callable[[str], None]
) -> None:
    """Bring every seat up (seat_up), each host's in the waves its cores bear, the hosts at once;
    a seat that fails is recorded and told, and the others go on. A seat that is up is left alone
    but for its way in, started again if it stopped."""
    record = need()
    by_host = {r.uri: [s for s in students if record["seats"][s]["host"] == r.uri] for r in found}
    cores_of = {r.uri: r.cores for r in found}
    for uri, seats in by_host.items():
        if seats:
            tell(f"{libvirt.shown(uri)}: {', '.join(seats)}")

    def one(student: str) -> None:
        began = time.monotonic()
        try:
            seat_up(student, lab, source, chosen)
        except Exception as exc:  # one seat's failure is said and the others go on
            update(student, state="failed", error=str(exc).splitlines()[0] if str(exc) else repr(exc))
            tell(f"{student}: failed after {time.monotonic() - began:.0f} s: {exc}")
        else:
            tell(f"{student}: up in {time.monotonic() - began:.0f} s")

    def boot_host(uri: str) -> None:
        for wave in waves(by_host[uri], cores_of[uri], lab):
            with ThreadPoolExecutor(max_workers=len(wave)) as pool:
                list(pool.map(one, wave))

    with ThreadPoolExecutor(max_workers=max(1, len(by_host))) as pool:
        list(pool.map(boot_host, by_host))


def states(record: dict) -> dict[str, str]:
    """Each seat's state as libvirt sees it now (state_of), every host asked once."""
    model = labfile.read_lab(record["lab"])
    held = {uri: libvirt.domains(uri) for uri in {s["host"] for s in record["seats"].values()}}
    return {student: state_of(student, s, model, held[s["host"]]) for student, s in record["seats"].items()}


def running(student: str) -> RunningLab:
    """The student's copy, which must be up."""
    record = need()
    s = seat(record, student)
    copy = copy_of(student)
    if s["state"] != "up" or copy not in RunningLab.names():
        raise LabkitError(
            f"{student}'s seat is {s['state']}, not up. Continue it with: labkit class up {record['lab']} --students ..."
        )
    return RunningLab(home.lab_dir(copy))


def remove(student: str) -> dict:
    """Take a seat down: its way in, its VMs, volumes and networks, its guard, its keys, and its
    place in the record. The record as saved after."""
    record = need()
    s = seat(record, student)
    copy, uri = copy_of(student), s["host"]
    stop_relay(uri, s.get("relay"))
    if copy in RunningLab.names():
        with lock.changing(copy, "down"):
            RunningLab(home.lab_dir(copy)).destroy()
    else:
        left = leftovers.remove_all(copy, labfile.read_lab(record["lab"]), uri)
        if left:
            raise LabkitError(f"{student}: these could not be removed: {', '.join(left)}")
    unguard(uri, copy)
    shutil.rmtree(folder(student), ignore_errors=True)
    with _saving:
        record = need()
        del record["seats"][student]
        save(record)
        return record
