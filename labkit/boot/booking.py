"""Booking and booting a lab (or copy): the checks before anything is made, its management
range claimed in libvirt, its folder with its record and Vagrantfile, then every node booted at
once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Network
from pathlib import Path

from labkit import box, home
from labkit.apply.ssh import NodeResult
from labkit.boot import doctor, health, host, leftovers, libvirt, names, vagrant
from labkit.errors import LabkitError
from labkit.labfile import Lab
from labkit.lock import exclusive
from labkit.record import Record
from labkit.render.vagrantfile import Provider, Target, render
from labkit.running import RunningLab


def boot(
    lab: Lab,
    source: Path,
    target: Target,
    on_progress: Callable[[str, str], None],
    on_repair: Callable[[str], None] = lambda line: None,
    on_done: Callable[[NodeResult], None] | None = None,
) -> tuple[RunningLab, float]:
    """Render the lab's (or copy's, target.name) Vagrantfile and boot every node at once,
    provisioning each node as it answers when on_done is given (RunningLab.boot); the running
    lab and the moment Vagrant's boot ended. A lab being continued is repaired first
    (health.repair), each repair told to on_repair."""
    name = target.name or lab.name
    folder = home.lab_dir(name)
    uri = target.uri or libvirt.LOCAL
    made = RunningLab(folder) if (folder / "Vagrantfile").exists() else None  # a lab being continued
    if made is not None:
        _same_lab(made, lab, target.box, uri)
    doctor.preflight(target.provider, target.box, uri)
    target = direct_boot(target, uri)
    with exclusive("booking.hosts"):  # labs made at once each count the memory the others will take
        on_host = [o for o in RunningLab.all() if o.name != name and o.uri == uri]
        shortfalls = host.problems(
            lab, target, made is None, _yet_to_take(on_host, target, uri), [o.name for o in on_host]
        )
        if shortfalls:
            raise LabkitError(
                f"{libvirt.shown(uri)} cannot hold the lab {name}:\n" + "\n".join(f"  - {p}" for p in shortfalls)
            )
        if made is None:
            target = replace(target, management=_claim_management(name, lab, uri, nat=not target.private_key))
            booked = Record.booked(lab, target)
        else:  # continued as it was booked, its record kept
            target = replace(target, management=made.booked.management or target.management)
            booked = None
        running = RunningLab.create(name, source, render(lab, target), booked)
    repaired = False
    if made is not None and target.provider == Provider.libvirt:
        for line in health.repair(name, lab, uri):
            on_repair(line)
            repaired = True
    if target.base_disk:
        failed = libvirt.make_disks(uri, names.domains(name, lab.nodes), target.base_disk)
        if failed:
            raise LabkitError(
                "could not make the VMs' disks:\n"
                + "\n".join(f"  {f}" for f in failed)
                + f"\nCheck the pool with: virsh -c {uri} pool-info {libvirt.POOL}"
                + f"\nRemove what was made with: labkit down {name}"
            )
    try:
        booted = running.boot(target.provider, on_progress, on_done)
    except vagrant.BootError as exc:
        raise LabkitError(f"{exc}\nRemove what was made with: labkit down {name}") from None
    # A checker puts back a real server a fault cut off a second or more after it answers again:
    # a lab repaired and provisioned (on_done given) is up once it has, and before `up` or a class
    # seat takes its snapshot.
    if repaired and lab.ha and on_done is not None:
        running.wait_whole(60)
    return running, booted


def direct_boot(target: Target, uri: str, upload: bool = True) -> Target:
    """The target with the box's kernel and initramfs for QEMU to load, put in the host's pool
    once per box version (without `upload`: only if they are there), when the box carries them
    (libvirt only)."""
    if target.provider != Provider.libvirt:
        return target
    with exclusive("boot-files"):  # labs booted at once: one uploads, the others find it there
        found = box.boot_volumes(target.box, uri, upload)
    if found is None:
        return target
    kernel, initrd, cmdline, disk = found
    base = disk if libvirt.is_local(uri) else None  # another host's VMs: Vagrant waits for them, through it
    return replace(target, boot_kernel=kernel, boot_initrd=initrd, boot_cmdline=cmdline, base_disk=base)


def _claim_management(name: str, lab: Lab, uri: str, nat: bool) -> str:
    """The first free management range, claimed in libvirt for the lab (or copy) `name`."""
    network = names.management(name)
    if libvirt.has_network(uri, network):
        raise LabkitError(
            f"libvirt already has the network {network}: another installation's lab of the same "
            f"name (choose another with --as), or a leftover (remove it with: {leftovers.command(name, lab)})"
        )
    refused: list[IPv4Network] = []
    for _ in range(8):
        cidr = host.management_range(uri, refused)
        why = libvirt.claim_network(uri, network, cidr, nat)
        if why is None:
            return str(cidr)
        refused.append(cidr)  # taken meanwhile, by a lab being made elsewhere
    raise LabkitError(f"libvirt refused the management ranges {', '.join(map(str, refused))} for {network}: {why}")


def _same_lab(made: RunningLab, lab: Lab, box: str, uri: str) -> None:
    """A lab being continued must be continued as it was begun: the same lab, box and host."""
    name = made.name
    if (made.folder / "lab.yaml").exists() and made.lab.name != lab.name:
        raise LabkitError(
            f"{name} is a copy of the lab {made.lab.name}, not {lab.name}: choose another name "
            f"(--as), or remove it first: labkit down {name}"
        )
    if made.booked.box != box:  # its VMs would boot from two boxes, two kernels
        raise LabkitError(
            f"{name} is (partly) up from box {made.booked.box}, not {box}: continue it with "
            f"the same --kernel or --box, or remove it first: labkit down {name}"
        )
    if made.uri != uri:
        raise LabkitError(
            f"{name} is (partly) up on {made.uri}, not {uri}: continue it with "
            f"--connect {made.uri}, or remove it first: labkit down {name}"
        )


def _yet_to_take(labs: list[RunningLab], target: Target, uri: str) -> int:
    """MiB the labs on the host may take beyond what they hold now: a lab being booted holds little
    of its memory yet, and a guest touches its memory as it goes."""
    held = libvirt.domains(uri) or {}
    need = 0
    for other in labs:
        try:
            rss = sum(held[d].rss_mib for d in other.domains if d in held)
            need += max(0, host.memory_needed(other.lab, target) - rss)
        except LabkitError:  # a lab file another labkit version wrote: what its VMs hold is counted already
            continue
    return need
