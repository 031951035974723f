"""One writer per lab, and interrupts that stop everything a command started. Real processes
and real signals; no VM."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labkit.lock import Busy, stop_children, writing

# A writer that holds nat's lock and has started a child of its own, as `labkit up` starts Vagrant.
HOLDER = """
import subprocess, sys, time
from labkit.lock import writing
with writing("nat", "up", "nat is partly up. Continue with: labkit up nat"):
    child = subprocess.Popen(["sleep", "300"])
    print(child.pid, flush=True)
    time.sleep(300)
"""


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def holder(home):
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LABKIT_HOME": str(home)},
    )
    child = int(process.stdout.readline())
    yield process, child
    process.kill()
    process.wait()
    if Path(f"/proc/{child}").exists():
        os.kill(child, signal.SIGKILL)


def test_a_second_writer_is_told_who_holds_the_lab(holder):
    process, _ = holder
    with pytest.raises(Busy, match=rf"the lab nat is busy: `labkit up` \(process {process.pid}\) is changing it"):
        with writing("nat", "provision", ""):
            pass
    with writing("tun", "up", ""):  # another lab is free
        pass


def test_a_lock_left_by_a_dead_process_is_taken_over(holder):
    process, _ = holder
    process.kill()
    process.wait()
    with writing("nat", "down", ""):
        pass


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_an_interrupt_stops_what_the_command_started_and_says_how_to_go_on(holder, sig):
    process, child = holder
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 128 + sig
    assert f"interrupted ({sig.name}): nat is partly up. Continue with: labkit up nat" in stderr.splitlines(), stderr
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and _state(child) != "Z" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{child}").exists() or _state(child) == "Z", "the command's child outlived it"
    with writing("nat", "up", ""):  # and the lock is free again
        pass


def _state(pid: int) -> str:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return text[text.rindex(")") + 2]


def test_stopping_one_folders_processes_leaves_the_others(tmp_path):
    """A boot that gives up stops the `vagrant up` working in its lab's folder, not another
    seat's booting in the same process."""
    mine, other = tmp_path / "mine", tmp_path / "other"
    mine.mkdir()
    other.mkdir()
    sleepers = {f: subprocess.Popen(["sleep", "60"], cwd=f) for f in (mine, other)}
    try:
        stop_children(grace=2, folder=mine)
        assert sleepers[mine].wait(5) == -signal.SIGTERM
        assert sleepers[other].poll() is None, "the other folder's process was stopped too"
    finally:
        for p in sleepers.values():
            p.kill()
            p.wait()
