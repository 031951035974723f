"""Pure parts of the box builder: no VM, no root, no network."""

import json
import struct
from pathlib import Path

import pytest

from labkit import box

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
    assert box.debian_mirror(tmp_path) == box.FALLBACK_MIRROR == "http://deb.debian.org/debian"


def test_metadata_is_what_vagrant_libvirt_expects():
    meta = json.loads(json.dumps(box.box_metadata()))
    assert meta == {"provider": "libvirt", "format": "qcow2", "virtual_size": box.DISK_GIB}


def test_parse_box_list_machine_readable():
    out = """\
1700000000,,ui,info,labkit/bookworm (libvirt%!(VAGRANT_COMMA) 0)
1700000000,,box-name,labkit/bookworm
1700000000,,box-provider,libvirt
1700000000,,box-version,0
1700000000,,box-name,other/box
1700000000,,box-provider,virtualbox
1700000000,,box-version,1.0
"""
    assert box.parse_box_list(out) == {("labkit/bookworm", "libvirt"), ("other/box", "virtualbox")}


def test_base_volume_prefix_matches_vagrant_libvirt_names():
    prefix = box.base_volume_prefix("labkit/bookworm")
    assert "labkit-VAGRANTSLASH-bookworm_vagrant_box_image_0_box.img".startswith(prefix)
    assert "labkit-VAGRANTSLASH-bookworm_vagrant_box_image_0_1795323187_box.img".startswith(prefix)
    assert not "labkit-nat-lb0.img".startswith(prefix)


def test_mbr_has_one_bootable_linux_partition():
    total = box.DISK_GIB * 1024**3 // box.SECTOR
    sector = box.mbr(b"\xeb" * 500, box.PART_START, total - box.PART_START, b"ABCD")
    assert len(sector) == 512
    assert sector[:440] == b"\xeb" * 440  # boot code cut to its slot
    assert sector[440:444] == b"ABCD"
    assert sector[510:] == b"\x55\xaa"
    status, chs_start, ptype, chs_end, start, count = struct.unpack("<B3sB3sII", sector[446:462])
    assert (status, ptype, start, count) == (0x80, 0x83, 2048, total - 2048)
    assert chs_start == bytes([32, 33, 0])  # LBA 2048 = cylinder 0, head 32, sector 33
    # last LBA 8388607 = cylinder 522 (0x20A), head 42, sector 32; cylinder bits 8-9 go in the sector byte
    assert chs_end == bytes([42, 32 | 0x80, 0x0A])
    assert sector[462:510] == bytes(48)  # the other three entries are empty


def test_chs_past_1023_cylinders_says_use_lba():
    assert box._chs(1024 * 255 * 63) == bytes([254, 0xFF, 0xFF])


@pytest.mark.parametrize("key", [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB labkit@host\n",
    "ecdsa-sha2-nistp256 AAAAE2VjZHNh",
])
def test_public_key_accepted(key):
    assert box._check_public_key(key) == key.strip()


@pytest.mark.parametrize("key", [
    "",
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n",
    "ssh-ed25519 AAAA a\nssh-ed25519 BBBB b",
])
def test_public_key_rejected(key):
    with pytest.raises(box.BoxError):
        box._check_public_key(key)


def test_a_box_with_an_older_package_list_is_not_current(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path))
    folder = tmp_path / "boxes" / "labkit-VAGRANTSLASH-bookworm" / "0" / "libvirt"
    folder.mkdir(parents=True)
    assert not box.box_has_packages("labkit/bookworm")  # built before the list was kept
    (folder / box.PACKAGES_FILE).write_text("curl ipvsadm\n")
    assert not box.box_has_packages("labkit/bookworm")
    (folder / box.PACKAGES_FILE).write_text(box.package_list())
    assert box.box_has_packages("labkit/bookworm")
