"""What libvirt still holds of a lab or copy, found by name and removed."""

from __future__ import annotations

from labkit.boot import libvirt
from labkit.errors import LabkitError
from labkit.labfile import Lab


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
