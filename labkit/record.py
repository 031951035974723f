"""A lab's record: what labkit decided when it booked a lab (or copy), written once as
record.json in the lab's folder before Vagrant runs, so that a lab that is only partly up has
it too, and read by everything that needs to know where and from what the lab was made.

Vagrant's `.vagrant/` stays the state of the machines; the record holds only labkit's choices
at `up`. A folder made by an older labkit has no record.json: its record is read from its
Vagrantfile, here and nowhere else.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from labkit import box
from labkit.boot import libvirt
from labkit.errors import LabkitError
from labkit.labfile import Lab
from labkit.render.vagrantfile import Provider, Target

FILE = "record.json"


@dataclass(frozen=True)
class Record:
    lab: str  # the lab file's name
    name: str  # the lab's, or its copy's: its folder, VMs and networks are named after it
    uri: str  # the libvirt host it runs on
    box: str
    kernel: str | None  # the --kernel the box was chosen for; None: --box, or the default box
    release: str | None  # the box's kernel release, as the box's metadata says; None: not known
    management: str | None  # its management range; None: an older labkit's, which did not name one
    provider: Provider
    created: str  # when it was booked, ISO 8601

    @classmethod
    def booked(cls, lab: Lab, target: Target) -> Record:
        """The record of a lab (or copy, target.name) about to be made as `target` says."""
        return cls(
            lab=lab.name,
            name=target.name or lab.name,
            uri=target.uri or libvirt.LOCAL,
            box=target.box,
            kernel=target.kernel,
            release=release_of(target.box),
            management=target.management,
            provider=target.provider,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )

    @property
    def created_at(self) -> datetime:
        return datetime.fromisoformat(self.created)

    def write(self, folder: Path) -> None:
        (folder / FILE).write_text(json.dumps({**asdict(self), "provider": self.provider.value}, indent=2) + "\n")

    @classmethod
    def read(cls, folder: Path) -> Record:
        """The record of the lab in `folder`."""
        path = folder / FILE
        if not path.exists():
            return _from_vagrantfile(folder)
        try:
            data = json.loads(path.read_text())
            return cls(**{f.name: data[f.name] for f in fields(cls)} | {"provider": Provider(data["provider"])})
        except (ValueError, TypeError, KeyError) as exc:
            raise LabkitError(
                f"{path} is not a lab's record ({exc!r}). Remove it: labkit then reads what it "
                "needs from the lab's Vagrantfile"
            ) from None


def release_of(box_name: str) -> str | None:
    """The kernel release of the box Vagrant boots by that name (its newest version)."""
    releases = [b.kernel for b in box.labkit_boxes() if b.name == box_name]
    return (releases[-1] if releases else "") or None  # "": built before boxes kept it


# What an older labkit's Vagrantfile says of the lab it made.
RENDERED = {
    "lab": r"^# Lab: (\S+)",
    "box": r'config\.vm\.box = "([^"]+)"',
    "uri": r'libvirt\.uri = "([^"]+)"',
    "management": r'management_network_address = "([^"]+)"',
}


def _from_vagrantfile(folder: Path) -> Record:
    path = folder / "Vagrantfile"
    if not path.exists():
        raise LabkitError(
            f"{folder} holds neither {FILE} nor a Vagrantfile: it is no lab's folder. Remove it, and "
            f"whatever libvirt still holds of the lab: labkit down LAB --as {folder.name} --leftovers"
        )
    text = path.read_text()
    said = {key: (m[1] if (m := re.search(pattern, text, re.M)) else None) for key, pattern in RENDERED.items()}
    made = said["box"] or "?"
    return Record(
        lab=said["lab"] or folder.name,
        name=folder.name,
        uri=said["uri"] or libvirt.LOCAL,
        box=made,
        kernel=None,
        release=release_of(made),
        management=said["management"],
        provider=Provider.libvirt if ":libvirt do" in text else Provider.virtualbox,
        created=datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds"),
    )
