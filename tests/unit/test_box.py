"""Pure parts of the box builder: no VM, no root, no network."""

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from labkit import box
from labkit.box import build, image, mirror, store
from labkit.box.image import DISK_GIB

ONE_LINE = """\
# deb cdrom:[Debian GNU/Linux 12]/ bookworm main
deb-src http://src.example.org/debian bookworm main
deb http://security.debian.org/debian-security bookworm-security main
deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://ftp.fr.debian.org/debian/ bookworm main
deb http://ftp.de.debian.org/debian bookworm-updates main
"""

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main

Types: deb deb-src
URIs: http://mirror.example.net/pub/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def test_one_line_format_skips_security_comments_and_deb_src():
    assert box.mirror_from_sources(ONE_LINE, deb822=False) == "http://ftp.fr.debian.org/debian"


def test_deb822_format_skips_security_stanza():
    assert box.mirror_from_sources(DEB822, deb822=True) == "http://mirror.example.net/pub/debian"


def test_deb822_disabled_stanza_and_continuation_lines():
    text = """\
Types: deb
URIs: http://off.example.org/debian
Suites: bookworm
Enabled: no

Types: deb
URIs:
 http://first.example.org/debian
 http://second.example.org/debian
Suites: bookworm
"""
    assert box.mirror_from_sources(text, deb822=True) == "http://first.example.org/debian"


def test_non_debian_repositories_are_ignored():
    text = "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n"
    assert box.mirror_from_sources(text, deb822=False) is None
    text = "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\n"
    assert box.mirror_from_sources(text, deb822=True) is None


@pytest.mark.parametrize("uri, ok", [
    ("http://deb.debian.org/debian", True),
    ("http://snapshot.debian.org/archive/debian/20250520T000000Z", True),
    ("http://debian.example.org/", True),
    ("http://deb.debian.org/debian-security", False),
    ("http://deb.debian.org/debian-debug", False),
    ("cdrom:[Debian]/", False),
])
def test_what_counts_as_a_debian_archive(uri, ok):
    assert box.mirror_from_sources(f"deb {uri} bookworm main\n", deb822=False) == (uri.rstrip("/") if ok else None)


def test_debian_mirror_reads_sources_list_first(tmp_path: Path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("deb http://one.example.org/debian bookworm main\n")
    (tmp_path / "sources.list.d/debian.sources").write_text(DEB822)
    assert box.debian_mirror(tmp_path) == "http://one.example.org/debian"


def test_debian_mirror_reads_sources_list_d_and_ignores_other_suffixes(tmp_path: Path):
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (parts / "a.list.disabled").write_text("deb http://disabled.example.org/debian bookworm main\n")
    (parts / "b.list").write_text("deb https://packages.cloud.google.com/apt cloud-sdk main\n")
    (parts / "c.sources").write_text(DEB822)
    assert box.debian_mirror(tmp_path) == "http://mirror.example.net/pub/debian"


def test_debian_mirror_falls_back(tmp_path: Path):
    assert box.debian_mirror(tmp_path) == mirror.FALLBACK_MIRROR == "http://deb.debian.org/debian"


def test_the_box_file_holds_what_vagrant_libvirt_reads(tmp_path: Path):
    """The box is a tar of a qcow2 image, metadata.json naming the provider, format and size,
    and the key and package list it was built with."""
    image = tmp_path / "box.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "1G"], check=True)
    packed = build.pack(image, "ssh-ed25519 AAAA labkit", tmp_path / "labkit.box")
    with tarfile.open(packed) as tar:
        assert sorted(tar.getnames()) == sorted(["metadata.json", "Vagrantfile", "box.img", "labkit-key.pub",
                                                 "labkit-packages"])
        meta = json.load(tar.extractfile("metadata.json"))
        assert meta == {"provider": "libvirt", "format": "qcow2", "virtual_size": DISK_GIB}
        assert tar.extractfile("labkit-key.pub").read() == b"ssh-ed25519 AAAA labkit\n"


def test_base_volume_prefix_matches_vagrant_libvirt_names():
    prefix = store.base_volume_prefix("labkit/bookworm")
    assert "labkit-VAGRANTSLASH-bookworm_vagrant_box_image_0_box.img".startswith(prefix)
    assert "labkit-VAGRANTSLASH-bookworm_vagrant_box_image_0_1795323187_box.img".startswith(prefix)
    assert not "labkit-nat-lb0.img".startswith(prefix)


def test_sfdisk_makes_one_bootable_linux_partition_from_1_mib(tmp_path: Path):
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as disk:
        disk.truncate(64 * 1024**2)
    root = "d0b2c7a4-1111-4222-8333-944445555666"
    sfdisk = shutil.which("sfdisk", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    subprocess.run([sfdisk, "--quiet", str(raw)], input=image.partition_table(root), text=True, check=True)
    table = json.loads(subprocess.run([sfdisk, "--json", str(raw)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    assert (table["label"], table["id"]) == ("dos", "0xd0b2c7a4")
    (part,) = table["partitions"]
    assert (part["start"], part["size"], part["type"], part.get("bootable")) == (2048, 64 * 2048 - 2048, "83", True)


@pytest.mark.parametrize("key", [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB labkit@host\n",
    "ecdsa-sha2-nistp256 AAAAE2VjZHNh",
])
def test_public_key_accepted(key):
    assert image._check_public_key(key) == key.strip()


@pytest.mark.parametrize("key", [
    "",
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n",
    "ssh-ed25519 AAAA a\nssh-ed25519 BBBB b",
])
def test_public_key_rejected(key):
    with pytest.raises(box.BoxError):
        image._check_public_key(key)


def test_a_box_with_an_older_package_list_is_not_current(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path))
    folder = tmp_path / "boxes" / "labkit-VAGRANTSLASH-bookworm" / "0" / "libvirt"
    folder.mkdir(parents=True)
    assert not box.box_has_packages("labkit/bookworm")  # built before the list was kept
    (folder / image.PACKAGES_FILE).write_text("curl ipvsadm\n")
    assert not box.box_has_packages("labkit/bookworm")
    (folder / image.PACKAGES_FILE).write_text(box.package_list())
    assert box.box_has_packages("labkit/bookworm")
