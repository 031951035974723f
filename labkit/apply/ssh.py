"""Commands on a node over SSH with fabric.

A node's whole plan goes as one script, run by `sudo sh -c`: one round trip per node, whatever
the number of steps. (Not on standard input: invoke feeds that a byte at a time.)
"""

from __future__ import annotations

import shlex
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

from fabric import Config, Connection
from invoke.watchers import StreamWatcher
from paramiko.ssh_exception import SSHException

from labkit.errors import LabkitError
from labkit.plan.steps import Step, script

# What a connection that broke or never opened raises.
UNREACHABLE = (OSError, EOFError, SSHException)


class Unreachable(LabkitError):
    """A node did not answer over SSH."""


@dataclass
class NodeResult:
    node: str
    changed: list[str] = field(default_factory=list)
    error: str = ""  # empty when every step succeeded
    reached: bool = True  # False when the node did not answer SSH (the error says so)


class Said(StreamWatcher):
    """Sets `event` when a command's output contains `text`: the command is ready for what comes next."""

    def __init__(self, text: str, event: threading.Event) -> None:
        super().__init__()
        self.text, self.event = text, event

    def submit(self, stream: str) -> list[str]:
        if self.text in stream:
            self.event.set()
        return []


def config(addresses: dict[str, str], key: Path) -> str:
    """An ssh_config for the nodes at these addresses, as `vagrant ssh-config` writes it for a VM
    of this host: the vagrant user, the installation's key, and no host key kept (each VM makes its
    own at first boot, and a lab's addresses are reused by the next lab)."""
    return "".join(
        f"Host {node}\n  HostName {address}\n  User vagrant\n  Port 22\n  UserKnownHostsFile /dev/null\n"
        f"  StrictHostKeyChecking no\n  PasswordAuthentication no\n  IdentityFile {key}\n  IdentitiesOnly yes\n"
        "  LogLevel FATAL\n\n"
        for node, address in addresses.items()
    )


def answers(address: str, timeout: float = 2) -> bool:
    """Whether an sshd at ADDRESS sends its greeting: the VM has booted that far, not only its kernel."""
    try:
        with socket.create_connection((address, 22), timeout=timeout) as conn:
            conn.settimeout(timeout)
            return conn.recv(4) == b"SSH-"
    except OSError:
        return False


def connect(node: str, ssh_config: Path) -> Connection:
    return Connection(node, config=Config(runtime_ssh_path=str(ssh_config)), connect_timeout=30)


def run(conn: Connection, words: list[str], watchers: list[StreamWatcher] = (), pty: bool = False) -> str:
    """A command (a list of words) on the node: its standard output. A command that fails is an
    error naming the node, the command and what it said. With a pty the command ends with its
    SSH session (a hangup), however labkit stops; its error output is then in the output."""
    try:
        out = conn.run(shlex.join(words), hide=True, warn=True, in_stream=False, watchers=list(watchers), pty=pty)
    except UNREACHABLE as exc:
        raise Unreachable(f"cannot reach {conn.original_host} over SSH: {exc}") from None
    if out.exited != 0:
        raise LabkitError(
            f"{conn.original_host}: {shlex.join(words)[:200]} failed: {(out.stderr or out.stdout).strip()[-300:]}"
        )
    return out.stdout


# A node is provisioned as soon as its sshd answers, while systemd may still be booting it: a unit
# enabled then is also started by the boot itself, and a reload right after that start reaches
# nginx before it handles SIGHUP (it dies). So the steps wait for the boot to be over (it ends
# seconds after sshd starts); "degraded" is over too.
AFTER_BOOT = "systemctl is-system-running --wait >/dev/null 2>&1 || true\n"


def apply(node: str, conn: Connection, steps: list[Step]) -> NodeResult:
    """Run the node's steps as one script, once the node's boot is over; what changed, or which
    step failed and why."""
    result = NodeResult(node)
    try:
        out = conn.run(
            shlex.join(["sudo", "-n", "sh", "-c", AFTER_BOOT + script(steps)]), hide=True, warn=True, in_stream=False
        )
    except UNREACHABLE as exc:  # unreachable or refused: name the node and the cause
        result.error, result.reached = f"cannot reach {node} over SSH: {exc}", False
        return result
    result.changed = [
        line.removeprefix("labkit-changed: ") for line in out.stdout.splitlines() if line.startswith("labkit-changed: ")
    ]
    if out.exited != 0:
        failed = [
            line.removeprefix("labkit-failed: ")
            for line in out.stderr.splitlines()
            if line.startswith("labkit-failed: ")
        ]
        detail = "\n".join(line for line in out.stderr.splitlines()[-8:] if not line.startswith("labkit-failed: "))
        result.error = f"step failed: {failed[0] if failed else '?'}\n{detail}".rstrip()
    return result
