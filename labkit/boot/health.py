"""A lab's own health as libvirt sees it: each VM running or not (or gone), each of its networks
active or not (or gone), each running VM's NICs attached to their network's bridge or not, each
VM's disk there or not. What `status`, `doctor` and `verify` say of a lab that is up, and what
`up` and `reset` repair.

The faults behind these are the host's, not the lab's: a QEMU process killed (the OOM killer, a
crash), a network destroyed (a libvirt restart with networks that do not start on their own, an
administrator's `virsh net-destroy`), the host restarted (every VM off, every network inactive),
a volume or the box deleted. A network started again gets a new bridge, and the running VMs'
tap devices are not on it: their NICs carry nothing until they are put back on the bridge.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from labkit.boot import libvirt, names
from labkit.labfile import Lab

MISSING = "missing"  # a VM, network or volume libvirt does not have
SYS_NET = Path("/sys/class/net")


@dataclass(frozen=True)
class Nic:
    tap: str  # the host's tap device, "-" when the VM does not run
    network: str


@dataclass
class Health:
    name: str
    vms: dict[str, str] = field(default_factory=dict)  # node -> running, shutoff, paused, ..., missing
    networks: dict[str, str] = field(default_factory=dict)  # network -> active, inactive, missing
    detached: dict[str, list[Nic]] = field(default_factory=dict)  # running node -> its NICs off their bridge
    disks: dict[str, bool] = field(default_factory=dict)  # node -> its volume is there

    def down(self) -> dict[str, str]:
        """Nodes that cannot take part in the lab now -> why, in a few words."""
        found = {}
        for node, state in self.vms.items():
            if state != "running":
                found[node] = "its VM is gone" if state == MISSING else f"its VM is {state}"
            elif self.detached.get(node):
                nets = ", ".join(nic.network for nic in self.detached[node])
                found[node] = f"its NICs on {nets} are cut off (the network was stopped under it)"
        return found

    def repair(self, node: str | None = None) -> str:
        """The command that brings back a node (or, with none, the lab's other parts): a paused VM
        is resumed by heal, which also restarts what its pause broke; the rest is up's to repair."""
        if node is not None and self.vms.get(node) == "paused":
            return f"labkit heal {self.name} resumes it"
        if node is not None and self.vms.get(node) == libvirt.SAVED:
            return f"labkit up {self.name} resumes it"
        return f"labkit up {self.name} repairs it"

    def problems(self) -> list[str]:
        """One line per fault, each naming the part and the command that repairs it."""
        lines = [
            f"network {net} is {state}: {self.repair()}" for net, state in self.networks.items() if state != "active"
        ]
        lines += [f"{node}: {why}: {self.repair(node)}" for node, why in self.down().items()]
        lines += [
            f"{node}: its disk volume is gone: labkit up {self.name} makes the VM again from the box"
            for node, there in self.disks.items()
            if not there
        ]
        return lines


def read(name: str, lab: Lab, uri: str) -> Health:
    """The lab (or copy) `name`'s health on its libvirt host."""
    health = Health(name)
    held = libvirt.domains(uri) or {}
    for node in lab.nodes:
        vm = held.get(names.domain(name, node))
        health.vms[node] = vm.state if vm else MISSING
    listed = network_states(libvirt.virsh(uri, "net-list", "--all").stdout)
    health.networks = {net: listed.get(net, MISSING) for net in names.networks(name, lab.networks)}
    volumes = {names.volume_domain(v) for v in libvirt.volumes(uri)}
    health.disks = {node: names.domain(name, node) in volumes for node, state in health.vms.items() if state != MISSING}
    running = [node for node, state in health.vms.items() if state == "running"]
    if running and libvirt.is_local(uri):  # the bridges are this host's to look at
        bridges = {net: bridge(uri, net) for net, state in health.networks.items() if state == "active"}
        with ThreadPoolExecutor(max_workers=len(running)) as pool:
            nics = dict(zip(running, pool.map(lambda n: interfaces(uri, names.domain(name, n)), running)))
        for node in running:
            cut = [nic for nic in nics[node] if nic.network in health.networks and not attached(nic, bridges)]
            if cut:
                health.detached[node] = cut
    return health


def network_states(listing: str) -> dict[str, str]:
    """`virsh net-list --all` -> network -> active or inactive."""
    found = {}
    for line in listing.splitlines()[2:]:
        words = line.split()
        if len(words) >= 2:
            found[words[0]] = words[1]
    return found


def interfaces(uri: str, domain: str) -> list[Nic]:
    return nics(libvirt.virsh(uri, "domiflist", domain).stdout)


def nics(listing: str) -> list[Nic]:
    """`virsh domiflist` -> the domain's NICs on libvirt networks."""
    rows = (line.split() for line in listing.splitlines()[2:])
    return [Nic(w[0], w[2]) for w in rows if len(w) >= 3 and w[1] == "network"]


def bridge(uri: str, network: str) -> str | None:
    for line in libvirt.virsh(uri, "net-info", network).stdout.splitlines():
        if line.startswith("Bridge:"):
            return line.split()[-1]
    return None


def attached(nic: Nic, bridges: dict[str, str | None]) -> bool:
    """Whether the NIC's tap is a port of its network's bridge (an inactive network has none)."""
    master = SYS_NET / nic.tap / "master"
    want = bridges.get(nic.network)
    return want is not None and master.exists() and master.resolve().name == want


def reattach(uri: str, health: Health) -> list[str]:
    """Put the cut-off NICs of running VMs back on their networks' bridges, as libvirt put them
    there at boot; what was done. Only on this host, whose bridges labkit can reach."""
    done = []
    bridges = {net: bridge(uri, net) for net in {nic.network for nics in health.detached.values() for nic in nics}}
    for node, nics in health.detached.items():
        for nic in nics:
            if bridges.get(nic.network):
                _ip("link", "set", nic.tap, "master", bridges[nic.network])
                _ip("link", "set", nic.tap, "up")
                done.append(f"{node}'s NIC on {nic.network} put back on its bridge")
    return done


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def repair(name: str, lab: Lab, uri: str) -> list[str]:
    """Before Vagrant boots a lab again: its stopped networks started, the running VMs' NICs put back
    on them (on another host, where labkit cannot reach the bridges, those VMs are stopped for
    Vagrant to start), and a VM whose disk is gone removed for Vagrant to make again from the box.
    Vagrant then starts the VMs that are off and makes those that are gone. A VM whose memory was
    saved (labkit stop) is restored here, all at once, as it was. What was repaired."""
    done = []
    before = read(name, lab, uri)
    for net, state in before.networks.items():
        if state == "inactive" and libvirt.virsh(uri, "net-start", net).returncode == 0:
            done.append(f"network {net} started again")
    now = read(name, lab, uri) if done else before
    if libvirt.is_local(uri):
        done += reattach(uri, now)
    else:
        for node in now.detached:
            libvirt.virsh(uri, "destroy", names.domain(name, node))
            done.append(f"{node} stopped, to start on its networks again")
    for node, there in now.disks.items():
        if not there:
            libvirt.remove(uri, libvirt.Objects(domains=[names.domain(name, node)]))
            done.append(f"{node}'s VM removed, its disk gone: made again from the box")
    saved = [node for node, state in now.vms.items() if state == libvirt.SAVED and now.disks.get(node)]
    restored = libvirt.per_domain(uri, [names.domain(name, node) for node in saved], "start", "{}")
    for node, result in zip(saved, restored.values()):
        if result.returncode == 0:
            done.append(f"{node} resumed as it was stopped (its memory was saved)")
        else:  # booted instead: the saved memory is of no use now
            libvirt.virsh(uri, "managedsave-remove", names.domain(name, node))
            done.append(f"{node}'s saved memory could not be restored ({result.stderr.strip()}): booted again")
    done += [
        f"{node} started again (it was {state})"
        for node, state in now.vms.items()
        if state == "shutoff" and now.disks.get(node, True)
    ]
    done += [f"{node} made again (its VM was gone)" for node, state in now.vms.items() if state == MISSING]
    return done
