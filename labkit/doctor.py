"""Probes of the host: is everything a lab needs there, and if not, the command that fixes it."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from labkit import box, paths
from labkit.boot import kvm_usable


@dataclass
class Probe:
    what: str
    ok: bool
    fix: str = ""  # the command or step that fixes it
    fatal: bool = True  # False: labs still run, only worse


def _answers(command: list[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def probes(provider: str = "libvirt", box_name: str = box.DEFAULT_BOX) -> list[Probe]:
    found: list[Probe] = []
    has_vagrant = shutil.which("vagrant") is not None
    found.append(Probe("vagrant is installed", has_vagrant, "apt-get install vagrant (or scripts/setup-host)"))
    if provider == "libvirt":
        plugins = subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True).stdout if has_vagrant else ""
        found.append(Probe("the vagrant-libvirt plugin is installed", "vagrant-libvirt" in plugins,
                           "apt-get install vagrant-libvirt"))
        found.append(Probe("QEMU is installed", shutil.which("qemu-system-x86_64") is not None,
                           "apt-get install qemu-system-x86 qemu-utils"))
        found.append(Probe("libvirtd answers on qemu:///system",
                           _answers(["virsh", "-c", "qemu:///system", "version"]),
                           "start it: systemctl start libvirtd (no init system: virtlogd -d && libvirtd -d)"))
        reason = kvm_usable()
        found.append(Probe("KVM can run guests" + (f" ({reason})" if reason else ""), reason is None,
                           "labs run under QEMU software emulation instead: correct but several times slower",
                           fatal=False))
    else:
        found.append(Probe("VirtualBox is installed", shutil.which("VBoxManage") is not None,
                           "install VirtualBox from your distribution or virtualbox.org"))
    if has_vagrant:
        exists = box.box_exists(box_name)
        fix = "labkit box build" if box_name == box.DEFAULT_BOX else f"vagrant box add {box_name}"
        found.append(Probe(f"the box {box_name} is in Vagrant", exists, fix))
        if exists and box_name == box.DEFAULT_BOX:
            found.append(Probe(f"the box {box_name} trusts this installation's SSH key",
                               box.box_trusts(box_name, paths.key().with_suffix(".pub").read_text()),
                               "labkit box build (it rebuilds a box made for another key)"))
    found.append(Probe("an ssh client is installed", shutil.which("ssh") is not None, "apt-get install openssh-client"))
    return found
