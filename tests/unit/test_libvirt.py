"""A lab's libvirt objects found by their names, without Vagrant's state."""

from labkit.labfile import LABS, load_lab
from labkit.run.libvirt import Objects, of, strays

NAT = load_lab(LABS / "nat" / "lab.yaml")
SEEN = Objects(
    domains=["labkit-nat-lb0", "labkit-nat-rs1", "labkit-nat-x-lb0", "labkit-tun-lb0"],
    volumes=["labkit-nat-lb0.img", "labkit-nat-x-lb0.img", "labkit-tun-cl0.img"],
    networks=["labkit-nat-ext", "labkit-nat-int", "labkit-nat-x-ext"],
)


def test_a_labs_objects_by_exact_name_not_by_prefix():
    mine = of(NAT, SEEN)
    assert mine.domains == ["labkit-nat-lb0", "labkit-nat-rs1"]  # not the lab nat-x's lb0
    assert mine.volumes == ["labkit-nat-lb0.img"]
    assert mine.networks == ["labkit-nat-ext", "labkit-nat-int"]


def test_strays_are_what_no_lab_that_is_up_owns():
    assert strays([NAT], SEEN).names() == ["labkit-nat-x-lb0", "labkit-tun-lb0", "labkit-nat-x-lb0.img",
                                           "labkit-tun-cl0.img", "labkit-nat-x-ext"]
    assert not strays([NAT], of(NAT, SEEN))
