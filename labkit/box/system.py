"""Running host tools for the box build: a command (its failure one BoxError line naming the fix),
a file written into a tree, a tree's /proc, /sys and /dev for a chroot, and removing a tree safely."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from labkit.errors import LabkitError

# tool -> Debian package that has it
TOOLS = {
    "debootstrap": "debootstrap",
    "qemu-img": "qemu-utils",
    "extlinux": "extlinux",
    "vagrant": "vagrant",
    "virsh": "libvirt-clients",
    "mkfs.ext4": "e2fsprogs",
    "losetup": "mount",
    "partx": "util-linux",
    "sfdisk": "fdisk",
    "mount": "mount",
    "umount": "mount",
    "chroot": "coreutils",
}


class BoxError(LabkitError):
    """Building or installing the box failed; the message says how to fix it."""


def wait_for(path: Path) -> Path:
    # the partition's device node may show up a moment after partx returns
    for _ in range(50):
        if path.exists():
            return path
        time.sleep(0.1)
    raise BoxError(f"{path} did not appear after partx --add: check that udev or devtmpfs manages /dev")


@contextmanager
def chroot_mounts(tree: Path) -> Iterator[None]:
    """/proc, /sys and /dev inside the tree for update-initramfs; always unmounted."""
    mounted: list[Path] = []
    try:
        for fstype, src, target in (("proc", "proc", "proc"), ("sysfs", "sys", "sys")):
            run(["mount", "-t", fstype, src, str(tree / target)])
            mounted.append(tree / target)
        run(["mount", "--bind", "/dev", str(tree / "dev")])
        mounted.append(tree / "dev")
        yield
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", str(path)])


def remove_tree(path: Path) -> None:
    """rm -rf that never descends into something still mounted (say a bind of /dev)."""
    if not path.exists():
        return
    root = str(path.resolve())
    for mount_point in sorted(mounts_under(root), reverse=True):
        subprocess.run(["umount", "--lazy", mount_point])
    left = mounts_under(root)
    if left:
        raise BoxError(f"{left[0]} is still mounted: umount it, then delete {path}")
    shutil.rmtree(path)


def mounts_under(root: str) -> list[str]:
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    return [p for p in points if p == root or p.startswith(root + "/")]


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # replace, never write through: a symlink in the tree may point at the host's file
    path.unlink(missing_ok=True)
    path.write_text(text)
    path.chmod(mode)


def run(args: list[str], hint: str = "see its output above", stdin: str | None = None) -> None:
    try:
        subprocess.run(args, check=True, cwd="/", input=stdin, text=stdin is not None)
    except subprocess.CalledProcessError as e:
        raise BoxError(f"{' '.join(args[:3])} ... failed (exit {e.returncode}): {hint}") from e


def run_out(args: list[str]) -> str:
    # cwd=/ so that a Vagrantfile in the caller's folder is never loaded by vagrant
    try:
        proc = subprocess.run(args, capture_output=True, text=True, cwd="/")
    except FileNotFoundError:
        raise BoxError(f"{args[0]} is not installed: apt-get install {TOOLS.get(args[0], args[0])}") from None
    if proc.returncode != 0:
        raise BoxError(f"{' '.join(args[:3])} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout
