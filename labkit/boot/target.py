"""What a lab is booted as and where: the box, the copy's name, the libvirt host, and the Target
the Vagrantfile is rendered for (read from the installation's key and the host's emulator)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from pathlib import Path

from labkit import box, home, labfile
from labkit.boot import libvirt
from labkit.boot.vagrant import Accel, driver
from labkit.errors import LabkitError
from labkit.labfile.model import HOSTNAME
from labkit.render.vagrantfile import TCG_EMULATOR, Provider, Target


def box_to_boot(box_name: str, kernel: str | None) -> str:
    """The box named by --box, or the one labkit box build --kernel made for that kernel."""
    if kernel is None:
        return box_name
    if box_name != box.DEFAULT_BOX:
        raise LabkitError(f"--kernel {kernel} and --box {box_name} both choose the box: give one of them")
    return box.box_for_kernel(kernel)


def copy_name(name: str | None) -> str | None:
    """A copy's name (--as), checked: it becomes part of libvirt's names."""
    if name is not None and not HOSTNAME.match(name):
        raise LabkitError(
            f"--as {name}: a copy's name becomes part of its VMs' and networks' names. "
            "Use lower-case letters, digits and '-'"
        )
    return name


def uri_for(connect: str | None) -> str:
    """The libvirt URI of --connect (a URI, or a host named in the config file); this host's without it."""
    return libvirt.uri_for(connect, home.hosts()) if connect else libvirt.LOCAL


def target_for(
    source: Path,
    box_name: str,
    provider: Provider,
    accel: Accel,
    name: str | None = None,
    uri: str = libvirt.LOCAL,
    warn: Callable[[str], None] | None = None,
) -> Target:
    """What the lab's Vagrantfile is rendered for; `warn` hears why KVM is not used when auto falls back."""
    domain, fallback = driver(provider, accel, uri)
    if warn and fallback:
        warn(f"{fallback}: using QEMU software emulation, labs will be slow")
    key = home.key() if box.is_labkit_box(box_name) else None
    # type and key only: the comment is free text, and the key is all the guest needs
    public = " ".join(key.with_suffix(".pub").read_text().split()[:2]) if key else None
    local = libvirt.is_local(uri)
    wrapper = os.access(TCG_EMULATOR, os.X_OK) if local else libvirt.has_emulator(uri, TCG_EMULATOR)
    emulator = TCG_EMULATOR if domain == "qemu" and wrapper else None
    return Target(
        provider=provider,
        box=box_name,
        driver=domain,
        emulator=emulator,
        private_key=str(key) if key else None,
        public_key=public,
        source=labfile.shown(source),
        name=name,
        uri=None if local else uri,
    )


def up_command(lab: str, box_name: str, kernel: str | None, copy: str | None, connect: str | None) -> str:
    """The `labkit up` that continues a lab as it was begun: the same box (or kernel), copy and host."""
    words = ["labkit", "up", lab]
    if kernel:
        words += ["--kernel", kernel]
    elif box_name != box.DEFAULT_BOX:
        words += ["--box", box_name]
    if copy:
        words += ["--as", copy]
    if connect:
        words += ["--connect", connect]
    return shlex.join(words)
