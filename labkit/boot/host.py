"""The host before a lab is made: enough memory and disk for its VMs, networks that collide with
nothing the host or libvirt already has, and a management network of its own. Each shortfall is
one line with the numbers and the fix. The readings come from /proc, virsh and ip (another
host's from its libvirt); the judging is pure."""

from __future__ import annotations

import json
import re
import subprocess
import xml.etree.ElementTree as ET
from ipaddress import IPv4Network, ip_network

from labkit.boot import libvirt, names
from labkit.errors import LabkitError
from labkit.labfile import Lab
from labkit.render.vagrantfile import Target

# Each lab's management network (Vagrant's DHCP and SSH) takes the first free /24 of these.
MANAGEMENT_RANGES = [IPv4Network(f"192.168.{i}.0/24") for i in range(124, 255)]
# Host memory a VM takes beyond its guest RAM: QEMU itself, and under software emulation the
# TCG translation cache, which ends up resident: about 1 GiB per VM with QEMU 7.2's default,
# 128 MiB through labkit's wrapper (Target.emulator).
OVERHEAD_MIB = {"kvm": 256, "qemu": 1024, "qemu-capped": 256}
# A VM's disk is a copy-on-write overlay of the box; a lab writes a few hundred MiB into it.
DISK_MIB_PER_VM = 512


def overhead(target: Target) -> int:
    kind = "qemu-capped" if target.driver == "qemu" and target.emulator else target.driver
    return OVERHEAD_MIB.get(kind, OVERHEAD_MIB["kvm"])


def memory_needed(lab: Lab, target: Target) -> int:
    """MiB of host memory the lab's VMs take once booted, at most."""
    return len(lab.nodes) * (lab.memory + overhead(target))


def copies_that_fit(lab: Lab, target: Target, available_mib: int) -> int:
    return max(0, available_mib) // memory_needed(lab, target)


def memory_problem(lab: Lab, target: Target, available_mib: int, others: list[str] = ()) -> str | None:
    """`others`: the labs already up on the host, whose VMs hold part of what is not available."""
    need = memory_needed(lab, target)
    if need <= available_mib:
        return None
    running = f" (labs up: {', '.join(others)})" if others else ""
    return (
        f"memory: the lab's {len(lab.nodes)} VMs need about {need} MiB ({lab.memory} MiB each plus "
        f"{overhead(target)} MiB for QEMU), the host has {max(0, available_mib)} MiB available{running}: "
        f"room for {copies_that_fit(lab, target, available_mib)} copies of it. "
        "Take a running lab down (labkit down LAB), or lower memory: in the lab file"
    )


def disk_problem(lab: Lab, available_mib: int) -> str | None:
    need = len(lab.nodes) * DISK_MIB_PER_VM
    if need <= available_mib:
        return None
    return (
        f"disk: the lab's volumes need about {need} MiB, libvirt's storage pool has {available_mib} MiB "
        "available. Free space in the pool (virsh vol-list default), or take a lab down"
    )


def network_problems(lab: Lab, taken: dict[str, IPv4Network]) -> list[str]:
    """The lab's networks that overlap a network the host or libvirt already has (what -> range)."""
    return [
        f"networks.{net}: {cidr} overlaps {what} ({other}). Give the lab a range the host does not use"
        for net, cidr in lab.networks.items()
        for what, other in taken.items()
        if cidr.overlaps(other)
    ]


def problems(lab: Lab, target: Target, fresh: bool, reserved_mib: int = 0, others: list[str] = ()) -> list[str]:
    """Everything that keeps the host from holding the lab (or its copy, target.name); empty when it fits.
    Memory and disk only for a lab not yet started (one being continued already holds its share);
    `reserved_mib`: what the labs there may take beyond what they hold now; `others`: the labs
    up there."""
    name, uri = target.name or lab.name, target.uri or libvirt.LOCAL
    found = []
    if fresh:
        found.append(memory_problem(lab, target, available_memory_mib(uri) - reserved_mib, others))
    if target.provider.value == "libvirt":
        found.append(disk_problem(lab, pool_available_mib(uri)) if fresh else None)
        taken = {f"the host's route via {dev}": net for dev, net in host_routes()} if libvirt.is_local(uri) else {}
        taken.update(others_networks(name, lab, libvirt_networks(uri)))
        found += network_problems(lab, taken)
    return [p for p in found if p]


def others_networks(name: str, lab: Lab, networks: dict[str, IPv4Network]) -> dict[str, IPv4Network]:
    """The libvirt networks (name -> range) that are not the lab's (or copy's) own, by their whole
    names: a lab being continued overlaps only itself, and nat's networks are not nat-2's."""
    own = set(names.networks(name, lab.networks))
    return {f"libvirt network {net}": cidr for net, cidr in networks.items() if net not in own}


def free_management_range(taken: list[IPv4Network]) -> IPv4Network:
    """The first management range that overlaps nothing taken."""
    for cidr in MANAGEMENT_RANGES:
        if not any(cidr.overlaps(other) for other in taken):
            return cidr
    raise LabkitError(
        f"no free management network left in {MANAGEMENT_RANGES[0]}-{MANAGEMENT_RANGES[-1]}: "
        "take labs down (labkit list shows them)"
    )


def management_range(uri: str, refused: list[IPv4Network]) -> IPv4Network:
    """A management range for a new lab: free on the host (its routes, when it is this one) and in
    its libvirt, and not one libvirt has just `refused`."""
    taken = list(refused) + list(libvirt_networks(uri).values())
    if libvirt.is_local(uri):
        taken += [net for _, net in host_routes()]
    return free_management_range(taken)


# ---- readings ---------------------------------------------------------------------------------


def available_memory_mib(uri: str = libvirt.LOCAL) -> int:
    """This host's MemAvailable; another host's free memory and page cache, as its libvirt reports."""
    if libvirt.is_local(uri):
        text = open("/proc/meminfo").read()
        return int(re.search(r"^MemAvailable:\s+(\d+) kB", text, re.M)[1]) // 1024
    stats = dict(re.findall(r"^(\w+)\s*:\s*(\d+) KiB", _virsh(uri, "nodememstats"), re.M))
    if "free" not in stats:
        return 1 << 40  # not readable: Vagrant says what is wrong
    return sum(int(stats.get(k, 0)) for k in ("free", "buffers", "cached")) // 1024


def _virsh(uri: str, *args: str) -> str:
    result = libvirt.virsh(uri, *args)
    return result.stdout if result.returncode == 0 else ""


def pool_available_mib(uri: str = libvirt.LOCAL, pool: str = libvirt.POOL) -> int:
    """What libvirt's pool says is available; a pool it cannot read counts as enough (Vagrant
    then says what is wrong)."""
    m = re.search(r"^Available:\s+([\d.]+) (KiB|MiB|GiB|TiB)", _virsh(uri, "pool-info", pool), re.M)
    if not m:
        return 1 << 40
    return int(float(m[1]) * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024, "TiB": 1024 * 1024}[m[2]])


def network_range(xml: str) -> IPv4Network | None:
    """The IPv4 range of a libvirt network's definition; None for one without a host address
    (labkit's isolated lab networks)."""
    ip = ET.fromstring(xml).find("ip")
    if ip is None or ip.get("family", "ipv4") != "ipv4" or not ip.get("address"):
        return None
    mask = ip.get("netmask") or ip.get("prefix") or "24"
    return ip_network(f"{ip.get('address')}/{mask}", strict=False)


def libvirt_networks(uri: str = libvirt.LOCAL) -> dict[str, IPv4Network]:
    found = {}
    for name in _virsh(uri, "net-list", "--all", "--name").split():
        xml = _virsh(uri, "net-dumpxml", name)
        if xml and (cidr := network_range(xml)) is not None:
            found[name] = cidr
    return found


def host_routes() -> list[tuple[str, IPv4Network]]:
    """(device, range) of the host's IPv4 routes, the default route left out."""
    result = subprocess.run(["ip", "-j", "-4", "route", "show"], capture_output=True, text=True)
    routes = json.loads(result.stdout or "[]") if result.returncode == 0 else []
    return [
        (r.get("dev", "?"), ip_network(r["dst"], strict=False)) for r in routes if r.get("dst") not in (None, "default")
    ]
