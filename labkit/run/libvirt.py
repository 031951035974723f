"""What libvirt holds for a lab, found by name: every domain, volume and network a lab makes is
called labkit-<lab>-<node or network> (the Vagrantfile's default_prefix and network names), so a
lab can be removed, and strays found, without Vagrant's `.vagrant/` state."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from labkit.labfile import Lab

URI = "qemu:///system"
POOL = "default"
SHARED = "labkit-mgmt"  # the management networks, shared by every lab


@dataclass
class Objects:
    domains: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.domains or self.volumes or self.networks)

    def names(self) -> list[str]:
        return self.domains + self.volumes + self.networks


def _virsh(*args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True)
    except OSError as exc:  # no libvirt on this host (VirtualBox): nothing of a lab's is there
        return subprocess.CompletedProcess(args, 1, "", str(exc))


def present() -> Objects:
    """Every domain, volume and network in libvirt whose name starts with labkit-."""
    volumes = [line.split()[0] for line in _virsh("vol-list", POOL).stdout.splitlines()[2:] if line.strip()]
    return Objects(
        domains=[n for n in _virsh("list", "--all", "--name").stdout.split() if n.startswith("labkit-")],
        # the boxes' base images are named after the box (labkit-VAGRANTSLASH-...): not a lab's
        volumes=[n for n in volumes if n.startswith("labkit-") and "_vagrant_box_image_" not in n],
        networks=[n for n in _virsh("net-list", "--all", "--name").stdout.split()
                  if n.startswith("labkit-") and not n.startswith(SHARED)],
    )


def of(lab: Lab, seen: Objects) -> Objects:
    """The objects of `seen` that belong to the lab, by their exact names."""
    prefix = f"labkit-{lab.name}-"
    domains = {prefix + node for node in lab.nodes}
    return Objects(
        domains=[n for n in seen.domains if n in domains],
        volumes=[n for n in seen.volumes if n.rsplit(".", 1)[0] in domains],
        networks=[n for n in seen.networks if n in {prefix + net for net in lab.networks}],
    )


def strays(labs: list[Lab], seen: Objects) -> Objects:
    """What `seen` holds that belongs to none of the labs that are up."""
    owned = set()
    for lab in labs:
        owned.update(of(lab, seen).names())
    return Objects(*[[n for n in names if n not in owned] for names in (seen.domains, seen.volumes, seen.networks)])


# ---- snapshots: a lab's state as `labkit up` left it, memory included ---------------------------

SNAPSHOT = "labkit-up"


def _each(domains: list[str], *args: str) -> list[str]:
    """virsh ARGS for every domain at once ({} is the domain); the failures, with virsh's reason."""
    with ThreadPoolExecutor(max_workers=len(domains)) as pool:
        results = list(pool.map(lambda d: _virsh(*[a.replace("{}", d) for a in args]), domains))
    return [f"{d}: {r.stderr.strip()}" for d, r in zip(domains, results) if r.returncode != 0]


def snapshot(domains: list[str]) -> list[str]:
    """Take (or take again) each running domain's snapshot, disks and memory: libvirt's internal
    snapshot in the domain's qcow2 volume."""
    drop_snapshots(domains)
    return _each(domains, "snapshot-create-as", "--domain", "{}", "--name", SNAPSHOT, "--atomic")


def has_snapshot(domains: list[str]) -> bool:
    return not _each(domains, "snapshot-info", "--domain", "{}", "--snapshotname", SNAPSHOT)


def revert(domains: list[str]) -> list[str]:
    """Every domain back to its snapshot, running: memory, disks and devices as they were."""
    return _each(domains, "snapshot-revert", "--domain", "{}", "--snapshotname", SNAPSHOT, "--running", "--force")


def drop_snapshots(domains: list[str]) -> None:
    _each(domains, "snapshot-delete", "--domain", "{}", "--snapshotname", SNAPSHOT)


def remove(objects: Objects) -> list[str]:
    """Stop and remove each object; what could not be removed, with virsh's reason."""
    failed = []
    for domain in objects.domains:
        _virsh("destroy", domain)  # fails harmlessly when it is not running
        if (r := _virsh("undefine", "--snapshots-metadata", domain)).returncode != 0:
            failed.append(f"domain {domain}: {r.stderr.strip()}")
    for volume in objects.volumes:
        if (r := _virsh("vol-delete", "--pool", POOL, volume)).returncode != 0:
            failed.append(f"volume {volume}: {r.stderr.strip()}")
    for network in objects.networks:
        _virsh("net-destroy", network)
        if (r := _virsh("net-undefine", network)).returncode != 0:
            failed.append(f"network {network}: {r.stderr.strip()}")
    return failed
