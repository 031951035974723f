"""The host before a lab is made: enough memory and disk for its VMs, and networks that collide
with nothing the host or libvirt already has. Each shortfall is one line with the numbers and
the fix. The readings come from /proc, virsh and ip; the judging is pure."""

from __future__ import annotations

import json
import re
import subprocess
import xml.etree.ElementTree as ET
from ipaddress import IPv4Network, ip_network

from labkit.build.render import Target
from labkit.labfile import Lab

LIBVIRT_URI = "qemu:///system"
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


def memory_problem(lab: Lab, target: Target, available_mib: int, others: list[str] = ()) -> str | None:
    """`others`: the labs already up here, whose VMs hold part of what is not available."""
    need = memory_needed(lab, target)
    if need <= available_mib:
        return None
    running = f" (labs up: {', '.join(others)})" if others else ""
    return (f"memory: the lab's {len(lab.nodes)} VMs need about {need} MiB ({lab.memory} MiB each plus "
            f"{overhead(target)} MiB for QEMU), the host has {available_mib} MiB available{running}. "
            "Take a running lab down (labkit down LAB), or lower memory: in the lab file")


def disk_problem(lab: Lab, available_mib: int) -> str | None:
    need = len(lab.nodes) * DISK_MIB_PER_VM
    if need <= available_mib:
        return None
    return (f"disk: the lab's volumes need about {need} MiB, libvirt's storage pool has {available_mib} MiB "
            "available. Free space in the pool (virsh vol-list default), or take a lab down")


def network_problems(lab: Lab, taken: dict[str, IPv4Network]) -> list[str]:
    """The lab's networks that overlap a network the host or libvirt already has (what -> range)."""
    return [f"networks.{net}: {cidr} overlaps {what} ({other}). Give the lab a range the host does not use"
            for net, cidr in lab.networks.items()
            for what, other in taken.items() if cidr.overlaps(other)]


def problems(lab: Lab, target: Target, up: list[str]) -> list[str]:
    """Everything that keeps this host from holding the lab; empty when it fits. `up`: the labs
    up here. Memory and disk only for a lab not yet started (one being continued already holds
    its share)."""
    fresh = lab.name not in up
    found = [memory_problem(lab, target, available_memory_mib(), up) if fresh else None]
    if target.provider.value == "libvirt":
        found.append(disk_problem(lab, pool_available_mib()) if fresh else None)
        taken = {f"the host's route via {dev}": net for dev, net in host_routes()}
        taken.update({f"libvirt network {name}": net for name, net in libvirt_networks().items()
                      if not name.startswith(f"labkit-{lab.name}-")})
        found += network_problems(lab, taken)
    return [p for p in found if p]


# ---- readings ---------------------------------------------------------------------------------


def available_memory_mib() -> int:
    text = open("/proc/meminfo").read()
    return int(re.search(r"^MemAvailable:\s+(\d+) kB", text, re.M)[1]) // 1024


def _virsh(*args: str) -> str:
    result = subprocess.run(["virsh", "-c", LIBVIRT_URI, *args], capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else ""


def pool_available_mib(pool: str = "default") -> int:
    """What libvirt's pool says is available; a pool it cannot read counts as enough (Vagrant
    then says what is wrong)."""
    m = re.search(r"^Available:\s+([\d.]+) (KiB|MiB|GiB|TiB)", _virsh("pool-info", pool), re.M)
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


def libvirt_networks() -> dict[str, IPv4Network]:
    found = {}
    for name in _virsh("net-list", "--all", "--name").split():
        xml = _virsh("net-dumpxml", name)
        if xml and (cidr := network_range(xml)) is not None:
            found[name] = cidr
    return found


def host_routes() -> list[tuple[str, IPv4Network]]:
    """(device, range) of the host's IPv4 routes, the default route left out."""
    result = subprocess.run(["ip", "-j", "-4", "route", "show"], capture_output=True, text=True)
    routes = json.loads(result.stdout or "[]") if result.returncode == 0 else []
    return [(r.get("dev", "?"), ip_network(r["dst"], strict=False)) for r in routes
            if r.get("dst") not in (None, "default")]
