"""Build labkit's box and add it to Vagrant: the cached debootstrap tree, customised, put on a
disk, converted to qcow2, packed with its metadata, and added."""

from __future__ import annotations

import json
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

from labkit.box.image import (DISK_GIB, KEY_FILE, PACKAGES_FILE, _cached_rootfs, _check_host, _check_public_key,
                              _customise, _make_disk, _remove_tree, _run, package_list)
from labkit.box.store import (LIBVIRT_POOL, LIBVIRT_URI, _old_base_volumes, box_add, box_exists, box_has_packages,
                              box_remove, box_trusts)


def build_box(
    name: str,
    public_key: str,
    *,
    mirror: str,
    cache_dir: Path,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> bool:
    """Build the box and add it to Vagrant.

    False if the box already exists and force is not set (nothing done), True once
    a new box is built and added.
    """
    key = _check_public_key(public_key)
    _check_host()
    if not force and box_exists(name):
        if box_trusts(name, key) and box_has_packages(name):
            log(f"box {name} already exists; nothing to do")
            return False
        if box_trusts(name, key):
            log(f"box {name} lacks packages labkit now uses: building it again")
        else:
            log(f"box {name} was built for another installation key: building it again")

    _old_base_volumes(name)  # fail before the slow part, not after it
    started = time.monotonic()
    cache_dir = cache_dir.resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    rootfs = _cached_rootfs(cache_dir, mirror, log)
    # The work dir sits beside the cache: same disk, and /tmp may be a small tmpfs.
    work = Path(tempfile.mkdtemp(prefix="box-build-", dir=cache_dir))
    try:
        tree = work / "rootfs"
        log("copying the cached root tree")
        _run(["cp", "-a", "--reflink=auto", str(rootfs), str(tree)])
        root_uuid = str(uuid.uuid4())
        _customise(tree, key, root_uuid, log)
        raw = work / "disk.raw"
        _make_disk(tree, raw, root_uuid, log)
        _remove_tree(tree)
        image = work / "box.img"
        log("converting the disk to qcow2")
        _run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(image)])
        raw.unlink()
        box_file = pack(image, key, work / "labkit.box")

        # Only now that the new box is ready, drop the old one and its pool images.
        old_volumes = _old_base_volumes(name)
        if box_exists(name):
            log(f"removing old box {name}")
            box_remove(name)
        for volume in old_volumes:
            log(f"deleting old base image {volume} from libvirt pool {LIBVIRT_POOL}")
            _run(["virsh", "-c", LIBVIRT_URI, "vol-delete", "--pool", LIBVIRT_POOL, volume])
        log(f"adding box {name}")
        box_add(name, box_file)
    finally:
        _remove_tree(work)
    log(f"box {name} built in {time.monotonic() - started:.0f} s")
    return True


def pack(image: Path, public_key: str, box_file: Path) -> Path:
    """The .box file: the qcow2 image, the metadata vagrant-libvirt reads, a Vagrantfile, and the
    key and package list the box was built with. Plain tar: qcow2 is already compact, and gzip
    would cost most of the build time."""
    members = {
        "metadata.json": json.dumps({"provider": "libvirt", "format": "qcow2", "virtual_size": DISK_GIB}) + "\n",
        "Vagrantfile": BOX_VAGRANTFILE,
        KEY_FILE: public_key + "\n",
        PACKAGES_FILE: package_list(),
    }
    with tarfile.open(box_file, "w") as tar:
        for name, text in members.items():
            path = image.with_name(name)
            path.write_text(text)
            tar.add(path, arcname=name)
        tar.add(image, arcname="box.img")
    return box_file


BOX_VAGRANTFILE = """\
Vagrant.configure("2") do |config|
  config.vm.guest = :debian
  # The image has neither rsync nor NFS; labs that want files push them themselves.
  config.vm.synced_folder ".", "/vagrant", disabled: true
end
"""
