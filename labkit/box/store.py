"""What Vagrant and libvirt hold of a box: Vagrant's boxes through python-vagrant, and the
images vagrant-libvirt uploads to libvirt's pool."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import vagrant

from labkit.box.guest_key import KEY_SOURCE
from labkit.box.image import BOOT_INITRD, BOOT_KERNEL, BOX_FORMAT, DEFAULT_BOX, META_FILE, PACKAGES_FILE, package_list
from labkit.box.kernel import Kernel, parse
from labkit.box.system import BoxError, run
from labkit.home import vagrant_home

LIBVIRT_URI = "qemu:///system"
LIBVIRT_POOL = "default"  # where vagrant-libvirt uploads box images
BOX_IMAGE = "box.img"  # the box's disk image, in the box and in the pool


def _vagrant() -> vagrant.Vagrant:
    # rooted at / so that no Vagrantfile of the caller's folder is ever loaded
    env = {**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1"}
    return vagrant.Vagrant(root="/", env=env, quiet_stdout=False, quiet_stderr=False)


def _call(action: str, *args) -> object:
    try:
        return getattr(_vagrant(), action)(*args)
    except FileNotFoundError:
        raise BoxError("vagrant is not installed: apt-get install vagrant") from None
    except subprocess.CalledProcessError as exc:
        raise BoxError(
            f"vagrant {action.replace('_', ' ')} failed (exit {exc.returncode}): see its output above"
        ) from None


def box_exists(name: str) -> bool:
    """Whether Vagrant has the box for the libvirt provider."""
    return any(b.name == name and b.provider == "libvirt" for b in _call("box_list"))


def box_add(name: str, box_file: Path, version: str) -> None:
    """Add the box through a one-version catalog beside it: Vagrant then knows its version
    (a bare .box is version 0, "No version detected") and checks its sha256."""
    digest = hashlib.sha256()
    with box_file.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    with tempfile.TemporaryDirectory(prefix="labkit-box-") as folder:  # not beside the box: it may be the user's
        catalog = Path(folder) / "catalog.json"
        catalog.write_text(
            json.dumps(
                {
                    "name": name,
                    "versions": [
                        {
                            "version": version,
                            "providers": [
                                {
                                    "name": "libvirt",
                                    "url": box_file.resolve().as_uri(),
                                    "checksum_type": "sha256",
                                    "checksum": digest.hexdigest(),
                                }
                            ],
                        }
                    ],
                }
            )
        )
        _call("box_add", name, str(catalog), "libvirt", True)


def box_remove(name: str) -> None:
    _call("box_remove", name, "libvirt")


def boxes_dir() -> Path:
    return vagrant_home() / "boxes"


def box_files(name: str, file: str) -> list[Path]:
    return list((boxes_dir() / name.replace("/", "-VAGRANTSLASH-")).glob(f"*/libvirt/{file}"))


@dataclass(frozen=True)
class BootFiles:
    """An installed box's kernel and initramfs, the command line they boot with, and its disk image."""

    version: str  # of the box
    kernel: Path
    initrd: Path
    cmdline: str
    disk: Path


def version_key(version: str) -> tuple:
    """A box version as Vagrant orders them (2026.12.02.112539)."""
    return tuple(int(part) if part.isdigit() else 0 for part in version.split("."))


def installed(name: str) -> list[Path]:
    """The box's libvirt folders in Vagrant, oldest version first."""
    folders = (boxes_dir() / name.replace("/", "-VAGRANTSLASH-")).glob("*/libvirt")
    return sorted(folders, key=lambda f: version_key(f.parent.name))


def boot_files(name: str) -> BootFiles | None:
    """The kernel and initramfs of the box version Vagrant boots (the newest), when the box
    carries them (labkit boxes of format 4 on)."""
    folders = installed(name)
    if not folders:
        return None
    folder = folders[-1]
    cmdline = read_meta(folder / META_FILE).get("cmdline")
    kernel, initrd, disk = folder / BOOT_KERNEL, folder / BOOT_INITRD, folder / BOX_IMAGE
    if not cmdline or not kernel.is_file() or not initrd.is_file() or not disk.is_file():
        return None
    return BootFiles(folder.parent.name, kernel, initrd, cmdline, disk)


POOL_PATH = "/var/lib/libvirt/images"  # where vagrant-libvirt makes the pool when there is none


def _virsh(uri: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True)


def pool_volume(uri: str, name: str, file: Path, upload: bool = True) -> str | None:
    """The path of the pool's volume `name`, uploaded from `file` first if the pool lacks it (and
    the pool made first, as vagrant-libvirt would, if the host has none); without `upload`, None
    when the pool lacks it."""
    found = _virsh(uri, "vol-path", "--pool", LIBVIRT_POOL, name)
    if found.returncode == 0 or not upload:
        return found.stdout.strip() or None
    if _virsh(uri, "pool-info", LIBVIRT_POOL).returncode != 0:
        _virsh(uri, "pool-define-as", LIBVIRT_POOL, "dir", "--target", POOL_PATH)
        for step in ("pool-build", "pool-start", "pool-autostart"):
            _virsh(uri, step, LIBVIRT_POOL)
    made = _virsh(uri, "vol-create-as", LIBVIRT_POOL, name, str(file.stat().st_size), "--format", "raw")
    loaded = _virsh(uri, "vol-upload", "--pool", LIBVIRT_POOL, name, str(file)) if made.returncode == 0 else made
    found = _virsh(uri, "vol-path", "--pool", LIBVIRT_POOL, name)
    if loaded.returncode != 0 or found.returncode != 0:
        _virsh(uri, "vol-delete", "--pool", LIBVIRT_POOL, name)
        raise BoxError(
            f"could not put {file.name} in libvirt's pool {LIBVIRT_POOL} at {uri}: "
            f"{(loaded.stderr or found.stderr).strip()}. Check the pool with: virsh -c {uri} pool-info {LIBVIRT_POOL}"
        )
    return found.stdout.strip()


def boot_volumes(name: str, uri: str = LIBVIRT_URI, upload: bool = True) -> tuple[str, str, str, str] | None:
    """The paths of the box's kernel, initramfs and disk image in the host's pool, put there once
    per box version (without `upload`: only if they are there), and the kernel's command line;
    None for a box that does not carry them. The image's volume is named as vagrant-libvirt names
    it, which finds it there too."""
    files = boot_files(name)
    if files is None:
        return None
    volume = f"{base_volume_prefix(name)}{files.version}_"
    found = [pool_volume(uri, volume + file.name, file, upload) for file in (files.kernel, files.initrd, files.disk)]
    kernel, initrd, disk = found
    return (kernel, initrd, files.cmdline, disk) if all(found) else None


@dataclass(frozen=True)
class Box:
    """One of labkit's boxes in Vagrant, with what it was built from (empty for a box built
    before labkit kept that)."""

    name: str
    version: str
    kernel: str = ""
    spec: str = ""
    ipvsadm: str = ""
    keepalived: str = ""
    built: str = ""
    deb_sha256: str | None = None


def labkit_boxes() -> list[Box]:
    """The boxes labkit built that Vagrant has, oldest first."""
    found = []
    for folder in boxes_dir().glob("labkit-VAGRANTSLASH-*/*/libvirt"):
        name = folder.parents[1].name.replace("-VAGRANTSLASH-", "/")
        meta = read_meta(folder / META_FILE)
        fields = {k: meta[k] for k in Box.__dataclass_fields__ if k in meta and k not in ("name", "version")}
        found.append(Box(name=name, version=folder.parent.name, **fields))
    return sorted(found, key=lambda b: (b.built, b.name))


def is_labkit_box(name: str) -> bool:
    """Built by labkit, so it takes the installation's key at boot and holds the lab packages."""
    return name.startswith("labkit/")


def box_for(kernel: Kernel) -> str | None:
    """The box built for that kernel, the newest if several were; None if there is none."""
    digest = kernel.deb_sha256
    if kernel.is_default:  # a default box built before labkit kept metadata has no spec
        matches = [b for b in labkit_boxes() if b.name == DEFAULT_BOX]
    else:
        matches = [b for b in labkit_boxes() if (b.deb_sha256 == digest if digest else b.spec == kernel.spec)]
    return matches[-1].name if matches else None


def box_for_kernel(spec: str) -> str:
    """The box for a kernel SPEC, or an error that says how to build it."""
    name = box_for(parse(spec))
    if name is None:
        raise BoxError(f"there is no box for kernel {spec}. Build it with: labkit box build --kernel {spec}")
    return name


def box_takes_key_at_boot(name: str) -> bool:
    """Whether the installed box trusts the key each VM is given at boot. An older labkit built
    the builder's key into the box: that box works for one installation only and must be rebuilt."""
    return any(read_meta(f).get("ssh_key") == KEY_SOURCE for f in box_files(name, META_FILE))


def read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def box_has_packages(name: str) -> bool:
    """Whether the installed box holds every package labkit's labs now use: a box built
    before a package joined the list would fail offline, where apt cannot reach a mirror."""
    return any(f.read_text() == package_list() for f in box_files(name, PACKAGES_FILE))


def box_boots_lean(name: str) -> bool:
    """Whether the installed box was customised the way this labkit does (BOX_FORMAT): a box
    built before boots every unit Debian enables, and is far slower to answer SSH under emulation."""
    return any(read_meta(f).get("box_format") == BOX_FORMAT for f in box_files(name, META_FILE))


def why_outdated(name: str) -> str | None:
    """Why labkit must build the installed box again, or None if it is current: the same
    checks for labkit's default box and for kernel boxes."""
    if not box_takes_key_at_boot(name):
        return "has an SSH key built in (an older labkit)"
    if not box_has_packages(name):
        return "lacks packages labkit now uses"
    if not box_boots_lean(name):
        return "was built by an older labkit, and boots slower than this one's"
    return None


def base_volume_prefix(box_name: str) -> str:
    """How vagrant-libvirt names the pool volumes it uploads a box's image to."""
    return box_name.replace("/", "-VAGRANTSLASH-") + "_vagrant_box_image_"


def _pool_volumes() -> dict[str, str]:
    """name -> path of the volumes in the libvirt pool; empty if there is no pool yet."""
    proc = _virsh(LIBVIRT_URI, "-q", "vol-list", "--pool", LIBVIRT_POOL)
    if proc.returncode != 0:
        return {}  # vagrant-libvirt creates the pool on first use
    volumes = {}
    for line in proc.stdout.splitlines():
        fields = line.split(None, 1)
        if len(fields) == 2:
            volumes[fields[0]] = fields[1].strip()
    return volumes


def _backing_path(volume: str) -> str | None:
    proc = _virsh(LIBVIRT_URI, "vol-dumpxml", "--pool", LIBVIRT_POOL, volume)
    if proc.returncode != 0:
        return None  # deleted since the listing, e.g. by a lab being destroyed
    node = ET.fromstring(proc.stdout).find("backingStore/path")
    return node.text if node is not None else None


def old_base_volumes(box_name: str) -> list[str]:
    """The box's images in the pool, which must go, else vagrant-libvirt keeps using them.

    Raises while a VM disk is still an overlay on one: deleting it would break that VM.
    """
    volumes = _pool_volumes()
    prefix = base_volume_prefix(box_name)
    old = {n: p for n, p in volumes.items() if n.startswith(prefix)}
    if not old:
        return []
    for volume in volumes.keys() - old.keys():
        if _backing_path(volume) in old.values():
            raise BoxError(
                f"the old image of box {box_name} is still the base of VM disk {volume}: "
                "destroy the labs that use it (vagrant destroy) and build again"
            )
    return sorted(old)


def remove_box(name: str, log: Callable[[str], None]) -> None:
    """Take a box out of Vagrant and its images out of libvirt's pool, else vagrant-libvirt keeps
    booting the old image. Refuses, before removing anything, while a VM disk is built on one."""
    old_volumes = old_base_volumes(name)
    if box_exists(name):
        log(f"removing old box {name}")
        box_remove(name)
    for volume in old_volumes:
        log(f"deleting old base image {volume} from libvirt pool {LIBVIRT_POOL}")
        run(["virsh", "-c", LIBVIRT_URI, "vol-delete", "--pool", LIBVIRT_POOL, volume])
