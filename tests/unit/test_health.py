"""A lab's health as libvirt's listings say it, and what verify then leaves out."""

import pytest

from labkit.boot.health import MISSING, Health, Nic, network_states, nics
from labkit.labfile import LABS, load_lab
from labkit.verify.checks.plugin import needed, needs

NAT = load_lab(LABS / "nat" / "lab.yaml")

NET_LIST = """\
 Name              State      Autostart   Persistent
------------------------------------------------------
 default           inactive   no          yes
 labkit-nat-ext    active     no          yes
 labkit-nat-int    inactive   no          yes
 labkit-nat-mgmt   active     no          yes
"""
DOMIFLIST = """\
 Interface   Type      Source            Model    MAC
-------------------------------------------------------------------
 vnet0       network   labkit-nat-mgmt   virtio   52:54:00:5b:1e:0a
 vnet1       network   labkit-nat-int    virtio   52:54:00:aa:66:6f
"""


def test_listings_read():
    assert network_states(NET_LIST)["labkit-nat-int"] == "inactive"
    assert network_states(NET_LIST)["labkit-nat-ext"] == "active"
    assert nics(DOMIFLIST) == [Nic("vnet0", "labkit-nat-mgmt"), Nic("vnet1", "labkit-nat-int")]


def test_each_fault_is_one_line_with_its_repair():
    health = Health(
        "nat",
        vms={"lb0": "running", "lb1": "paused", "rs0": "running", "rs1": "shutoff", "cl0": MISSING},
        networks={"labkit-nat-ext": "active", "labkit-nat-int": "inactive", "labkit-nat-mgmt": "active"},
        detached={"rs0": [Nic("vnet4", "labkit-nat-int")]},
        disks={"lb0": True, "lb1": True, "rs0": True, "rs1": False},
    )
    assert health.down() == {
        "lb1": "its VM is paused",
        "rs0": "its NICs on labkit-nat-int are cut off (the network was stopped under it)",
        "rs1": "its VM is shutoff",
        "cl0": "its VM is gone",
    }
    assert health.problems() == [
        "network labkit-nat-int is inactive: labkit up nat repairs it",
        "lb1: its VM is paused: labkit heal nat resumes it",
        "rs0: its NICs on labkit-nat-int are cut off (the network was stopped under it): labkit up nat repairs it",
        "rs1: its VM is shutoff: labkit up nat repairs it",
        "cl0: its VM is gone: labkit up nat repairs it",
        "rs1: its disk volume is gone: labkit up nat makes the VM again from the box",
    ]


class Item:
    """What needs() reads of a collected check."""

    def __init__(self, marker=None, **params):
        self.callspec = type("Callspec", (), {"params": params})()
        self.marker = marker

    def get_closest_marker(self, name):
        return self.marker if name == self.marker else None


@pytest.mark.parametrize(
    ("item", "nodes"),
    [
        (Item(node="rs1"), {"rs1"}),
        (Item(svc=NAT.services[0]), {"cl0", "lb0", "rs0", "rs1"}),
        (Item(), set(NAT.nodes)),  # a check of the whole lab
        (Item("failover", master="lb0"), set(NAT.nodes)),
    ],
)
def test_a_check_needs_the_nodes_it_touches(item, nodes):
    assert needs(item, NAT) == nodes


def test_verify_asks_only_the_nodes_its_chosen_checks_need():
    assert needed([Item(node="rs1"), Item(svc=NAT.services[0])], NAT) == ["lb0", "rs0", "rs1", "cl0"]
    assert needed([Item(node="rs1"), Item(node="lb0")], NAT) == ["lb0", "rs1"]
    assert needed([Item(node="rs1"), Item()], NAT) == list(NAT.nodes)
    assert needed([], NAT) == []


def test_a_vm_saved_by_stop_is_resumed_by_up():
    health = Health("nat", vms={"lb0": "saved", "lb1": "running"}, disks={"lb0": True, "lb1": True})
    assert health.down() == {"lb0": "its VM is saved"}
    assert health.problems() == ["lb0: its VM is saved: labkit up nat resumes it"]
