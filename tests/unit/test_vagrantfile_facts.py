"""What a rendered Vagrantfile must say, asserted on its own beside the golden files (which an
update mode rewrites): each node's NICs on the right networks with the lab file's addresses,
the memory, the box and the key, read from the lab file itself, not through the model."""

import re

import pytest
import yaml

from labkit.labfile import LABS, load_lab
from labkit.render.vagrantfile import Target, render

KEY = "/home/user/.local/share/labkit/id_ed25519"
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZha2Uga2V5IGZvciB0aGUgZ29sZGVuIGZpbGVz"
LAB_NAMES = sorted(p.name for p in LABS.iterdir() if (p / "lab.yaml").exists())


def nodes_of(text: str) -> dict[str, str]:
    """Node -> its `config.vm.define` block."""
    parts = re.split(r'^  config\.vm\.define "([^"]+)" do \|node\|$', text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


@pytest.mark.parametrize("lab", LAB_NAMES)
@pytest.mark.parametrize("copy", [None, "alice-2"])
def test_each_node_has_its_nics_on_the_lab_networks(lab, copy):
    data = yaml.safe_load((LABS / lab / "lab.yaml").read_text())
    target = Target(driver="qemu", private_key=KEY, public_key=PUBLIC_KEY, name=copy, management="192.168.130.0/24")
    text = render(load_lab(LABS / lab / "lab.yaml"), target)
    name = copy or data["name"]
    blocks = nodes_of(text)
    assert sorted(blocks) == sorted(data["nodes"])
    macs = []
    for node, spec in data["nodes"].items():
        nics = re.findall(
            r'private_network, ip: "([^"]+)", netmask: "[^"]+",\s+mac: "([0-9a-f]{12})".*?'
            r'libvirt__network_name: "([^"]+)"',
            blocks[node],
            flags=re.S,
        )
        expected = sorted((str(addr), f"labkit-{name}-{net}") for net, addr in spec["addresses"].items())
        assert sorted((ip, network) for ip, _, network in nics) == expected, node
        macs += [mac for _, mac, _ in nics]
    assert len(macs) == len(set(macs)), "two NICs share a MAC"
    assert f'config.vm.box = "{target.box}"' in text
    assert f"libvirt.memory = {data.get('memory', 512)}" in text
    assert f'config.ssh.private_key_path = ["{KEY}"]' in text
    assert text.count(PUBLIC_KEY) == 1, "each VM is given the key once, as an OEM string"
    assert f'libvirt.management_network_name = "labkit-{name}-mgmt"' in text
    assert 'libvirt.management_network_address = "192.168.130.0/24"' in text
    # a box that holds every package gets no way out of the management network
    assert 'libvirt.management_network_mode = "none"' in text


def test_a_box_without_labkits_key_gets_vagrants_own_and_a_way_out():
    text = render(load_lab(LABS / "nat" / "lab.yaml"), Target(box="debian/bookworm64"))
    assert "private_key_path" not in text and "oem strings" not in text
    assert 'libvirt.management_network_mode = "nat"' in text
