"""The names of what a lab (or copy) makes in libvirt, built and read back in this one place.

Every object is called labkit-<name>-<part>: the domains labkit-<name>-<node> (vagrant-libvirt's
default_prefix), their volumes labkit-<name>-<node>.img, the lab networks labkit-<name>-<network>
and the management network labkit-<name>-mgmt, where <name> is the lab's, or its copy's.

Both <name> and <part> may contain '-' (node rs-a; copies nat and nat-2 side by side), so a name
is never split at a '-'. An object is matched by its whole name against the names a lab file
gives (domains() and networks() of the lab's nodes and networks); a domain no lab file here
explains is attributed by the description vagrant-libvirt gives each domain it makes,
"Source: <lab folder>/Vagrantfile", whose folder is named after the lab or copy (owner()).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath

PREFIX = "labkit-"
MANAGEMENT = "mgmt"
# The management networks every lab shared before each had its own: no lab's, never removed.
OLD_SHARED = ("labkit-mgmt", "labkit-mgmt-nat")
# One volume per disk: the first <domain>.img, any further one <domain>_<n>.img.
VOLUME = re.compile(r"(?P<domain>.+?)(_\d+)?\.img")


def prefix(name: str) -> str:
    """What every object of the lab (or copy) `name` starts with: vagrant-libvirt's default_prefix."""
    return f"{PREFIX}{name}-"


def domain(name: str, node: str) -> str:
    return prefix(name) + node


def network(name: str, net: str) -> str:
    return prefix(name) + net


def management(name: str) -> str:
    """The lab's own management network, Vagrant's DHCP and SSH path."""
    return network(name, MANAGEMENT)


def is_labkit(object_name: str) -> bool:
    return object_name.startswith(PREFIX)


def domains(name: str, nodes: Iterable[str]) -> list[str]:
    return [domain(name, node) for node in nodes]


def networks(name: str, nets: Iterable[str]) -> list[str]:
    """The lab networks' names and the management network's."""
    return [network(name, net) for net in nets] + [management(name)]


def volume_domain(volume: str) -> str | None:
    """The domain a volume is a disk of; None for a volume that is no domain's disk."""
    found = VOLUME.fullmatch(volume)
    return found["domain"] if found else None


def owner(domain_name: str, description: str) -> str | None:
    """The lab or copy a domain was made for, from its libvirt description ("Source:
    /home/u/.local/share/labkit/labs/nat-2/Vagrantfile" -> nat-2); None when the description
    does not say (not made by vagrant-libvirt, or given another description)."""
    source = description.strip().removeprefix("Source: ")
    if source == description.strip() or not source.endswith("/Vagrantfile"):
        return None
    name = PurePosixPath(source).parent.name
    return name if domain_name.startswith(prefix(name)) else None


def by_owner(domain_names: Iterable[str], descriptions: Mapping[str, str]) -> dict[str, list[str]]:
    """Domains grouped by the lab or copy each was made for (owner()); a domain whose owner is
    not known stands alone, under its name without labkit-."""
    found: dict[str, list[str]] = {}
    for name in domain_names:
        key = owner(name, descriptions.get(name, "")) or name.removeprefix(PREFIX)
        found.setdefault(key, []).append(name)
    return found
