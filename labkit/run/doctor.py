"""Probes of the host: is everything a lab needs there, and if not, the command that fixes it."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from labkit import box, home
from labkit.build.render import Provider
from labkit.errors import LabkitError
from labkit.labfile import load_lab
from labkit.run import libvirt
from labkit.run.vagrant import kvm_usable


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


def probes(provider: Provider = Provider.libvirt, box_name: str = box.DEFAULT_BOX, thorough: bool = True) -> list[Probe]:
    """Everything `labkit doctor` checks. thorough=False (before every `up`) skips the probes
    that cost seconds of Vagrant's Ruby start-up; vagrant itself reports those failures."""
    found: list[Probe] = []
    has_vagrant = shutil.which("vagrant") is not None
    found.append(Probe("vagrant is installed", has_vagrant, "apt-get install vagrant (or scripts/setup)"))
    if provider == Provider.libvirt:
        if thorough and has_vagrant:
            plugins = subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True).stdout
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
    if box.is_labkit_box(box_name) and provider != Provider.libvirt:
        found.append(Probe(f"the box {box_name} can boot under {provider.value}", False,
                           f"{box_name} is built for libvirt only: name a {provider.value} box with --box "
                           "(e.g. debian/bookworm64)"))
    elif box.is_labkit_box(box_name):
        # The metadata inside an installed box proves both that it is there and how it takes its key.
        found.append(Probe(f"the box {box_name} is in Vagrant, takes the SSH key at boot "
                           "and has the packages the labs use",
                           box.box_takes_key_at_boot(box_name) and box.box_has_packages(box_name),
                           "labkit box build, with --kernel SPEC for a kernel's box (it also rebuilds a box with "
                           "a key built in or an older package list), or labkit box import FILE"))
    elif has_vagrant:
        found.append(Probe(f"the box {box_name} is in Vagrant", box.box_exists(box_name), f"vagrant box add {box_name}"))
    found.append(Probe("an ssh client is installed", shutil.which("ssh") is not None, "apt-get install openssh-client"))
    if thorough and provider == Provider.libvirt:
        stray = leftovers()
        found.append(Probe("libvirt holds nothing of labs that are gone" + (f" (it holds {', '.join(stray)})" if stray else ""),
                           not stray, "labkit down LAB --leftovers for each lab named there (it removes them by name)",
                           fatal=False))
    return found


def leftovers() -> list[str]:
    """libvirt's labkit-* objects that belong to no lab labkit has up."""
    up = []
    for lab_yaml in home.labs_dir().glob("*/lab.yaml"):
        try:
            up.append(load_lab(lab_yaml))
        except LabkitError:
            continue
    return libvirt.strays(up, libvirt.present()).names()


def preflight(provider: Provider, box_name: str) -> None:
    """Before a lab is made: the probes that cost no Vagrant start-up, each failure with its fix."""
    failed = [p for p in probes(provider, box_name, thorough=False) if p.fatal and not p.ok]
    if failed:
        lines = "\n".join(f"  - {p.what}: no. Fix: {p.fix}" for p in failed)
        raise LabkitError(f"this host cannot boot the lab yet:\n{lines}\n(labkit doctor shows every check)")
