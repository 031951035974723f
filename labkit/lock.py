"""One writer per lab, and a clean stop: every command that changes a lab holds its lock while
it runs, and an interrupt (Ctrl-C, SIGTERM, SIGHUP) stops it and everything it started.

The lock is an flock on a file under LABKIT_HOME/locks, so the kernel releases it when the
holder dies, however it dies: a lock left by a dead process is simply free again. The file
says who holds it, for the error the next writer gets.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path

from labkit import home
from labkit.errors import LabkitError


class Busy(LabkitError):
    """Another labkit command is changing the lab."""


SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def writing(lab: str, command: str, then: str) -> Iterator[None]:
    """Hold the lab's lock for `command`, or fail at once naming the command that holds it.
    Interrupted, stop every process the command started and say `then`: the state the lab
    is left in and the command that continues or removes it."""
    path = home.home() / "locks" / f"{lab}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            raise Busy(
                f"the lab {lab} is busy: `labkit {holder.get('command', '?')}` (process {holder.get('pid', '?')}) "
                f"is changing it. Wait for it to finish, or stop it (kill {holder.get('pid', 'PID')})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"command": command, "pid": os.getpid()}).encode(), 0)

        def stop(signum: int, frame) -> None:
            stop_children()
            sys.stderr.write(f"interrupted ({signal.Signals(signum).name}): {then}\n")
            os._exit(128 + signum)  # the lock and the SSH connections close with the process

        # only the main thread may set handlers; a class boots its seats in threads under its own
        main = threading.current_thread() is threading.main_thread()
        previous = {sig: signal.signal(sig, stop) for sig in SIGNALS} if main else {}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        os.close(fd)  # releases the flock


# What an interrupted command leaves a lab in, and the command that goes on from there.
LEFT = {
    "up": "{name} is partly up. Continue with: {up}; or remove what was made: labkit down {name}",
    "provision": "{name}'s nodes may be partly configured. Finish with: labkit provision {name}",
    "weight": "{name}'s directors may be partly reconfigured. Finish with: labkit provision {name}",
    "verify": "a failure scenario may have left {name} broken. Bring it back with: labkit heal {name}",
    "fail": "{name} may be broken (the load on the client stopped with labkit). Bring it back with: labkit heal {name}",
    "heal": "{name} may be partly healed. Finish with: labkit heal {name}",
    "down": "{name} is partly removed. Finish with: labkit down {name}",
    "snapshot": "{name}'s snapshot may be partial. Take it again with: labkit snapshot {name}",
    "reset": "{name} may be partly reset. Reset it again with: labkit reset {name}",
    "stop": "{name} may be partly stopped. Stop the rest with: labkit stop {name}; or resume it with: labkit up {name}",
}


def changing(lab: str, command: str, **words: str) -> AbstractContextManager[None]:
    """writing() for one of labkit's commands, saying what LEFT says it leaves when interrupted;
    `words` fill LEFT's other blanks (up's: the command that continues it)."""
    return writing(lab, command, LEFT[command].format(name=lab, **words))


@contextmanager
def exclusive(name: str) -> Iterator[None]:
    """A short section that one labkit command of this installation runs at a time; the others
    wait for it (booking a new lab's share of a host)."""
    path = home.home() / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def children(pid: int) -> list[int]:
    """Every process started by `pid`, its children's children included."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after its last ')'
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop_children(grace: float = 5.0, folder: Path | None = None) -> None:
    """SIGTERM every process this one started (Vagrant's Ruby and what it runs, pytest, ssh),
    then SIGKILL those still there after `grace` seconds. With `folder`, only those working in it
    (one lab's Vagrant: a class boots its seats in one process)."""
    started = children(os.getpid())
    if folder is not None:
        started = [pid for pid in started if _cwd(pid) == folder.resolve()]
    for pid in started:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_running(pid) for pid in started):
        if folder is None:
            with suppress(ChildProcessError):
                os.waitpid(-1, os.WNOHANG)  # reap our own children, or they stay as zombies
        time.sleep(0.1)
    for pid in started:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}


def _cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def _running(pid: int) -> bool:
    """Whether the process is there and not a zombie (one its parent has yet to reap)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] != "Z"
