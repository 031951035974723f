"""What libvirt still holds of a lab or copy, found by name and removed."""

from __future__ import annotations

from labkit import lock
from labkit.boot import libvirt, target
from labkit.errors import LabkitError
from labkit.labfile import Lab, read_lab


def command(name: str, lab: Lab) -> str:
    """The command that removes what libvirt holds of a lab (or copy) this installation has no folder for."""
    return f"labkit down {lab.name}" + (f" --as {name}" if name != lab.name else "") + " --leftovers"


def remove_all(name: str, lab: Lab, uri: str) -> list[str]:
    """Remove whatever libvirt still holds of the lab; what could not be removed, and why."""
    return libvirt.remove(uri, libvirt.of(name, lab, libvirt.present(uri)))


def remove_lost(name: str, lab: Lab, uri: str, really: bool) -> list[str]:
    """A lab (or copy) this installation has no folder for: what libvirt still holds of it, removed
    when `really` (it may be another installation's lab of the same name)."""
    left = libvirt.of(name, lab, libvirt.present(uri))
    if not left:
        raise LabkitError(
            f"the lab {name} is not up. Start it with: labkit up {lab.name}"
            + (f" --as {name}" if name != lab.name else "")
        )
    if not really:
        raise LabkitError(
            f"the lab {name} is not up here, but libvirt holds {len(left.names())} of its objects "
            f"({', '.join(left.names()[:3])}, ...): left by a lab whose folder is gone, or another "
            f"installation's. If they are leftovers, remove them with: {command(name, lab)}"
        )
    failed = libvirt.remove(uri, left)
    if failed:
        raise LabkitError("could not remove:\n" + "\n".join(f"  {f}" for f in failed))
    return left.names()


def down(
    lab: str | None, copy: str | None, up_here: list[str], connect: str | None, really: bool
) -> tuple[str, list[str]]:
    """`labkit down` of a lab (or its copy `copy`) that is not among `up_here`, the labs this
    installation has a folder for: its name, and what libvirt held of it, now removed. libvirt
    may hold what a lost lab made, or another installation's lab of the same name: only
    `really` (--leftovers) removes it."""
    if lab is None:
        raise LabkitError("name the lab whose copy it is: labkit down LAB --as NAME --leftovers")
    model = read_lab(lab)
    name = target.copy_name(copy) or model.name
    if name in up_here:
        raise LabkitError(f"{name} is up here: remove it with labkit down {name}")
    with lock.changing(name, "down"):
        return name, remove_lost(name, model, target.uri_for(connect), really)
