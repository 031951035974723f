"""Build the Debian bookworm Vagrant box (libvirt provider) that labkit labs boot from.

Vagrant Cloud cannot be reached, so the box is made here from Debian packages:
debootstrap a root tree (cached, it is the slow part), customise a throwaway copy
of it, put that on a raw disk with extlinux, convert it to qcow2 and
`vagrant box add` the result.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

from labkit.errors import LabkitError

DEFAULT_BOX = "labkit/bookworm"
KEY_FILE = "labkit-key.pub"  # in the box: the installation key it trusts
PACKAGES_FILE = "labkit-packages"  # in the box: the package list it was built with
SUITE = "bookworm"
FALLBACK_MIRROR = "http://deb.debian.org/debian"
LIBVIRT_URI = "qemu:///system"
LIBVIRT_POOL = "default"  # where vagrant-libvirt uploads box images

DISK_GIB = 4
SECTOR = 512
PART_START = 2048  # sectors: the usual 1 MiB alignment

PACKAGES = (
    # what makes it a bootable, reachable VM
    "systemd-sysv", "udev", "kmod", "dbus", "openssh-server", "sudo", "linux-image-amd64",
    # what the labs use
    "ipvsadm", "nginx-light", "keepalived", "curl", "iproute2", "python3", "tcpdump",
    "procps", "iputils-ping", "netcat-openbsd", "iptables", "apache2-utils",
)
# Everything the guest needs to find its disk and NIC. With MODULES=list the
# initramfs holds only these, which makes it small and quick to load under TCG.
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "ext4")
KERNEL_CMDLINE = "ro net.ifnames=0 biosdevname=0 console=ttyS0 console=tty0"

MBR_CODE = (Path("/usr/lib/syslinux/mbr/mbr.bin"), Path("/usr/lib/EXTLINUX/mbr.bin"))
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
    "mount": "mount",
    "umount": "mount",
    "chroot": "coreutils",
}


class BoxError(LabkitError):
    """Building or installing the box failed; the message says how to fix it."""


# ---------------------------------------------------------------- mirror


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror the host's apt uses, so debootstrap goes where apt already can."""
    for text, deb822 in _apt_source_texts(apt_dir):
        found = mirror_from_sources(text, deb822=deb822)
        if found:
            return found
    return FALLBACK_MIRROR


def _apt_source_texts(apt_dir: Path) -> Iterator[tuple[str, bool]]:
    files = [apt_dir / "sources.list"]
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    for path in files:
        try:
            yield path.read_text(errors="replace"), path.suffix == ".sources"
        except OSError:
            continue


def mirror_from_sources(text: str, *, deb822: bool) -> str | None:
    """First Debian archive URI in one apt sources file (one-line or deb822 format)."""
    entries = _deb822_entries(text) if deb822 else _one_line_entries(text)
    for uri, suite in entries:
        if _is_debian_archive(uri, suite):
            return uri.rstrip("/")
    return None


def _one_line_entries(text: str) -> Iterator[tuple[str, str]]:
    for line in text.splitlines():
        # "deb [arch=amd64 signed-by=...] URI SUITE COMPONENTS..."; options may hold spaces
        m = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
        if m:
            yield m.group(1), m.group(2)


def _deb822_entries(text: str) -> Iterator[tuple[str, str]]:
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:  # folded continuation of the previous field
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        suites = fields.get("suites", "").split() or [""]
        for uri in fields.get("uris", "").split():
            yield uri, suites[0]


def _is_debian_archive(uri: str, suite: str) -> bool:
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https", "file") or suite.endswith("-security"):
        return False
    segments = [s for s in parts.path.split("/") if s]
    # ".../debian" or ".../debian/<snapshot date>", never debian-security, -ports, -debug
    if "debian" in segments:
        return True
    # a mirror that serves the archive at its root, e.g. http://debian.example.org/
    return not segments and "debian" in parts.netloc and "security" not in parts.netloc


# ---------------------------------------------------------------- vagrant / libvirt


def box_exists(name: str) -> bool:
    """Whether Vagrant has the box for the libvirt provider."""
    out = _run_out(["vagrant", "box", "list", "--machine-readable"])
    return (name, "libvirt") in parse_box_list(out)


def _box_files(name: str, file: str) -> list[Path]:
    home = Path(os.environ.get("VAGRANT_HOME", Path.home() / ".vagrant.d"))
    return list((home / "boxes" / name.replace("/", "-VAGRANTSLASH-")).glob(f"*/libvirt/{file}"))


def box_trusts(name: str, public_key: str) -> bool:
    """Whether the installed box was built for this key (labkit ships it inside the box)."""
    return any(f.read_text().split()[:2] == public_key.split()[:2] for f in _box_files(name, KEY_FILE))


def package_list() -> str:
    return " ".join(sorted(PACKAGES)) + "\n"


def box_has_packages(name: str) -> bool:
    """Whether the installed box holds every package labkit's labs now use: a box built
    before a package joined the list would fail offline, where apt cannot reach a mirror."""
    return any(f.read_text() == package_list() for f in _box_files(name, PACKAGES_FILE))


def parse_box_list(machine_readable: str) -> set[tuple[str, str]]:
    """(name, provider) pairs from `vagrant box list --machine-readable`."""
    boxes: set[tuple[str, str]] = set()
    name = None
    for line in machine_readable.splitlines():
        fields = line.split(",", 3)
        if len(fields) < 4:
            continue
        if fields[2] == "box-name":
            name = fields[3]
        elif fields[2] == "box-provider" and name is not None:
            boxes.add((name, fields[3]))
    return boxes


def base_volume_prefix(box_name: str) -> str:
    """How vagrant-libvirt names the pool volumes it uploads a box's image to."""
    return box_name.replace("/", "-VAGRANTSLASH-") + "_vagrant_box_image_"


def _pool_volumes() -> dict[str, str]:
    """name -> path of the volumes in the libvirt pool; empty if there is no pool yet."""
    proc = subprocess.run(
        ["virsh", "-c", LIBVIRT_URI, "-q", "vol-list", "--pool", LIBVIRT_POOL],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        return {}  # vagrant-libvirt creates the pool on first use
    volumes = {}
    for line in proc.stdout.splitlines():
        fields = line.split(None, 1)
        if len(fields) == 2:
            volumes[fields[0]] = fields[1].strip()
    return volumes


def _backing_path(volume: str) -> str | None:
    proc = subprocess.run(
        ["virsh", "-c", LIBVIRT_URI, "vol-dumpxml", "--pool", LIBVIRT_POOL, volume],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        return None  # deleted since the listing, e.g. by a lab being destroyed
    node = ET.fromstring(proc.stdout).find("backingStore/path")
    return node.text if node is not None else None


def _old_base_volumes(box_name: str) -> list[str]:
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


# ---------------------------------------------------------------- build


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
        box_dir = work / "box"
        box_dir.mkdir()
        log("converting the disk to qcow2")
        _run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(box_dir / "box.img")])
        raw.unlink()
        (box_dir / "metadata.json").write_text(json.dumps(box_metadata()) + "\n")
        (box_dir / "Vagrantfile").write_text(BOX_VAGRANTFILE)
        (box_dir / KEY_FILE).write_text(key + "\n")
        (box_dir / PACKAGES_FILE).write_text(package_list())
        box_file = work / "labkit.box"
        # Plain tar: qcow2 is already compact and gzip would cost most of the build time.
        with tarfile.open(box_file, "w") as tar:
            for item in ("metadata.json", "Vagrantfile", KEY_FILE, PACKAGES_FILE, "box.img"):
                tar.add(box_dir / item, arcname=item)

        # Only now that the new box is ready, drop the old one and its pool images.
        old_volumes = _old_base_volumes(name)
        if box_exists(name):
            log(f"removing old box {name}")
            _run(["vagrant", "box", "remove", "--force", "--all", "--provider", "libvirt", name])
        for volume in old_volumes:
            log(f"deleting old base image {volume} from libvirt pool {LIBVIRT_POOL}")
            _run(["virsh", "-c", LIBVIRT_URI, "vol-delete", "--pool", LIBVIRT_POOL, volume])
        log(f"adding box {name}")
        _run(["vagrant", "box", "add", "--force", "--name", name, str(box_file)])
    finally:
        _remove_tree(work)
    log(f"box {name} built in {time.monotonic() - started:.0f} s")
    return True


def box_metadata() -> dict[str, object]:
    return {"provider": "libvirt", "format": "qcow2", "virtual_size": DISK_GIB}


BOX_VAGRANTFILE = """\
Vagrant.configure("2") do |config|
  config.vm.guest = :debian
  # The image has neither rsync nor NFS; labs that want files push them themselves.
  config.vm.synced_folder ".", "/vagrant", disabled: true
end
"""


def _check_public_key(public_key: str) -> str:
    key = public_key.strip()
    if "\n" in key or not re.match(r"(ssh-|ecdsa-|sk-)\S+ \S+", key):
        raise BoxError("the public key is not a one-line OpenSSH public key: pass the text of a .pub file")
    return key


def _check_host() -> None:
    if os.geteuid() != 0:
        raise BoxError("building the box needs root (debootstrap, loop devices, mounts): run it with sudo")
    # root's tools live in sbin, which a plain user PATH may lack
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None:
            raise BoxError(f"{tool} is not installed: apt-get install {package}")
    if _mbr_code() is None:
        raise BoxError("the syslinux MBR boot code is missing: apt-get install syslinux-common")
    if subprocess.run(["virsh", "-c", LIBVIRT_URI, "list"], capture_output=True).returncode != 0:
        raise BoxError(f"libvirt does not answer at {LIBVIRT_URI}: start libvirtd and virtlogd")


def _mbr_code() -> Path | None:
    return next((p for p in MBR_CODE if p.is_file()), None)


def _cached_rootfs(cache_dir: Path, mirror: str, log: Callable[[str], None]) -> Path:
    """The debootstrap tree, downloaded once; a new package list gets a new tree."""
    tag = hashlib.sha256(package_list().strip().encode()).hexdigest()[:12]
    tree = cache_dir / f"debootstrap-{SUITE}-{tag}"
    if tree.is_dir():
        log(f"using cached root tree {tree}")
        return tree
    partial = tree.with_name(tree.name + ".partial")
    _remove_tree(partial)
    log(f"debootstrap {SUITE} from {mirror} (takes a few minutes)")
    try:
        _run([
            "debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES),
            SUITE, str(partial), mirror,
        ], hint=f"check that {mirror} is a reachable Debian mirror")
    except BaseException:
        _remove_tree(partial)  # a half tree is no use, and may still hold mounts
        raise
    # The downloaded .debs would only make every copy and image bigger.
    for deb in (partial / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    partial.rename(tree)
    for stale in cache_dir.glob(f"debootstrap-{SUITE}-*"):
        if stale != tree:
            _remove_tree(stale)
    return tree


def _customise(tree: Path, public_key: str, root_uuid: str, log: Callable[[str], None]) -> None:
    log("configuring the image")
    etc = tree / "etc"
    _write(etc / "hostname", "labkit\n")
    _write(etc / "hosts", "127.0.0.1\tlocalhost\n127.0.1.1\tlabkit\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    # debootstrap copied the host's resolver; the guest learns nothing from DHCP without
    # systemd-resolved, so leave it empty rather than point at the build host's servers.
    _write(etc / "resolv.conf", "")
    # Empty, so every VM makes its own at first boot (and DHCP client ids differ).
    _write(etc / "machine-id", "")
    dbus_id = tree / "var/lib/dbus/machine-id"
    if dbus_id.exists() and not dbus_id.is_symlink():
        dbus_id.unlink()
    _write(etc / "fstab", f"UUID={root_uuid}\t/\text4\terrors=remount-ro\t0\t1\n")

    # DHCP on the first NIC only; labkit sets up the others itself.
    _write(etc / "systemd/network/10-eth0.network", "[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n")
    # No RSA host key: generating one at first boot takes half a minute under TCG.
    _write(etc / "ssh/sshd_config.d/labkit.conf", (
        "UseDNS no\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\n"
        "HostKey /etc/ssh/ssh_host_ecdsa_key\n"
    ))
    # Every VM must get its own host keys, so none ship in the image.
    for host_key in (etc / "ssh").glob("ssh_host_*"):
        host_key.unlink()
    _write(etc / "systemd/system/ssh-host-keys.service", HOST_KEYS_UNIT)

    _write(etc / "sudoers.d/vagrant", "vagrant ALL=(ALL) NOPASSWD: ALL\n", mode=0o440)
    _write(etc / "initramfs-tools/conf.d/labkit", "MODULES=list\n")
    modules = etc / "initramfs-tools/modules"
    _write(modules, modules.read_text() + "".join(m + "\n" for m in INITRAMFS_MODULES))

    kernel = _kernel_version(tree)
    _write(tree / "boot/extlinux/extlinux.conf", (
        "DEFAULT debian\nPROMPT 0\nTIMEOUT 0\n\n"
        "LABEL debian\n"
        f"  LINUX /boot/vmlinuz-{kernel}\n"
        f"  INITRD /boot/initrd.img-{kernel}\n"
        f"  APPEND root=UUID={root_uuid} {KERNEL_CMDLINE}\n"
    ))

    with _chroot_mounts(tree):
        chroot = ["chroot", str(tree)]
        _run(chroot + ["useradd", "--create-home", "--shell", "/bin/bash", "vagrant"])
        ssh_dir = tree / "home/vagrant/.ssh"
        ssh_dir.mkdir(mode=0o700)
        _write(ssh_dir / "authorized_keys", public_key + "\n", mode=0o600)
        _run(chroot + ["chown", "-R", "vagrant:vagrant", "/home/vagrant/.ssh"])
        _run(chroot + ["systemctl", "enable", "systemd-networkd", "ssh-host-keys.service"])
        # labkit starts keepalived when a lab needs it. The others only eat the CPU of
        # short-lived lab VMs (apt's timers would also look for a network they lack).
        _run(chroot + ["systemctl", "disable", "keepalived", "e2scrub_reap.service",
                       "e2scrub_all.timer", "apt-daily.timer", "apt-daily-upgrade.timer"])
        _run(chroot + ["update-initramfs", "-u", "-k", kernel])


HOST_KEYS_UNIT = """\
[Unit]
Description=Generate SSH host keys on first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
ExecStart=/usr/bin/ssh-keygen -q -t ecdsa -N "" -f /etc/ssh/ssh_host_ecdsa_key

[Install]
WantedBy=ssh.service
"""


def _kernel_version(tree: Path) -> str:
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise BoxError(f"no kernel in {tree}/boot: delete that cached tree and build again")
    return kernels[-1].name.removeprefix("vmlinuz-")


def _make_disk(tree: Path, raw: Path, root_uuid: str, log: Callable[[str], None]) -> None:
    log(f"making a {DISK_GIB} GiB disk")
    total = DISK_GIB * 1024**3 // SECTOR
    with open(raw, "wb") as disk:
        disk.truncate(total * SECTOR)  # sparse
        code = _mbr_code()
        assert code is not None  # checked in _check_host
        disk.write(mbr(code.read_bytes(), PART_START, total - PART_START, uuid.UUID(root_uuid).bytes[:4]))

    loop = _run_out(["losetup", "--find", "--show", str(raw)]).strip()
    try:
        # partx reads the table itself: the host kernel may lack the MBR parser that
        # `losetup --partscan` relies on (or already scanned it, with loop max_part set).
        if not Path(loop + "p1").exists():
            _run(["partx", "--add", "--nr", "1", loop])
        part = _wait_for(Path(loop + "p1"))
        _run(["mkfs.ext4", "-q", "-F", "-L", "root", "-U", root_uuid, "-O", _ext4_features(),
              "-d", str(tree), str(part)])
        mnt = raw.with_name("mnt")
        mnt.mkdir()
        _run(["mount", str(part), str(mnt)])
        try:
            _run(["extlinux", "--install", str(mnt / "boot/extlinux")])
        finally:
            _run(["umount", str(mnt)])
        mnt.rmdir()
    finally:
        # a partition added by partx outlives the loop device unless deleted first
        subprocess.run(["partx", "--delete", loop], capture_output=True)
        subprocess.run(["losetup", "--detach", loop])


def _ext4_features() -> str:
    """ext4 features extlinux cannot read; mke2fs before 1.47 knows no orphan_file."""
    features = ["^64bit", "^metadata_csum"]
    out = subprocess.run(["mkfs.ext4", "-V"], capture_output=True, text=True).stderr
    m = re.search(r"mke2fs (\d+)\.(\d+)", out)
    if m and (int(m.group(1)), int(m.group(2))) >= (1, 47):
        features.append("^orphan_file")
    return ",".join(features)


def mbr(boot_code: bytes, start: int, sectors: int, disk_id: bytes) -> bytes:
    """A DOS partition table with one bootable Linux partition, after the boot code."""
    entry = struct.pack(
        "<B3sB3sII", 0x80, _chs(start), 0x83, _chs(start + sectors - 1), start, sectors
    )
    return boot_code[:440].ljust(440, b"\0") + disk_id + b"\0\0" + entry + bytes(48) + b"\x55\xaa"


def _chs(lba: int) -> bytes:
    # classic 255 heads x 63 sectors geometry; past its reach the fields say "use LBA"
    cyl, rest = divmod(lba, 255 * 63)
    head, sector = divmod(rest, 63)
    if cyl > 1023:
        cyl, head, sector = 1023, 254, 62
    return bytes([head, (sector + 1) | (cyl >> 8) << 6, cyl & 0xFF])


def _wait_for(path: Path) -> Path:
    # the partition's device node may show up a moment after partx returns
    for _ in range(50):
        if path.exists():
            return path
        time.sleep(0.1)
    raise BoxError(f"{path} did not appear after partx --add: check that udev or devtmpfs manages /dev")


# ---------------------------------------------------------------- helpers


@contextmanager
def _chroot_mounts(tree: Path) -> Iterator[None]:
    """/proc, /sys and /dev inside the tree for update-initramfs; always unmounted."""
    mounted: list[Path] = []
    try:
        for fstype, src, target in (("proc", "proc", "proc"), ("sysfs", "sys", "sys")):
            _run(["mount", "-t", fstype, src, str(tree / target)])
            mounted.append(tree / target)
        _run(["mount", "--bind", "/dev", str(tree / "dev")])
        mounted.append(tree / "dev")
        yield
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", str(path)])


def _remove_tree(path: Path) -> None:
    """rm -rf that never descends into something still mounted (say a bind of /dev)."""
    if not path.exists():
        return
    root = str(path.resolve())
    for mount_point in sorted(_mounts_under(root), reverse=True):
        subprocess.run(["umount", "--lazy", mount_point])
    left = _mounts_under(root)
    if left:
        raise BoxError(f"{left[0]} is still mounted: umount it, then delete {path}")
    shutil.rmtree(path)


def _mounts_under(root: str) -> list[str]:
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    return [p for p in points if p == root or p.startswith(root + "/")]


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # replace, never write through: a symlink in the tree may point at the host's file
    path.unlink(missing_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _run(args: list[str], hint: str = "see its output above") -> None:
    try:
        subprocess.run(args, check=True, cwd="/")
    except subprocess.CalledProcessError as e:
        raise BoxError(f"{' '.join(args[:3])} ... failed (exit {e.returncode}): {hint}") from e


def _run_out(args: list[str]) -> str:
    # cwd=/ so that a Vagrantfile in the caller's folder is never loaded by vagrant
    try:
        proc = subprocess.run(args, capture_output=True, text=True, cwd="/")
    except FileNotFoundError:
        raise BoxError(f"{args[0]} is not installed: apt-get install {TOOLS.get(args[0], args[0])}") from None
    if proc.returncode != 0:
        raise BoxError(f"{' '.join(args[:3])} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout
