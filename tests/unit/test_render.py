"""Vagrantfiles rendered from the shipped labs, compared with golden files.

After an intended change to Vagrantfile.j2, refresh them with:
    LABKIT_UPDATE_GOLDEN=1 python -m pytest tests/unit/test_render.py
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from labkit.labfile import LABS, load_lab
from labkit.render.vagrantfile import Provider, Target, render

GOLDEN = Path(__file__).parent / "golden"

PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZha2Uga2V5IGZvciB0aGUgZ29sZGVuIGZpbGVz"
TARGETS = {
    "nat-libvirt-qemu": (
        "nat",
        Target(
            driver="qemu",
            emulator="/usr/local/libexec/labkit-qemu-tcg",
            private_key="/home/user/.local/share/labkit/id_ed25519",
            public_key=PUBLIC_KEY,
            boot_kernel="/var/lib/libvirt/images/labkit-VAGRANTSLASH-bookworm_vagrant_box_image_2026.12.02_vmlinuz",
            boot_initrd="/var/lib/libvirt/images/labkit-VAGRANTSLASH-bookworm_vagrant_box_image_2026.12.02_initrd.img",
            boot_cmdline="root=/dev/vda1 rw quiet console=ttyS0",
            base_disk="/var/lib/libvirt/images/labkit-VAGRANTSLASH-bookworm_vagrant_box_image_2026.12.02_box.img",
        ),
    ),
    "tun-libvirt-kvm": (
        "tun",
        Target(driver="kvm", private_key="/home/user/.local/share/labkit/id_ed25519", public_key=PUBLIC_KEY),
    ),
    "dr-libvirt-otherbox": ("dr", Target(box="debian/bookworm64")),
    "nat-virtualbox": ("nat", Target(provider=Provider.virtualbox, box="debian/bookworm64")),
    # a copy on another host: named after the copy, its own management range, no console file there
    "nat-copy-remote": (
        "nat",
        Target(
            driver="qemu",
            private_key="/home/user/.local/share/labkit/id_ed25519",
            name="alice",
            uri="qemu+ssh://teacher@lab-server/system",
            management="192.168.126.0/24",
        ),
    ),
}


@pytest.mark.parametrize("name", TARGETS)
def test_golden(name):
    lab, target = TARGETS[name]
    target = Target(**{**target.__dict__, "source": f"labs/{lab}/lab.yaml"})
    text = render(load_lab(LABS / lab / "lab.yaml"), target)
    golden = GOLDEN / f"{name}.Vagrantfile"
    if os.environ.get("LABKIT_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby (from vagrant) checks the syntax")
@pytest.mark.parametrize("name", TARGETS)
def test_golden_is_valid_ruby(name):
    result = subprocess.run(["ruby", "-c", str(GOLDEN / f"{name}.Vagrantfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_labkit_box_on_this_host_gives_vagrant_no_box_and_each_vm_its_disk():
    text = (GOLDEN / "nat-libvirt-qemu.Vagrantfile").read_text()
    assert "config.vm.box =" not in text  # Vagrant neither handles a box nor waits for SSH
    for node in ("lb0", "lb1", "rs0", "rs1", "cl0"):
        assert (
            f'libvirt.storage :file, :path => "labkit-nat-{node}.img", :type => "qcow2", :allow_existing => true'
            in text
        )
    other = (GOLDEN / "nat-copy-remote.Vagrantfile").read_text()  # on another host Vagrant waits, through it
    assert 'config.vm.box = "labkit/bookworm"' in other and "libvirt.storage" not in other


def test_each_interface_has_its_own_mac():
    from labkit.render.vagrantfile import interfaces

    lab = load_lab(LABS / "tun" / "lab.yaml")
    macs = [i.mac for node in lab.nodes for i in interfaces(lab, node)]
    assert len(macs) == len(set(macs)) == 9


def test_the_tcg_wrapper_caps_the_translation_cache_and_passes_the_rest(tmp_path):
    wrapper = (Path(__file__).resolve().parents[2] / "labkit/render/qemu-tcg").read_text()
    echo = tmp_path / "qemu"
    echo.write_text(wrapper.replace("exec /usr/bin/qemu-system-x86_64", "printf '%s\\n'"))
    args = ["-name", "guest=tcg", "-accel", "tcg", "-cpu", "qemu64", "-m", "512"]
    seen = subprocess.run(["sh", str(echo), *args], capture_output=True, text=True, check=True).stdout.split("\n")[:-1]
    assert seen == ["-name", "guest=tcg", "-accel", "tcg,tb-size=128", "-cpu", "qemu64", "-m", "512"]
