"""Pure parts of the box builder: no VM, no root, no network."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from labkit import box
from labkit.box import build, image, mirror, store
from labkit.box import kernel as kernel_mod
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


@pytest.mark.parametrize(
    "uri, ok",
    [
        ("http://deb.debian.org/debian", True),
        ("http://snapshot.debian.org/archive/debian/20250520T000000Z", True),
        ("http://debian.example.org/", True),
        ("http://deb.debian.org/debian-security", False),
        ("http://deb.debian.org/debian-debug", False),
        ("cdrom:[Debian]/", False),
    ],
)
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
    the package list and metadata it was built with, and its kernel and initramfs; no SSH key."""
    image = tmp_path / "box.img"
    boot = [tmp_path / build.BOOT_KERNEL, tmp_path / build.BOOT_INITRD]
    for path in boot:
        path.write_bytes(b"\x7fELF")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "1G"], check=True)
    built = {
        "kernel": "6.12.57+deb12-amd64",
        "spec": "bookworm-backports",
        "ipvsadm": "1:1.31-1+b1",
        "ssh_key": "smbios-oem-string",
    }
    packed = build.pack(image, built, tmp_path / "labkit.box", boot)
    with tarfile.open(packed) as tar:
        assert sorted(tar.getnames()) == sorted(
            ["metadata.json", "Vagrantfile", "box.img", "labkit-packages", "labkit-box.json", "vmlinuz", "initrd.img"]
        )
        meta = json.load(tar.extractfile("metadata.json"))
        assert meta == {"provider": "libvirt", "format": "qcow2", "virtual_size": DISK_GIB}
        assert json.load(tar.extractfile("labkit-box.json")) == built


def test_the_kernel_to_boot_is_the_newest_box_versions_when_it_has_one(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path))
    boxes = tmp_path / "boxes" / "labkit-VAGRANTSLASH-bookworm"
    for version in ("2026.12.2.93000", "2026.12.10.80000"):
        folder = boxes / version / "libvirt"
        folder.mkdir(parents=True)
        (folder / image.META_FILE).write_text(json.dumps({"cmdline": f"root=/dev/vda1 {version}"}))
    assert box.boot_files("labkit/bookworm") is None  # an older box: no kernel beside its image
    newest = boxes / "2026.12.10.80000" / "libvirt"
    for name in (image.BOOT_KERNEL, image.BOOT_INITRD, store.BOX_IMAGE):
        (newest / name).write_bytes(b"")
    assert box.boot_files("labkit/bookworm") == box.BootFiles(
        "2026.12.10.80000",
        newest / "vmlinuz",
        newest / "initrd.img",
        "root=/dev/vda1 2026.12.10.80000",
        newest / "box.img",
    )
    assert box.boot_files("debian/bookworm64") is None


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
    table = json.loads(subprocess.run([sfdisk, "--json", str(raw)], capture_output=True, text=True, check=True).stdout)[
        "partitiontable"
    ]
    assert (table["label"], table["id"]) == ("dos", "0xd0b2c7a4")
    (part,) = table["partitions"]
    assert (part["start"], part["size"], part["type"], part.get("bootable")) == (2048, 64 * 2048 - 2048, "83", True)


def test_a_box_with_an_older_package_list_is_not_current(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path))
    folder = tmp_path / "boxes" / "labkit-VAGRANTSLASH-bookworm" / "0" / "libvirt"
    folder.mkdir(parents=True)
    assert not box.box_has_packages("labkit/bookworm")  # built before the list was kept
    (folder / image.PACKAGES_FILE).write_text("curl ipvsadm\n")
    assert not box.box_has_packages("labkit/bookworm")
    (folder / image.PACKAGES_FILE).write_text(box.package_list())
    assert box.box_has_packages("labkit/bookworm")


@pytest.mark.parametrize("spec", ["bookworm", "bookworm-backports", "trixie", "sid"])
def test_a_debian_suite_is_a_kernel(spec):
    kernel = box.parse_kernel(spec)
    assert (kernel.suite, kernel.deb, kernel.is_default) == (spec, None, spec == "bookworm")


def kernel_deb(tmp_path: Path, package: str, modules: list[str], builtin: list[str] = ()) -> Path:
    """A small .deb laid out as make bindeb-pkg lays out a kernel image package."""
    root = tmp_path / package
    folder = root / "lib/modules/6.18.0"
    (folder / "kernel").mkdir(parents=True)
    for module in modules:
        (folder / "kernel" / f"{module}.ko.xz").write_bytes(b"")
    (folder / "modules.builtin").write_text("".join(f"kernel/{m}.ko\n" for m in builtin))
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text(
        f"Package: {package}\nVersion: 6.18.0-1\nArchitecture: amd64\n"
        "Maintainer: a developer <dev@example.org>\nDescription: a kernel\n"
    )
    deb = tmp_path / f"{package}_6.18.0-1_amd64.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)], check=True, capture_output=True
    )
    return deb


def test_a_kernel_package_is_a_kernel(tmp_path: Path):
    deb = kernel_deb(tmp_path, "linux-image-6.18.0-rc1+", list(kernel_mod.NEEDED_MODULES))
    kernel = box.parse_kernel(str(deb))
    assert kernel.deb == deb and kernel.suite is None
    assert kernel.deb_sha256 == hashlib.sha256(deb.read_bytes()).hexdigest()
    kernel_mod.check_package(kernel)  # it has every module the labs need


def test_a_kernel_package_without_ipvs_is_refused_before_anything_is_built(tmp_path: Path):
    modules = [m for m in kernel_mod.NEEDED_MODULES if m not in ("ip_vs_wlc", "ipip", "ext4")]
    deb = kernel_deb(tmp_path, "linux-image-6.18.0", modules, builtin=["ext4"])
    with pytest.raises(
        box.BoxError,
        match=r"kernel linux-image-6.18.0_6.18.0-1_amd64.deb \(from .*\) "
        r"has no ip_vs_wlc, ipip: the labs need them",
    ):
        kernel_mod.check_package(box.parse_kernel(str(deb)))


def test_a_file_that_is_not_a_kernel_package_is_refused(tmp_path: Path):
    junk = tmp_path / "linux-image-6.18.deb"
    junk.write_bytes(b"not a package at all")
    with pytest.raises(box.BoxError, match="linux-image-6.18.deb is not a Debian package"):
        box.parse_kernel(str(junk))
    headers = kernel_deb(tmp_path, "linux-headers-6.18.0", [])
    renamed = headers.rename(tmp_path / "linux-image-6.18.0_6.18.0-1_amd64.deb")
    with pytest.raises(box.BoxError, match="holds linux-headers-6.18.0, not a kernel image"):
        box.parse_kernel(str(renamed))


@pytest.mark.parametrize(
    "spec, says",
    [
        ("buster", "unknown kernel 'buster': give a Debian suite (bookworm, bookworm-backports, trixie, sid)"),
        ("6.12", "unknown kernel '6.12'"),
        ("/nowhere/linux-image-6.18.deb", "/nowhere/linux-image-6.18.deb does not exist"),
    ],
)
def test_what_is_not_a_kernel_says_what_is(spec, says):
    with pytest.raises(box.BoxError, match=re.escape(says)):
        box.parse_kernel(spec)


def test_a_kernel_without_ipvs_or_ipip_is_refused(tmp_path: Path):
    modules = tmp_path / "lib/modules/6.18.0"
    modules.mkdir(parents=True)
    dep = [f"kernel/x/{m}.ko.xz: " for m in kernel_mod.NEEDED_MODULES if m not in ("ip_vs_sh", "ipip")]
    (modules / "modules.dep").write_text("\n".join(dep) + "\n")
    (modules / "modules.builtin").write_text("kernel/net/ipv4/ipip.ko\n")  # built in counts
    assert kernel_mod.missing_modules(tmp_path, "6.18.0") == ["ip_vs_sh"]
    with pytest.raises(box.BoxError, match="kernel 6.18.0 .from sid. has no ip_vs_sh: the labs need them"):
        kernel_mod.check_modules(tmp_path, box.parse_kernel("sid"), "6.18.0")


def test_a_kernel_box_is_named_after_its_release():
    assert kernel_mod.box_name("6.12.57+deb12-amd64") == "labkit/linux-6.12.57-deb12-amd64"
    assert box.is_labkit_box(kernel_mod.box_name("6.18.0-rc1+"))
    assert not box.is_labkit_box("debian/bookworm64")


def _installed_box(home: Path, name: str, version: str, meta: dict | None) -> None:
    folder = home / "boxes" / name.replace("/", "-VAGRANTSLASH-") / version / "libvirt"
    folder.mkdir(parents=True)
    if meta is not None:
        (folder / image.META_FILE).write_text(json.dumps(meta))


def test_the_box_for_a_kernel_is_the_newest_built_from_it(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path))
    _installed_box(tmp_path, "labkit/bookworm", "0", None)  # built before labkit kept metadata
    _installed_box(
        tmp_path,
        "labkit/linux-6.12.48",
        "2026.10.01.100000",
        {"kernel": "6.12.48", "spec": "bookworm-backports", "built": "2026-10-01T10:00:00Z"},
    )
    _installed_box(
        tmp_path,
        "labkit/linux-6.12.57",
        "2026.11.29.100000",
        {"kernel": "6.12.57", "spec": "bookworm-backports", "built": "2026-11-29T10:00:00Z"},
    )
    _installed_box(tmp_path, "someone/else", "1", {"kernel": "5.10", "spec": "trixie"})
    listed = box.labkit_boxes()
    assert [(b.name, b.kernel) for b in listed] == [
        ("labkit/bookworm", ""),
        ("labkit/linux-6.12.48", "6.12.48"),
        ("labkit/linux-6.12.57", "6.12.57"),
    ]
    assert store.box_for(box.parse_kernel("bookworm-backports")) == "labkit/linux-6.12.57"
    with pytest.raises(box.BoxError, match="no box for kernel trixie. Build it with: labkit box build --kernel trixie"):
        box.box_for_kernel("trixie")
