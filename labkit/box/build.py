"""Build labkit's box and add it to Vagrant: the cached debootstrap tree, customised, put on a
disk, converted to qcow2, packed with its metadata, and added."""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from labkit.box.guest_key import KEY_SOURCE
from labkit.box.image import (
    BOOT_INITRD,
    BOOT_KERNEL,
    BOX_FORMAT,
    DEFAULT_BOX,
    DISK_GIB,
    KERNEL_CMDLINE,
    META_FILE,
    PACKAGES_FILE,
    cached_rootfs,
    check_host,
    customise,
    kernel_version,
    make_disk,
    package_list,
)
from labkit.box.kernel import Kernel, box_name, check_modules, check_package, install, package_version, parse
from labkit.box.store import (
    boot_volumes,
    box_add,
    box_exists,
    box_for,
    old_base_volumes,
    remove_box,
    why_outdated,
)
from labkit.box.system import remove_tree, run

DEFAULT_KERNEL = parse("bookworm")


def build_box(
    *,
    mirror: str,
    cache_dir: Path,
    kernel: Kernel = DEFAULT_KERNEL,
    name: str | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> str | None:
    """Build the box for a kernel (by default bookworm's, labkit's default box) and add it to
    Vagrant. Its name, or None if it exists already and force is not set (nothing done).

    Every box comes from the same cached root tree; a kernel box only has its kernel replaced.
    The box trusts no SSH key of its own: each VM is given the key of whoever boots it.
    """
    check_host()
    existing = name if name and box_exists(name) else (None if name else box_for(kernel))
    if not force and existing:
        outdated = why_outdated(existing)
        if outdated is None:
            log(f"box {existing} for kernel {kernel.spec} already exists; nothing to do")
            return None
        log(f"box {existing} {outdated}: building it again")
    check_package(kernel)
    if existing:
        old_base_volumes(existing)  # fail before the slow part, not after it

    started = time.monotonic()
    cache_dir = cache_dir.resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    rootfs = cached_rootfs(cache_dir, mirror, log)
    # The work dir sits beside the cache: same disk, and /tmp may be a small tmpfs.
    work = Path(tempfile.mkdtemp(prefix="box-build-", dir=cache_dir))
    try:
        tree = work / "rootfs"
        log("copying the cached root tree")
        run(["cp", "-a", "--reflink=auto", str(rootfs), str(tree)])
        if not kernel.is_default:
            install(tree, kernel, mirror, log)
        check_modules(tree, kernel, kernel_version(tree))  # before the initramfs and the disk are made
        root_uuid = str(uuid.uuid4())
        release = customise(tree, log)
        name = name or (DEFAULT_BOX if kernel.is_default else box_name(release))
        now = datetime.now(UTC)
        meta = {
            "kernel": release,
            "spec": kernel.spec,
            "deb_sha256": kernel.deb_sha256,
            "ipvsadm": package_version(tree, "ipvsadm"),
            "keepalived": package_version(tree, "keepalived"),
            "built": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "ssh_key": KEY_SOURCE,
            "box_format": BOX_FORMAT,
            "cmdline": KERNEL_CMDLINE,  # what extlinux gives the kernel, and QEMU in a direct boot
        }
        raw = work / "disk.raw"
        make_disk(tree, raw, root_uuid, log)
        boot = [work / BOOT_KERNEL, work / BOOT_INITRD]
        for path, source in zip(boot, (f"boot/vmlinuz-{release}", f"boot/initrd.img-{release}")):
            shutil.copyfile(tree / source, path)
        remove_tree(tree)
        image = work / "box.img"
        log("converting the disk to qcow2")
        run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(image)])
        raw.unlink()
        box_file = pack(image, meta, work / "labkit.box", boot)

        # Only now that the new box is ready, drop the old one and its pool images.
        remove_box(name, log)
        log(f"adding box {name} (kernel {release})")
        box_add(name, box_file, version=now.strftime("%Y.%m.%d.%H%M%S"))  # one Vagrant can order
        boot_volumes(name)  # its kernel, initramfs and image in this host's pool, for the first up
    finally:
        remove_tree(work)
    log(f"box {name} built in {time.monotonic() - started:.0f} s")
    return name


def pack(image: Path, meta: dict, box_file: Path, boot: list[Path] = ()) -> Path:
    """The .box file: the qcow2 image, the metadata vagrant-libvirt reads, a Vagrantfile, the
    package list, kernel, tool versions and key source the box was built with, and the kernel and
    initramfs in `boot`. Plain tar: qcow2 is already compact, and gzip would cost most of the
    build time."""
    members = {
        "metadata.json": json.dumps({"provider": "libvirt", "format": "qcow2", "virtual_size": DISK_GIB}) + "\n",
        "Vagrantfile": BOX_VAGRANTFILE,
        PACKAGES_FILE: package_list(),
        META_FILE: json.dumps(meta, indent=2) + "\n",
    }
    with tarfile.open(box_file, "w") as tar:
        for name, text in members.items():
            path = image.with_name(name)
            path.write_text(text)
            tar.add(path, arcname=name)
        for path in boot:
            tar.add(path, arcname=path.name)
        tar.add(image, arcname="box.img")
    return box_file


BOX_VAGRANTFILE = """\
Vagrant.configure("2") do |config|
  config.vm.guest = :debian
  # The image has neither rsync nor NFS; labs that want files push them themselves.
  config.vm.synced_folder ".", "/vagrant", disabled: true
end
"""
