"""A box that trusts the key it is given at boot, and a box handed around as one file:
the guest's reading of SMBIOS OEM strings, export and import of a small fake box."""

import json
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from labkit import box
from labkit.box import guest_key, image, share
from labkit.cli import app
from labkit.labfile import LABS, load_lab
from labkit.render.vagrantfile import Target, render

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZha2Uga2V5IGZvciB0aGUgdGVzdHM="


def structure(kind: int, formatted: bytes, strings: list[str], handle: int = 0) -> bytes:
    """One SMBIOS structure as the kernel shows it in /sys/firmware/dmi/entries/*/raw."""
    header = struct.pack("<BBH", kind, 4 + len(formatted), handle) + formatted
    text = b"".join(s.encode() + b"\0" for s in strings) or b"\0"
    return header + text + b"\0"


def oem_entry(strings: list[str]) -> bytes:
    return structure(11, bytes([len(strings)]), strings, handle=0x0B00)


# ------------------------------------------------------------------ the guest's side
# The guest's script is run here as the guest runs it: sh (dash where there is one), od and awk.

SH = shutil.which("dash") or "sh"


def guest_reads(tmp_path: Path, entries: dict[str, bytes] | None = None, table: bytes | None = None) -> str:
    """What the guest script writes to authorized_keys, given the kernel's DMI files."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    script = tmp_path / "labkit-ssh-key"
    script.write_text(guest_key.SCRIPT)
    folder, whole = tmp_path / "entries", tmp_path / "DMI"
    for name, blob in (entries or {}).items():
        (folder / name).mkdir(parents=True)
        (folder / name / "raw").write_bytes(blob)
    if table is not None:
        whole.write_bytes(table)
    keys = tmp_path / "home/vagrant/.ssh/authorized_keys"
    keys.parent.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([SH, str(script), str(folder), str(whole), str(keys)], check=True, capture_output=True)
    return keys.read_text()


def test_the_key_is_read_from_an_oem_strings_entry(tmp_path: Path):
    blob = oem_entry(["something else", guest_key.OEM_KEY_PREFIX + KEY])
    assert guest_reads(tmp_path, {"11-0": blob}) == KEY + "\n"


def test_every_labkit_key_of_every_entry_is_trusted(tmp_path: Path):
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE90aGVyIGtleQ=="
    entries = {"11-0": oem_entry([guest_key.OEM_KEY_PREFIX + KEY]), "11-1": oem_entry(["labkit-ssh-key:  " + other])}
    assert guest_reads(tmp_path, entries) == KEY + "\n" + other + "\n"


def test_the_key_is_found_in_a_whole_table(tmp_path: Path):
    table = (
        structure(0, b"\x01\x02\x00\xf0\x00\x00", ["SeaBIOS", "1.16"])
        + structure(1, bytes(23), [])  # no strings: the structure ends in two NULs
        + oem_entry([guest_key.OEM_KEY_PREFIX + KEY])
        + structure(127, b"", [])
        + oem_entry([guest_key.OEM_KEY_PREFIX + "ssh-ed25519 AFTERTHEEND"])
    )
    assert guest_reads(tmp_path, table=table) == KEY + "\n"


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        oem_entry([]),
        oem_entry(["labkit-ssh-key: not a key"]),
        oem_entry(["labkit-ssh-key: ssh-ed25519 AAAA\nssh-rsa BBBB"]),
        oem_entry(["labkit-ssh-key: ssh-ed25519 AAAA; rm -rf /"]),
        oem_entry(["ssh-key: " + KEY]),
        oem_entry(["x labkit-ssh-key: " + KEY]),
        oem_entry([guest_key.OEM_KEY_PREFIX + KEY])[:-6],  # cut short
        b"\x0b\x00\x00\x00",  # a length below the header's: not SMBIOS
    ],
)
def test_no_key_or_a_malformed_one_gives_no_key(tmp_path: Path, blob):
    assert guest_reads(tmp_path, {"11-0": blob}) == ""


def test_the_entries_are_read_and_the_table_only_without_them(tmp_path: Path):
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFRhYmxlIGtleQ=="
    table = oem_entry([guest_key.OEM_KEY_PREFIX + other])
    entries = {"11-0": oem_entry([guest_key.OEM_KEY_PREFIX + KEY]), "1-0": structure(1, bytes(23), [])}
    assert guest_reads(tmp_path / "a", entries, table) == KEY + "\n"
    assert guest_reads(tmp_path / "b", {"1-0": structure(1, bytes(23), [])}, table) == other + "\n"
    assert guest_reads(tmp_path / "c") == ""


def test_authorized_keys_is_replaced_whole_and_private(tmp_path: Path):
    path = tmp_path / "home/vagrant/.ssh/authorized_keys"
    path.parent.mkdir(parents=True)
    path.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE9sZCBrZXk= an old key\n")
    assert guest_reads(tmp_path, {"11-0": oem_entry([guest_key.OEM_KEY_PREFIX + KEY])}) == KEY + "\n"
    assert (path.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    (tmp_path / "entries").rename(tmp_path / "before")
    assert guest_reads(tmp_path) == ""  # a boot without a key trusts none
    assert [p.name for p in path.parent.iterdir()] == ["authorized_keys"]


def test_the_image_runs_the_script_before_sshd():
    assert "Before=ssh.service" in image.GUEST_KEY_UNIT
    assert f"ExecStart={image.GUEST_KEY_SCRIPT}" in image.GUEST_KEY_UNIT
    # no python3 at boot: under emulation its start-up alone took seconds
    assert guest_key.SCRIPT.startswith("#!/bin/sh\n") and "python" not in guest_key.SCRIPT


def test_the_vagrantfile_gives_each_vm_the_key_as_an_oem_string():
    lab = load_lab(LABS / "nat" / "lab.yaml")
    text = render(lab, Target(driver="qemu", private_key="/k/id_ed25519", public_key=KEY))
    line = f'libvirt.sysinfo = {{ "oem strings" => ["labkit-ssh-key: {KEY}"] }}'
    assert text.count(line) == 1  # in the provider block every VM shares
    assert "sysinfo" not in render(lab, Target(box="debian/bookworm64"))


def test_render_passes_this_installations_key(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["render", "fwmark", "--accel", "tcg", "--box", "labkit/any"])
    assert result.exit_code == 0, result.output
    public = (tmp_path / "id_ed25519.pub").read_text().split()
    assert f'"labkit-ssh-key: {public[0]} {public[1]}"' in result.stdout


# ------------------------------------------------------------------ which installed box is current


def installed_box(vagrant_home: Path, name: str, version: str, meta: dict, img: bytes = b"") -> Path:
    folder = vagrant_home / "boxes" / name.replace("/", "-VAGRANTSLASH-") / version / "libvirt"
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text('{"provider": "libvirt", "format": "qcow2", "virtual_size": 4}\n')
    (folder / "Vagrantfile").write_text('Vagrant.configure("2") do |config|\nend\n')
    (folder / image.PACKAGES_FILE).write_text(box.package_list())
    (folder / image.META_FILE).write_text(json.dumps(meta))
    (folder / "box.img").write_bytes(img)
    for member in share.BOOT_MEMBERS:
        (folder / member).write_bytes(b"\x7fELF " + member.encode())
    (folder / "box_update_check").write_text("Vagrant's own")
    return folder


CURRENT = {
    "kernel": "6.1.0-50-amd64",
    "spec": "bookworm",
    "ssh_key": guest_key.KEY_SOURCE,
    "box_format": image.BOX_FORMAT,
}


def test_a_box_with_a_key_built_in_is_outdated(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path))
    folder = installed_box(tmp_path, "labkit/bookworm", "1", {"kernel": "6.1.0-50-amd64"})
    (folder / "labkit-key.pub").write_text(KEY + "\n")  # how an older labkit built it
    assert not box.box_takes_key_at_boot("labkit/bookworm")
    installed_box(tmp_path, "labkit/sid", "1", CURRENT)
    assert box.box_takes_key_at_boot("labkit/sid")
    assert not box.box_takes_key_at_boot("labkit/none")


@pytest.mark.parametrize(
    "meta, packages, why",
    [
        (CURRENT, None, None),
        ({**CURRENT, "box_format": image.BOX_FORMAT + 1}, None, "built by an older labkit"),  # a newer one's
        ({k: v for k, v in CURRENT.items() if k != "box_format"}, None, "built by an older labkit, and boots slower"),
        ({**CURRENT, "box_format": 1}, None, "built by an older labkit"),
        ({**CURRENT, "box_format": "2"}, None, "built by an older labkit"),
        ({"kernel": "6.1.0-50-amd64"}, None, "has an SSH key built in"),
        (CURRENT, "curl ipvsadm\n", "lacks packages labkit now uses"),
    ],
)
def test_which_installed_box_is_built_again(tmp_path: Path, monkeypatch, meta, packages, why):
    """labkit box build (and so scripts/setup and CI, where boxes persist) builds again a box
    an older labkit made; the same for a kernel's box."""
    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path))
    for name in ("labkit/bookworm", "labkit/linux-6.12.57-deb12-amd64"):
        folder = installed_box(tmp_path, name, "1", meta)
        if packages is not None:
            (folder / image.PACKAGES_FILE).write_text(packages)
        found = box.why_outdated(name)
        assert found == why if why is None else why in found
        assert box.box_boots_lean(name) == (meta.get("box_format") == image.BOX_FORMAT)
    assert box.why_outdated("labkit/none") == "has an SSH key built in (an older labkit)"


# ------------------------------------------------------------------ export and import

IMG = b"QFI\xfb" + bytes(range(256)) * 16  # a few KiB standing for the qcow2 image


@pytest.fixture
def exported(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path / "teacher"))
    installed_box(tmp_path / "teacher", "labkit/keytest", "2026.11.29.073021", CURRENT, IMG)
    file = tmp_path / "keytest.box"
    shared = box.export_box(file, "labkit/keytest")
    assert (shared.name, shared.version, shared.kernel, shared.size) == (
        "labkit/keytest",
        "2026.11.29.073021",
        "6.1.0-50-amd64",
        file.stat().st_size,
    )
    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path / "student"))
    return file


def test_an_export_holds_the_box_and_a_manifest_of_it(exported: Path):
    with tarfile.open(exported) as tar:
        # not Vagrant's box_update_check; the kernel and initramfs too
        assert tar.getnames() == [*share.MEMBERS, *share.BOOT_MEMBERS, share.MANIFEST]
        manifest = json.load(tar.extractfile(share.MANIFEST))
    assert {k: manifest[k] for k in ("box", "version", "kernel", "spec", "ssh_key")} == {
        "box": "labkit/keytest",
        "version": "2026.11.29.073021",
        "kernel": "6.1.0-50-amd64",
        "spec": "bookworm",
        "ssh_key": "smbios-oem-string",
    }
    assert manifest["packages"] == box.package_list().split() and manifest["labkit"]
    assert manifest["members"]["box.img"]["size"] == len(IMG)
    assert share.read_export(exported) == manifest


def test_a_box_with_a_key_built_in_is_not_exported(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path))
    installed_box(tmp_path, "labkit/bookworm", "1", {"kernel": "6.1.0-50-amd64"})
    with pytest.raises(box.BoxError, match="rebuild it with labkit box build --force"):
        box.export_box(tmp_path / "x.box")
    assert not (tmp_path / "x.box").exists() and not (tmp_path / "x.box.partial").exists()


def flip(file: Path, offset: int) -> None:
    with file.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def test_a_flipped_byte_is_refused_naming_the_member(exported: Path):
    flip(exported, exported.read_bytes().index(IMG) + 1000)
    with pytest.raises(
        box.BoxError,
        match=r"box.img does not match its sha256 in the export, the file is "
        r"damaged; copy it again from whoever exported it$",
    ):
        box.import_box(exported)
    assert not (exported.parent / "student").exists()  # nothing added


@pytest.mark.parametrize(
    "where, says",
    [
        ("in box.img", "is cut short or not a tar file"),
        ("in the manifest", "is cut short or not a tar file"),
        ("before the manifest", "has no labkit-export.json: it is cut short"),
    ],
)
def test_a_truncated_file_is_refused(exported: Path, where: str, says: str):
    data = exported.read_bytes()
    manifest_header = data.index(share.MANIFEST.encode())
    cut = {
        "in box.img": data.index(IMG) + 100,
        "in the manifest": manifest_header + 512 + 40,
        "before the manifest": manifest_header,
    }[where]
    exported.write_bytes(data[:cut])
    with pytest.raises(box.BoxError, match=says + ".*copy it again from whoever exported it"):
        box.import_box(exported)


def test_a_file_that_is_not_an_export_is_refused(tmp_path: Path):
    junk = tmp_path / "junk.box"
    junk.write_bytes(b"not a tar file at all" * 100)
    with pytest.raises(box.BoxError, match="not a tar file"):
        box.import_box(junk)
    with tarfile.open(tmp_path / "other.tar", "w") as tar:
        tar.add(junk, arcname="box.img")
    with pytest.raises(box.BoxError, match="has no labkit-export.json"):
        box.import_box(tmp_path / "other.tar")


def test_import_of_the_box_already_there_is_a_no_op(exported: Path, tmp_path: Path):
    installed_box(tmp_path / "student", "labkit/keytest", "2026.11.29.073021", CURRENT, IMG)
    assert not box.import_box(exported).added


def test_another_version_is_replaced_only_with_force(exported: Path, tmp_path: Path):
    installed_box(tmp_path / "student", "labkit/keytest", "2026.11.28.000000", CURRENT, IMG[:-1])
    with pytest.raises(
        box.BoxError,
        match=r"already has box labkit/keytest \(version 2026.11.28.000000\), not this "
        r"one \(2026.11.29.073021\): labkit box import --force .* replaces it",
    ):
        box.import_box(exported)


def test_the_cli_refuses_a_damaged_file_in_one_line(exported: Path):
    flip(exported, exported.read_bytes().index(IMG) + 10)
    result = CliRunner().invoke(app, ["box", "import", str(exported)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "box.img does not match" in lines[0] and "Traceback" not in result.output


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="Vagrant adds the box")
def test_round_trip_through_vagrant(exported: Path, tmp_path: Path):
    """The student's Vagrant gets the box under its name and version, byte for byte."""
    result = CliRunner().invoke(app, ["box", "import", str(exported)])
    assert result.exit_code == 0, result.output
    assert "imported box labkit/keytest 2026.11.29.073021 (kernel 6.1.0-50-amd64)" in result.stdout
    folder = tmp_path / "student/boxes/labkit-VAGRANTSLASH-keytest/2026.11.29.073021/libvirt"
    assert (folder / "box.img").read_bytes() == IMG
    assert box.box_takes_key_at_boot("labkit/keytest") and box.box_has_packages("labkit/keytest")
    again = CliRunner().invoke(app, ["box", "import", str(exported)])
    assert again.exit_code == 0 and "already in Vagrant, identical: nothing to do" in again.stdout
    assert not list(exported.parent.glob("*.json"))  # no catalog left beside the user's file


def test_an_export_that_cannot_be_written_is_one_line(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path))
    installed_box(tmp_path, "labkit/keytest", "1", CURRENT, IMG)
    with pytest.raises(box.BoxError, match=r"cannot write .*/nowhere/x.box: No such file or directory"):
        box.export_box(tmp_path / "nowhere/x.box", "labkit/keytest")
