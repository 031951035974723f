"""Probes of the host: is everything a lab needs there, and if not, the command that fixes it."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from labkit import box, home
from labkit.boot import libvirt
from labkit.boot.vagrant import kvm_usable
from labkit.errors import LabkitError
from labkit.labfile import load_lab
from labkit.render.vagrantfile import TCG_EMULATOR, Provider
from labkit.running import RunningLab


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


def probes(
    provider: Provider = Provider.libvirt,
    box_name: str = box.DEFAULT_BOX,
    thorough: bool = True,
    uri: str = libvirt.LOCAL,
) -> list[Probe]:
    """Everything `labkit doctor` checks. thorough=False (before every `up`) skips the probes
    that cost seconds of Vagrant's Ruby start-up; vagrant itself reports those failures. With
    another host's `uri`, its libvirt is probed instead of this host's."""
    found: list[Probe] = []
    has_vagrant = shutil.which("vagrant") is not None
    found.append(Probe("vagrant is installed", has_vagrant, "apt-get install vagrant (or scripts/setup)"))
    if provider == Provider.libvirt:
        if thorough and has_vagrant:
            plugins = subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True).stdout
            found.append(
                Probe(
                    "the vagrant-libvirt plugin is installed",
                    "vagrant-libvirt" in plugins,
                    "apt-get install vagrant-libvirt",
                )
            )
        if libvirt.is_local(uri):
            found.append(
                Probe(
                    "QEMU is installed",
                    shutil.which("qemu-system-x86_64") is not None,
                    "apt-get install qemu-system-x86 qemu-utils",
                )
            )
            found.append(
                Probe(
                    "libvirtd answers on qemu:///system",
                    _answers(["virsh", "-c", "qemu:///system", "version"]),
                    "start it: systemctl start libvirtd (no init system: virtlogd -d && libvirtd -d)",
                )
            )
            reason = kvm_usable()
            found.append(
                Probe(
                    "KVM can run guests" + (f" ({reason})" if reason else ""),
                    reason is None,
                    "labs run under QEMU software emulation instead: correct but several times slower",
                    fatal=False,
                )
            )
        else:
            found += remote_probes(uri, thorough)
    else:
        found.append(
            Probe(
                "VirtualBox is installed",
                shutil.which("VBoxManage") is not None,
                "install VirtualBox from your distribution or virtualbox.org",
            )
        )
    if box.is_labkit_box(box_name) and provider != Provider.libvirt:
        found.append(
            Probe(
                f"the box {box_name} can boot under {provider.value}",
                False,
                f"{box_name} is built for libvirt only: name a {provider.value} box with --box "
                "(e.g. debian/bookworm64)",
            )
        )
    elif box.is_labkit_box(box_name):
        # The metadata inside an installed box proves both that it is there and how it takes its key.
        found.append(
            Probe(
                f"the box {box_name} is in Vagrant, takes the SSH key at boot and has the packages the labs use",
                box.why_outdated(box_name) is None,
                "labkit box build, with --kernel SPEC for a kernel's box (it also rebuilds a box with "
                "a key built in or an older package list), or labkit box import FILE",
            )
        )
    elif has_vagrant:
        found.append(
            Probe(f"the box {box_name} is in Vagrant", box.box_exists(box_name), f"vagrant box add {box_name}")
        )
    found.append(Probe("an ssh client is installed", shutil.which("ssh") is not None, "apt-get install openssh-client"))
    if thorough and provider == Provider.libvirt:
        stray = leftovers(uri)
        found.append(
            Probe(
                "libvirt holds nothing of labs that are gone" + (f" (it holds {', '.join(stray)})" if stray else ""),
                not stray,
                "labkit down LAB --leftovers for each lab named there, labkit down LAB --as NAME "
                "--leftovers for a copy (it removes them by name)",
                fatal=False,
            )
        )
        found += [_whole(running) for running in RunningLab.all() if running.uri == uri and running.on_libvirt]
    return found


def _whole(running: RunningLab) -> Probe:
    problems = running.problems()
    return Probe(
        f"the lab {running.name} is whole (its VMs, networks, NICs, disks and box)",
        not problems,
        "; ".join(problems),
        fatal=False,
    )


def remote_probes(uri: str, thorough: bool) -> list[Probe]:
    """Another libvirt host: its libvirt answers through SSH, SSH forwards to its VMs (Vagrant's and
    labkit's path to them), it has a storage pool, and how fast its guests will run."""
    answers = libvirt.virsh(uri, "version")
    found = [
        Probe(
            f"libvirtd answers on {uri}",
            answers.returncode == 0,
            f"{answers.stderr.strip()[-200:] or 'no answer'}. `ssh` to that host must work without a "
            "password (ssh-copy-id), its user must be in group libvirt, and libvirtd must run there",
        )
    ]
    if answers.returncode != 0:
        return found
    found.append(
        Probe(
            f"libvirt's storage pool {libvirt.POOL} is active there",
            re.search(r"^State:\s+running$", libvirt.virsh(uri, "pool-info", libvirt.POOL).stdout, re.M) is not None,
            f"on that host: virsh pool-define-as {libvirt.POOL} dir --target /var/lib/libvirt/images && "
            f"virsh pool-build {libvirt.POOL} && virsh pool-start {libvirt.POOL} && "
            f"virsh pool-autostart {libvirt.POOL}",
        )
    )
    if not thorough:  # before `up`, which asks that host about KVM and the wrapper itself (target_for)
        return found
    found.append(
        Probe(
            "SSH to that host forwards connections to its VMs (ssh -W)",
            _forwards(uri),
            "allow TCP forwarding for this user in that host's sshd_config (AllowTcpForwarding yes)",
        )
    )
    reason = libvirt.kvm_problem(uri)
    found.append(
        Probe(
            "KVM can run guests there" + (f" ({reason})" if reason else ""),
            reason is None,
            "labs run under QEMU software emulation there: correct but several times slower",
            fatal=False,
        )
    )
    if reason:
        found.append(
            Probe(
                f"labkit's QEMU wrapper is installed there ({TCG_EMULATOR})",
                libvirt.has_emulator(uri, TCG_EMULATOR),
                f"copy labkit/render/qemu-tcg to {TCG_EMULATOR} on that host (mode 0755): without it each "
                "emulated VM takes about 1 GiB more memory",
                fatal=False,
            )
        )
    return found


def ssh_words(uri: str) -> list[str]:
    """The ssh command line that reaches the host of a qemu+ssh:// URI, as libvirt reaches it."""
    parts = urlsplit(uri)
    words = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]
    if parts.port:
        words += ["-p", str(parts.port)]
    if parts.username:
        words += ["-l", parts.username]
    keyfile = parse_qs(parts.query).get("keyfile")
    if keyfile:
        words += ["-i", keyfile[0]]
    return words + [parts.hostname or "localhost"]


def _forwards(uri: str) -> bool:
    """ssh -W from the host to its own SSH port: the greeting comes back when forwarding is allowed."""
    parts = urlsplit(uri)
    to = f"{parts.hostname or 'localhost'}:{parts.port or 22}"
    try:
        out = subprocess.run(ssh_words(uri) + ["-W", to], input=b"", capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.stdout.startswith(b"SSH-")


def leftovers(uri: str = libvirt.LOCAL) -> list[str]:
    """libvirt's labkit-* objects on the host that belong to no lab labkit has up."""
    up = {}
    for lab_yaml in home.labs_dir().glob("*/lab.yaml"):
        try:
            up[lab_yaml.parent.name] = load_lab(lab_yaml)
        except LabkitError:
            continue
    return libvirt.strays(up, libvirt.present(uri)).names()


def preflight(provider: Provider, box_name: str, uri: str = libvirt.LOCAL) -> None:
    """Before a lab is made: the probes that cost no Vagrant start-up, each failure with its fix."""
    failed = [p for p in probes(provider, box_name, thorough=False, uri=uri) if p.fatal and not p.ok]
    if failed:
        lines = "\n".join(f"  - {p.what}: no. Fix: {p.fix}" for p in failed)
        doctor = "labkit doctor" + ("" if libvirt.is_local(uri) else f" --connect {uri}")
        raise LabkitError(f"{libvirt.shown(uri)} cannot boot the lab yet:\n{lines}\n({doctor} shows every check)")
