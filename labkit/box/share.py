"""A box handed around as one file: `labkit box export` writes the box as Vagrant holds it plus
a manifest with every member's sha256; `labkit box import` checks all of it before Vagrant sees
anything. The file is a plain tar (qcow2 is already compact; gzip would cost minutes), and a
valid .box for `vagrant box add` as well."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from labkit.box.guest_key import KEY_SOURCE
from labkit.box.image import BOOT_INITRD, BOOT_KERNEL, DEFAULT_BOX, META_FILE, PACKAGES_FILE
from labkit.box.store import boot_volumes, box_add, box_exists, installed, read_meta, remove_box
from labkit.box.system import BoxError

MANIFEST = "labkit-export.json"
FORMAT = "labkit box export 1"
# What the box is, as labkit packs it; Vagrant's own files beside them (box_update_check) stay.
MEMBERS = ("metadata.json", "Vagrantfile", META_FILE, PACKAGES_FILE, "box.img")
BOOT_MEMBERS = (BOOT_KERNEL, BOOT_INITRD)  # a box of format 4 on has them too
AGAIN = "copy it again from whoever exported it"
BLOCK = 1 << 20


@dataclass(frozen=True)
class Shared:
    """What was exported or imported, for the user."""

    name: str
    version: str
    kernel: str
    size: int  # bytes of the export file
    seconds: float
    added: bool = True  # import: False when Vagrant already had the identical box


def _labkit_version() -> str:
    try:
        return importlib.metadata.version("labkit")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class _Hashing:
    """A file read once: tar copies it while its sha256 is taken."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.digest = f, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.digest.update(data)
        return data


def export_box(file: Path, name: str = DEFAULT_BOX) -> Shared:
    """Write the newest installed version of the box to FILE; a failure leaves no FILE."""
    started = time.monotonic()
    folders = installed(name)
    if not folders:
        raise BoxError(f"Vagrant has no box {name}: labkit box list shows labkit's boxes")
    folder = folders[-1]
    meta = read_meta(folder / META_FILE)
    if meta.get("ssh_key") != KEY_SOURCE:
        raise BoxError(
            f"box {name} has the builder's SSH key built in (an older labkit) and would not work "
            f"elsewhere: rebuild it with labkit box build --force, then export it"
        )
    missing = [m for m in MEMBERS if not (folder / m).is_file()]
    if missing:
        raise BoxError(f"box {name} in Vagrant lacks {', '.join(missing)}: rebuild it with labkit box build --force")
    manifest = {
        "format": FORMAT,
        "box": name,
        "version": folder.parent.name,
        "kernel": meta.get("kernel", ""),
        "spec": meta.get("spec", ""),
        "packages": (folder / PACKAGES_FILE).read_text().split(),
        "labkit": _labkit_version(),
        "ssh_key": meta["ssh_key"],
        "exported": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "members": {},
    }
    partial = file.with_name(file.name + ".partial")
    try:
        with tarfile.open(partial, "w") as tar:
            for member in MEMBERS + tuple(m for m in BOOT_MEMBERS if (folder / m).is_file()):
                path = folder / member
                info = tar.gettarinfo(str(path), arcname=member)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with path.open("rb") as f:
                    reader = _Hashing(f)
                    tar.addfile(info, reader)
                manifest["members"][member] = {"size": info.size, "sha256": reader.digest.hexdigest()}
            # Last, so it can hold every other member's checksum.
            data = (json.dumps(manifest, indent=2) + "\n").encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, _BytesReader(data))
        partial.replace(file)
    except BaseException as exc:
        partial.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise BoxError(
                f"cannot write {file}: {exc.strerror or exc}. Give a path in an existing folder with room for the box"
            ) from None
        raise
    return Shared(name, manifest["version"], manifest["kernel"], file.stat().st_size, time.monotonic() - started)


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.data) if size < 0 else self.pos + size
        chunk, self.pos = self.data[self.pos : end], min(end, len(self.data))
        return chunk


def read_export(file: Path) -> dict:
    """The manifest of an export, after every member was read and found to match it. Any
    damage (a changed byte, a cut-short or foreign file) is a BoxError naming what is wrong."""
    if not file.is_file():
        raise BoxError(f"{file} does not exist: give the file labkit box export wrote")
    seen: dict[str, dict] = {}
    manifest_data = None
    try:
        with tarfile.open(file, "r|") as tar:  # one pass, front to back
            for member in tar:
                if not member.isfile() or member.name in seen or member.name == MANIFEST and manifest_data:
                    raise BoxError(
                        f"{file} holds an unexpected member {member.name!r}: it is not a labkit box "
                        f"export, or it is damaged; {AGAIN}"
                    )
                f = tar.extractfile(member)
                if member.name == MANIFEST:
                    manifest_data = f.read(1 << 20)
                    continue
                digest, size = hashlib.sha256(), 0
                for block in iter(lambda f=f: f.read(BLOCK), b""):
                    digest.update(block)
                    size += len(block)
                if size != member.size:
                    raise tarfile.ReadError("unexpected end of data")
                seen[member.name] = {"size": size, "sha256": digest.hexdigest()}
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BoxError(f"{file} is cut short or not a tar file ({exc}): {AGAIN}") from None
    if manifest_data is None:
        raise BoxError(f"{file} has no {MANIFEST}: it is cut short or not a labkit box export; {AGAIN}")
    try:
        manifest = json.loads(manifest_data)
        expected = manifest["members"]
        name, version = manifest["box"], manifest["version"]
    except (ValueError, KeyError, TypeError):
        raise BoxError(f"{file}: its {MANIFEST} is damaged; {AGAIN}") from None
    if manifest.get("format") != FORMAT:
        raise BoxError(
            f"{file} was written by another labkit ({manifest.get('format')!r}, not {FORMAT!r}): "
            "export it again with this labkit"
        )
    for member in sorted(set(expected) | set(seen)):
        if member not in seen:
            raise BoxError(f"{file} lacks {member}: it is cut short; {AGAIN}")
        if member not in expected:
            raise BoxError(f"{file} holds {member}, which its manifest does not list: {AGAIN}")
        if seen[member] != expected[member]:
            raise BoxError(f"{file}: {member} does not match its sha256 in the export, the file is damaged; {AGAIN}")
    if set(MEMBERS) - set(seen):
        raise BoxError(
            f"{file} lacks {', '.join(sorted(set(MEMBERS) - set(seen)))}: export the box again with this labkit"
        )
    if manifest.get("ssh_key") != KEY_SOURCE:
        raise BoxError(f"box {name} {version} has its builder's SSH key built in: ask for a box built by this labkit")
    return manifest


def _same_box(folder: Path, members: dict) -> bool:
    for member, want in members.items():
        path = folder / member
        if not path.is_file() or path.stat().st_size != want["size"]:
            return False
    for member, want in members.items():
        digest = hashlib.sha256()
        with (folder / member).open("rb") as f:
            for block in iter(lambda: f.read(BLOCK), b""):
                digest.update(block)
        if digest.hexdigest() != want["sha256"]:
            return False
    return True


def import_box(file: Path, force: bool = False, log: Callable[[str], None] = print) -> Shared:
    """Check the whole file, then add the box to Vagrant under its name and version."""
    started = time.monotonic()
    manifest = read_export(file)  # nothing is touched before this passes
    name, version = manifest["box"], manifest["version"]
    shared = dict(name=name, version=version, kernel=manifest.get("kernel", ""), size=file.stat().st_size)
    folders = installed(name)
    same = [f for f in folders if f.parent.name == version and _same_box(f, manifest["members"])]
    if same:
        return Shared(**shared, seconds=time.monotonic() - started, added=False)
    if folders and not force:
        versions = ", ".join(f.parent.name for f in folders)
        raise BoxError(
            f"Vagrant already has box {name} (version {versions}), not this one ({version}): "
            f"labkit box import --force {file} replaces it"
        )
    if box_exists(name):  # only this Vagrant's box: the pool's image may be another installation's too
        remove_box(name, log)  # refuses while a VM still runs on the old image
    box_add(name, file, version=version)
    boot_volumes(name)  # its kernel, initramfs and image in this host's pool, for the first up
    return Shared(**shared, seconds=time.monotonic() - started)
