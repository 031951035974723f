"""The names of a lab's libvirt objects, built in one place and never split at a '-': a node
rs-a, and copies nat and nat-2 side by side on one host, each see only their own objects."""

from ipaddress import ip_network

from labkit.boot import host, names
from labkit.boot.libvirt import Objects, of, strays
from labkit.labfile import LABS, load_lab, parse_lab

NAT = load_lab(LABS / "nat" / "lab.yaml")
DASHED = parse_lab((LABS / "nat" / "lab.yaml").read_text().replace("rs0", "rs-a"), "nat")  # node rs-a
LABS_UP = {"nat": NAT, "nat-2": NAT, "alice": DASHED}  # alice: a copy of the lab with node rs-a
DOMAINS = [d for name, lab in LABS_UP.items() for d in names.domains(name, lab.nodes)]
ON_HOST = Objects(
    domains=DOMAINS,
    volumes=[d + ".img" for d in DOMAINS],
    networks=[n for name, lab in LABS_UP.items() for n in names.networks(name, lab.networks)],
)


def test_every_object_is_named_after_the_lab_or_copy_and_its_part():
    assert names.prefix("nat-2") == "labkit-nat-2-"
    assert names.domain("alice", "rs-a") == "labkit-alice-rs-a"
    assert names.network("nat-2", "ext") == "labkit-nat-2-ext"
    assert names.management("nat-2") == "labkit-nat-2-mgmt"
    assert names.networks("nat", NAT.networks) == ["labkit-nat-ext", "labkit-nat-int", "labkit-nat-mgmt"]
    assert names.volume_domain("labkit-alice-rs-a.img") == "labkit-alice-rs-a"
    assert names.volume_domain("labkit-alice-rs-a_1.img") == "labkit-alice-rs-a"  # a box's second disk
    assert names.volume_domain("labkit-alice-rs-a.qcow2") is None


def test_down_removes_its_own_copys_objects_only():
    nat = of("nat", NAT, ON_HOST)
    assert nat.domains == ["labkit-nat-lb0", "labkit-nat-lb1", "labkit-nat-rs0", "labkit-nat-rs1", "labkit-nat-cl0"]
    assert nat.volumes == [d + ".img" for d in nat.domains]
    assert nat.networks == ["labkit-nat-ext", "labkit-nat-int", "labkit-nat-mgmt"]
    second = of("nat-2", NAT, ON_HOST)
    assert len(second.names()) == 13 and all(n.startswith("labkit-nat-2-") for n in second.names())
    assert "labkit-alice-rs-a" in of("alice", DASHED, ON_HOST).domains
    assert "labkit-alice-rs-a.img" in of("alice", DASHED, ON_HOST).volumes


def test_strays_are_what_no_copy_up_owns():
    assert not strays(LABS_UP, ON_HOST)
    left = strays({"nat": NAT, "alice": DASHED}, ON_HOST)  # nat-2's folder is gone
    assert left.names() == of("nat-2", NAT, ON_HOST).names()


def test_the_host_check_does_not_take_a_neighbours_networks_for_the_labs_own():
    ranges = {
        "labkit-nat-mgmt": ip_network("192.168.124.0/24"),
        "labkit-nat-2-mgmt": ip_network("192.168.125.0/24"),
        "labkit-nat-2-ext": ip_network("192.168.55.0/24"),  # as an older labkit made it, with an address
    }
    assert list(host.others_networks("nat", NAT, ranges)) == [
        "libvirt network labkit-nat-2-mgmt",
        "libvirt network labkit-nat-2-ext",
    ]
    assert host.network_problems(NAT, host.others_networks("nat", NAT, ranges)) == [
        "networks.ext: 192.168.55.0/24 overlaps libvirt network labkit-nat-2-ext (192.168.55.0/24). "
        "Give the lab a range the host does not use"
    ]
    assert list(host.others_networks("nat-2", NAT, ranges)) == ["libvirt network labkit-nat-mgmt"]


def test_labkit_list_groups_another_installations_domains_by_the_folder_vagrant_named():
    ours = set(names.domains("nat", NAT.nodes))
    others = [d for d in [*DOMAINS, "labkit-old-lb0", "labkit-nat-x"] if d not in ours]
    said = {d: "Source: /home/t/.local/share/labkit/labs/nat-2/Vagrantfile" for d in names.domains("nat-2", NAT.nodes)}
    said |= {d: "Source: /srv/labkit/labs/alice/Vagrantfile" for d in names.domains("alice", DASHED.nodes)}
    said["labkit-old-lb0"] = "No description for domain: labkit-old-lb0"
    said["labkit-nat-x"] = "Source: /srv/labkit/labs/bob/Vagrantfile"  # not named after bob: not bob's
    assert names.by_owner(others, said) == {
        "nat-2": names.domains("nat-2", NAT.nodes),
        "alice": ["labkit-alice-lb0", "labkit-alice-lb1", "labkit-alice-rs-a", "labkit-alice-rs1", "labkit-alice-cl0"],
        "old-lb0": ["labkit-old-lb0"],
        "nat-x": ["labkit-nat-x"],
    }
