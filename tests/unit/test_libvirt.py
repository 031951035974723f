"""A lab's libvirt objects found by their names, without Vagrant's state."""

import json
import xml.etree.ElementTree as ET
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from labkit.boot import vagrant
from labkit.boot.libvirt import (
    DNSMASQ_XMLNS,
    LOCAL,
    Objects,
    ipv4_leases,
    management_network,
    of,
    shown,
    strays,
    uri_for,
)
from labkit.errors import LabkitError
from labkit.labfile import LABS, load_lab

NAT = load_lab(LABS / "nat" / "lab.yaml")
SEEN = Objects(
    domains=["labkit-nat-lb0", "labkit-nat-rs1", "labkit-nat-x-lb0", "labkit-tun-lb0"],
    volumes=["labkit-nat-lb0.img", "labkit-nat-x-lb0.img", "labkit-tun-cl0.img"],
    networks=["labkit-nat-ext", "labkit-nat-int", "labkit-nat-mgmt", "labkit-nat-x-ext", "labkit-alice-ext"],
)


def test_a_labs_objects_by_exact_name_not_by_prefix():
    mine = of("nat", NAT, SEEN)
    assert mine.domains == ["labkit-nat-lb0", "labkit-nat-rs1"]  # not the lab nat-x's lb0
    assert mine.volumes == ["labkit-nat-lb0.img"]
    assert mine.networks == ["labkit-nat-ext", "labkit-nat-int", "labkit-nat-mgmt"]


def test_a_copys_objects_are_named_after_the_copy():
    assert of("alice", NAT, SEEN).names() == ["labkit-alice-ext"]


def test_strays_are_what_no_lab_that_is_up_owns():
    assert strays({"nat": NAT}, SEEN).names() == [
        "labkit-nat-x-lb0",
        "labkit-tun-lb0",
        "labkit-nat-x-lb0.img",
        "labkit-tun-cl0.img",
        "labkit-nat-x-ext",
        "labkit-alice-ext",
    ]
    assert not strays({"nat": NAT}, of("nat", NAT, SEEN))
    assert strays({"nat": NAT, "alice": NAT}, SEEN).names()[-1] == "labkit-nat-x-ext"


def test_connect_takes_a_system_uri_or_a_named_host():
    hosts = {"big": "qemu+ssh://teacher@big/system"}
    assert uri_for("big", hosts) == "qemu+ssh://teacher@big/system"
    assert (
        uri_for("qemu+ssh://root@127.0.0.1:2222/system?keyfile=/k", {})
        == "qemu+ssh://root@127.0.0.1:2222/system?keyfile=/k"
    )
    with pytest.raises(LabkitError, match=r"--connect small: no such host in labkit's config file \(it names: big\)"):
        uri_for("small", hosts)
    with pytest.raises(LabkitError, match="is not the URI of a host's system libvirt"):
        uri_for("qemu+ssh://teacher@big/session", hosts)


def test_a_host_is_shown_without_its_key_file():
    assert shown(LOCAL) == "this host"
    assert shown("qemu+ssh://root@10.0.0.5/system?keyfile=/home/t/.ssh/lab") == "qemu+ssh://root@10.0.0.5/system"


DOMIFADDR = """\
 Name       MAC address          Protocol     Address
-------------------------------------------------------------------------------
 vnet6      52:54:00:f8:72:08    ipv4         192.168.124.184/24
"""


def test_a_vms_leased_address_is_read_from_domifaddr():
    assert ipv4_leases(DOMIFADDR) == ["192.168.124.184"]
    # an old lease beside a new one (the VM made again): both, so the caller asks Vagrant instead
    assert ipv4_leases(DOMIFADDR + " -          -                    ipv4         192.168.124.9/24\n") == [
        "192.168.124.184",
        "192.168.124.9",
    ]
    assert ipv4_leases(DOMIFADDR.splitlines(keepends=True)[0]) == []


def test_the_management_network_leases_at_once():
    network = ET.fromstring(management_network("labkit-nat-mgmt", IPv4Network("192.168.124.0/24"), nat=False))
    assert network.find("name").text == "labkit-nat-mgmt"
    assert network.find("forward") is None  # isolated: the box has every package
    assert network.find("ip").attrib == {"address": "192.168.124.1", "netmask": "255.255.255.0"}
    assert network.find("ip/dhcp/range").attrib == {"start": "192.168.124.2", "end": "192.168.124.254"}
    # dnsmasq offers an address without first pinging it for 3 s
    options = [o.get("value") for o in network.iter(f"{{{DNSMASQ_XMLNS}}}option")]
    assert options == ["no-ping"]


def test_a_management_network_that_fetches_packages_is_routed():
    network = ET.fromstring(management_network("labkit-nat-mgmt", IPv4Network("10.9.8.0/28"), nat=True))
    assert network.find("forward").get("mode") == "nat"
    assert network.find("ip/dhcp/range").attrib == {"start": "10.9.8.2", "end": "10.9.8.14"}


def test_vagrants_index_forgets_the_lab_removed_and_keeps_the_others(tmp_path, monkeypatch):
    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path))
    index = tmp_path / "data" / "machine-index" / "index"
    index.parent.mkdir(parents=True)
    machine = {"name": "lb0", "provider": "libvirt", "state": "running"}
    index.write_text(
        json.dumps(
            {
                "version": 1,
                "machines": {
                    "a1": {**machine, "vagrantfile_path": "/labs/nat"},
                    "b2": {**machine, "vagrantfile_path": "/labs/nat-x"},
                },
            }
        )
    )
    vagrant.forget(Path("/labs/nat"))
    assert json.loads(index.read_text()) == {
        "version": 1,
        "machines": {"b2": {**machine, "vagrantfile_path": "/labs/nat-x"}},
    }
    index.write_text("{not json")
    vagrant.forget(Path("/labs/nat-x"))  # an index labkit cannot read is Vagrant's to mend
    assert index.read_text() == "{not json"
