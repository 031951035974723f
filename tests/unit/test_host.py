"""The host before a lab: memory, disk and networks judged from readings, each shortfall one line."""

from ipaddress import ip_network

import pytest

from labkit.boot import host
from labkit.errors import LabkitError
from labkit.labfile import LABS, load_lab
from labkit.render.vagrantfile import Target

NAT = load_lab(LABS / "nat" / "lab.yaml")


TCG = Target(driver="qemu")
CAPPED = Target(driver="qemu", emulator="/usr/local/libexec/labkit-qemu-tcg")


def test_memory_counts_qemus_own_share_under_emulation():
    assert host.memory_needed(NAT, TCG) == 5 * (512 + 1024)
    assert host.memory_needed(NAT, CAPPED) == host.memory_needed(NAT, Target(driver="kvm")) == 5 * (512 + 256)
    assert host.memory_problem(NAT, TCG, 8000) is None
    assert "4000 MiB available (labs up: tun, dr): room for 0 copies of it. Take" in host.memory_problem(
        NAT, TCG, 4000, ["tun", "dr"]
    )
    assert host.memory_problem(NAT, TCG, 4000) == (
        "memory: the lab's 5 VMs need about 7680 MiB (512 MiB each plus 1024 MiB for QEMU), the host has "
        "4000 MiB available: room for 0 copies of it. Take a running lab down (labkit down LAB), or lower "
        "memory: in the lab file"
    )


def test_copies_that_fit():
    assert host.copies_that_fit(NAT, CAPPED, 24_000) == 6  # 3840 MiB each
    assert host.copies_that_fit(NAT, CAPPED, 3_839) == 0
    assert host.copies_that_fit(NAT, CAPPED, -500) == 0  # booking more than is free
    assert "the host has 0 MiB available: room for 0" in host.memory_problem(NAT, CAPPED, -500)


def test_a_management_range_that_overlaps_nothing():
    taken = [ip_network("192.168.124.0/24"), ip_network("192.168.125.128/25"), ip_network("192.168.120.0/22")]
    assert host.free_management_range(taken) == ip_network("192.168.126.0/24")
    with pytest.raises(LabkitError, match="no free management network left"):
        host.free_management_range([ip_network("192.168.0.0/16")])


def test_disk_against_the_pool():
    assert host.disk_problem(NAT, 10_000) is None
    assert host.disk_problem(NAT, 1000).startswith(
        "disk: the lab's volumes need about 2560 MiB, libvirt's storage pool has 1000 MiB available."
    )


def test_networks_that_overlap_what_the_host_has():
    taken = {
        "libvirt network default": ip_network("192.168.0.0/16"),
        "the host's route via eth0": ip_network("10.0.0.0/8"),
    }
    assert host.network_problems(NAT, taken) == [
        "networks.ext: 192.168.55.0/24 overlaps libvirt network default (192.168.0.0/16). Give the lab a range the host does not use",
        "networks.int: 192.168.66.0/24 overlaps libvirt network default (192.168.0.0/16). Give the lab a range the host does not use",
    ]
    assert host.network_problems(NAT, {"libvirt network labkit-mgmt": ip_network("192.168.124.0/24")}) == []


def test_a_libvirt_networks_range_from_its_definition():
    mgmt = "<network><name>labkit-mgmt</name><ip address='192.168.124.1' netmask='255.255.255.0'/></network>"
    assert host.network_range(mgmt) == ip_network("192.168.124.0/24")
    assert host.network_range("<network><ip address='10.1.2.1' prefix='16'/></network>") == ip_network("10.1.0.0/16")
    isolated = "<network><name>labkit-nat-ext</name><bridge name='virbr2'/></network>"
    assert host.network_range(isolated) is None
