"""Vagrant, through python-vagrant: boot, report, pause, tear down. A thin shell around the tool.

The lab folder holds the rendered Vagrantfile and Vagrant's `.vagrant/`; nothing else keeps
track of the machines.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path

import vagrant

from labkit import home
from labkit.boot import libvirt
from labkit.errors import LabkitError
from labkit.render.vagrantfile import Provider


class BootError(LabkitError):
    """Vagrant failed; the message says where to look."""


def kvm_usable() -> str | None:
    """None when KVM can run guests here, else the reason it cannot.

    /dev/kvm alone proves little: inside some VMs it exists but guests hang, because the CPU
    does not offer hardware virtualization to this machine (no vmx/svm flag).
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is missing or not accessible"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "cannot read /proc/cpuinfo"
    if not re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.M):
        return "the CPU offers no hardware virtualization (no vmx/svm flag)"
    return None


class Accel(str, Enum):
    auto = "auto"
    kvm = "kvm"
    tcg = "tcg"


def driver(provider: Provider, accel: Accel, uri: str = libvirt.LOCAL) -> tuple[str, str | None]:
    """libvirt's domain type for the lab, kvm or qemu (software emulation), and, when auto
    fell back to emulation, why. Another host's libvirt says what that host can run."""
    if provider != Provider.libvirt:
        return "kvm", None
    if accel != Accel.auto:
        return ("qemu" if accel == Accel.tcg else "kvm"), None
    reason = kvm_usable() if libvirt.is_local(uri) else libvirt.kvm_problem(uri)
    return ("qemu", reason) if reason else ("kvm", None)


def machine(lab_dir: Path) -> vagrant.Vagrant:
    env = dict(os.environ)
    env.setdefault("VAGRANT_CHECKPOINT_DISABLE", "1")  # no update check on every call
    log = lab_dir / "vagrant.log"
    return vagrant.Vagrant(
        root=str(lab_dir), env=env, quiet_stdout=True, out_cm=lambda: log.open("a"), err_cm=lambda: log.open("a")
    )


NODE_LINE = re.compile(r"^==> (\S+): (.*)$")


def up(lab_dir: Path, provider: Provider, on_progress: Callable[[str, str], None]) -> None:
    """`vagrant up`, all nodes at once; on_progress(node, message) for each line Vagrant prints."""
    log = lab_dir / "vagrant.log"
    try:
        with log.open("a") as out:
            for line in _stream(machine(lab_dir).up(provider=provider.value, stream_output=True)):
                out.write(line + "\n")
                out.flush()
                if m := NODE_LINE.match(line):
                    on_progress(m[1], m[2])
    except subprocess.CalledProcessError:
        raise BootError(f"vagrant up failed. Its last lines (all in {log}):\n{_tail(log)}") from None


def _tail(log: Path, lines: int = 12) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stream(lines: Iterator[str | bytes]) -> Iterator[str]:
    for line in lines:
        yield (line.decode(errors="replace") if isinstance(line, bytes) else line).rstrip("\n")


def status(lab_dir: Path) -> dict[str, str]:
    """Node -> Vagrant's state ("running", "shutoff", "not_created", ...)."""
    if not (lab_dir / "Vagrantfile").exists():
        return {}
    return {s.name: s.state for s in _vagrant(lab_dir, "status")}


def freeze(lab_dir: Path, node: str) -> None:
    """Pause a node's VM: it stops dead, as a crashed machine does, without a word to its peers."""
    _vagrant(lab_dir, "suspend", node)


def thaw(lab_dir: Path, node: str) -> None:
    _vagrant(lab_dir, "resume", node)


def _vagrant(lab_dir: Path, action: str, node: str | None = None):
    """One python-vagrant call; a failure names the action and shows the end of the log."""
    try:
        return getattr(machine(lab_dir), action)(vm_name=node)
    except (subprocess.CalledProcessError, OSError):
        raise BootError(
            f"vagrant {action.replace('_', '-')} {node or ''} failed in {lab_dir}:\n{_tail(lab_dir / 'vagrant.log')}"
        ) from None


SSH_CONFIG = "ssh_config"  # in the lab folder: Vagrant's SSH settings, or labkit's from the leases


def ssh_config(lab_dir: Path, refresh: bool = False) -> Path:
    """Vagrant's SSH settings for every node, in a file that ssh, fabric and testinfra read.

    `vagrant ssh-config` takes seconds of Ruby per call (close to a minute while the VMs keep
    the CPUs busy), so it is asked once per boot: `up` refreshes the file, the rest reuse it.
    """
    path = lab_dir / SSH_CONFIG
    if refresh or not path.exists():
        path.write_text(_vagrant(lab_dir, "ssh_config"))
    return path


def destroy(lab_dir: Path) -> None:
    """Remove every VM, volume and network Vagrant knows of the lab."""
    if (lab_dir / "Vagrantfile").exists():
        _vagrant(lab_dir, "destroy")


def machine_index() -> Path:
    """Vagrant's index of the machines it made, wherever they are: what `vagrant global-status` lists."""
    return home.vagrant_home() / "data" / "machine-index" / "index"


def forget(lab_dir: Path) -> None:
    """Take the lab's machines out of Vagrant's index, as Vagrant's destroy does, once labkit
    removed them itself. Under Vagrant's lock on the index; an index labkit cannot read is left
    as it is."""
    index = machine_index()
    if not index.exists():
        return
    with open(index.with_name("index.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data = json.loads(index.read_text())
            machines = data["machines"]
        except (OSError, ValueError, KeyError, TypeError):
            return
        kept = {uuid: m for uuid, m in machines.items() if m.get("vagrantfile_path") != str(lab_dir)}
        if len(kept) < len(machines):
            data["machines"] = kept
            written = index.with_name("index.labkit")
            written.write_text(json.dumps(data))
            written.replace(index)
