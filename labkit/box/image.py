"""The box's disk image, made from Debian packages: debootstrap a root tree (cached, it is the
slow part), customise a throwaway copy of it, and put that on a raw disk that extlinux boots,
partitioned by sfdisk."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

from labkit.box import guest_key
from labkit.box.system import TOOLS, BoxError, chroot_mounts, remove_tree, run, run_out, wait_for, write

DEFAULT_BOX = "labkit/bookworm"
PACKAGES_FILE = "labkit-packages"  # in the box: the package list it was built with
META_FILE = "labkit-box.json"  # in the box: its kernel, tool versions and where the kernel came from
SUITE = "bookworm"
LIBVIRT_URI = "qemu:///system"

DISK_GIB = 4

PACKAGES = (
    # what makes it a bootable, reachable VM
    "systemd-sysv",
    "udev",
    "kmod",
    "dbus",
    "openssh-server",
    "sudo",
    "linux-image-amd64",
    # what the labs use
    "ipvsadm",
    "nginx-light",
    "keepalived",
    "curl",
    "iproute2",
    "python3",
    "tcpdump",
    "procps",
    "iputils-ping",
    "netcat-openbsd",
    "iptables",
    "apache2-utils",
)
# Everything the guest needs to find its disk and NIC. With MODULES=list the
# initramfs holds only these, which makes it small and quick to load under TCG.
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "ext4")
# no_timer_check: under software emulation on a busy host the kernel's check of the IO-APIC timer
# can time out and panic the boot ("IO-APIC + timer doesn't work"); the VM's timer is fine.
# root=/dev/vda1 rw: the initramfs finds the disk by its name, and the root is mounted writable
# at once, so systemd neither waits for udev to announce the disk by UUID (the slowest unit
# under emulation) nor checks and remounts it.
# Only the serial console: the VMs have no video device. quiet: every line printed on the serial
# port is slow under emulation; errors still are (loglevel=3).
# mitigations=off: with the plain CPU model the kernel isolates page tables (PTI) and more, and
# under emulation each system call then flushes the emulated TLB; a lab VM runs only the lab.
KERNEL_CMDLINE = (
    "root=/dev/vda1 rw quiet loglevel=3 net.ifnames=0 biosdevname=0 console=ttyS0 no_timer_check mitigations=off"
)
# How the box boots, recorded in its metadata (box_format): a box of an older format is rebuilt by
# labkit box build and labkit matrix. Raise it whenever customise() changes what a VM does at boot.
# 2: the lean boot (root by device, units no lab uses masked, the SSH key read by a sh script).
# 3: no sysusers, no serial getty; udev triggers only the NICs and disks at boot.
# 4: the kernel and initramfs beside the disk image, for QEMU to load itself (direct kernel boot);
#    no wireless stack, no generators for disks a lab VM never has.
# 5: no motd scripts at each SSH login; the host key made again when its file is empty.
BOX_FORMAT = 5
# In the box, beside box.img: what QEMU loads instead of running the BIOS and extlinux, which
# read both from the emulated disk through the BIOS, about 2.5 s of each boot under emulation.
BOOT_KERNEL = "vmlinuz"
BOOT_INITRD = "initrd.img"

MBR_CODE = (Path("/usr/lib/syslinux/mbr/mbr.bin"), Path("/usr/lib/EXTLINUX/mbr.bin"))


def package_list() -> str:
    return " ".join(sorted(PACKAGES)) + "\n"


def check_host() -> None:
    if os.geteuid() != 0:
        raise BoxError("building the box needs root (debootstrap, loop devices, mounts): run it with sudo")
    # root's tools live in sbin, which a plain user PATH may lack
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None:
            raise BoxError(f"{tool} is not installed: apt-get install {package}")
    if mbr_code() is None:
        raise BoxError("the syslinux MBR boot code is missing: apt-get install syslinux-common")
    if subprocess.run(["virsh", "-c", LIBVIRT_URI, "list"], capture_output=True).returncode != 0:
        raise BoxError(f"libvirt does not answer at {LIBVIRT_URI}: start libvirtd and virtlogd")


def mbr_code() -> Path | None:
    return next((p for p in MBR_CODE if p.is_file()), None)


def cached_rootfs(cache_dir: Path, mirror: str, log: Callable[[str], None]) -> Path:
    """The debootstrap tree, downloaded once; a new package list gets a new tree."""
    tag = hashlib.sha256(package_list().strip().encode()).hexdigest()[:12]
    tree = cache_dir / f"debootstrap-{SUITE}-{tag}"
    if tree.is_dir():
        log(f"using cached root tree {tree}")
        return tree
    partial = tree.with_name(tree.name + ".partial")
    remove_tree(partial)
    log(f"debootstrap {SUITE} from {mirror} (takes a few minutes)")
    try:
        run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=" + ",".join(PACKAGES),
                SUITE,
                str(partial),
                mirror,
            ],
            hint=f"check that {mirror} is a reachable Debian mirror",
        )
    except BaseException:
        remove_tree(partial)  # a half tree is no use, and may still hold mounts
        raise
    # The downloaded .debs would only make every copy and image bigger.
    for deb in (partial / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    partial.rename(tree)
    for stale in cache_dir.glob(f"debootstrap-{SUITE}-*"):
        if stale != tree:
            remove_tree(stale)
    return tree


def customise(tree: Path, log: Callable[[str], None]) -> str:
    """Make the tree a VM that labkit can reach; the release of the kernel it boots."""
    log("configuring the image")
    etc = tree / "etc"
    write(etc / "hostname", "labkit\n")
    write(etc / "hosts", "127.0.0.1\tlocalhost\n127.0.1.1\tlabkit\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    # debootstrap copied the host's resolver; the guest learns nothing from DHCP without
    # systemd-resolved, so leave it empty rather than point at the build host's servers.
    write(etc / "resolv.conf", "")
    # Empty, so every VM makes its own at first boot (and DHCP client ids differ).
    write(etc / "machine-id", "")
    dbus_id = tree / "var/lib/dbus/machine-id"
    if dbus_id.exists() and not dbus_id.is_symlink():
        dbus_id.unlink()
    # No line for the root: the kernel mounts it writable (KERNEL_CMDLINE), and a line would make
    # systemd wait for the disk's device unit, check it and remount it.
    write(etc / "fstab", "# the root is mounted by the kernel: root=/dev/vda1 rw\n")

    # DHCP on the first NIC only; labkit sets up the others itself, and names the VM itself (a
    # DHCP host name would start systemd-hostnamed and D-Bus while the VM boots).
    write(
        etc / "systemd/network/10-eth0.network",
        "[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n\n[DHCPv4]\nUseHostname=no\n",
    )
    # The journal in memory: a lab VM lives for hours, and no flush to disk at boot.
    write(etc / "systemd/journald.conf.d/labkit.conf", "[Journal]\nStorage=volatile\n")
    # One host key, ed25519, made at first boot (ssh-host-keys.service): RSA takes half a minute
    # under TCG, and each further key type costs more boot.
    # sshd prints /etc/motd itself (PrintMotd): PAM's motd module would run the update-motd
    # scripts at every login, a fifth of a second per SSH connection under emulation.
    write(etc / "ssh/sshd_config.d/labkit.conf", "UseDNS no\nHostKey /etc/ssh/ssh_host_ed25519_key\nPrintMotd yes\n")
    sshd_pam = etc / "pam.d/sshd"
    write(sshd_pam, "".join(line for line in sshd_pam.read_text().splitlines(True) if "pam_motd.so" not in line))
    # sshd checks its configuration before it starts (ExecStartPre=sshd -t): a second sshd started
    # under emulation at every boot, for a configuration the box ships.
    write(etc / "systemd/system/ssh.service.d/labkit.conf", "[Service]\nExecStartPre=\n")
    write(etc / "systemd/system/systemd-udev-trigger.service.d/labkit.conf", UDEV_TRIGGER)
    # networkd asks the kernel for the Wi-Fi netlink family as it starts, and the kernel then loads
    # the whole wireless stack (cfg80211, a megabyte, with its certificates) while networkd waits.
    write(etc / "modprobe.d/labkit.conf", "# no Wi-Fi in a lab VM\nblacklist cfg80211\n")
    # Generators run before any unit starts; these look for encrypted, verity and GPT disks,
    # hibernation images, rc.local and more that a lab VM never has. Kept: fstab, getty and sysv
    # (which makes ipvsadm.service from its init script).
    generators = etc / "systemd/system-generators"
    generators.mkdir(parents=True, exist_ok=True)
    for generator in UNUSED_GENERATORS:
        (generators / generator).symlink_to("/dev/null")
    # Every VM must get its own host keys, so none ship in the image.
    for host_key in (etc / "ssh").glob("ssh_host_*"):
        host_key.unlink()
    write(etc / "systemd/system/ssh-host-keys.service", HOST_KEYS_UNIT)
    # No key is baked in: each boot trusts the key the host passes (guest_key.py).
    write(tree / GUEST_KEY_SCRIPT.lstrip("/"), guest_key.SCRIPT, mode=0o755)
    write(etc / "systemd/system/labkit-ssh-key.service", GUEST_KEY_UNIT)

    write(etc / "sudoers.d/vagrant", "vagrant ALL=(ALL) NOPASSWD: ALL\n", mode=0o440)
    write(etc / "initramfs-tools/conf.d/labkit", "MODULES=list\n")
    modules = etc / "initramfs-tools/modules"
    write(modules, modules.read_text() + "".join(m + "\n" for m in INITRAMFS_MODULES))

    kernel = kernel_version(tree)
    write(
        tree / "boot/extlinux/extlinux.conf",
        (
            "DEFAULT debian\nPROMPT 0\nTIMEOUT 0\n\n"
            "LABEL debian\n"
            f"  LINUX /boot/vmlinuz-{kernel}\n"
            f"  INITRD /boot/initrd.img-{kernel}\n"
            f"  APPEND {KERNEL_CMDLINE}\n"
        ),
    )

    with chroot_mounts(tree):
        chroot = ["chroot", str(tree)]
        run(chroot + ["useradd", "--create-home", "--shell", "/bin/bash", "vagrant"])
        run(chroot + ["systemctl", "enable", "systemd-networkd", "ssh-host-keys.service", "labkit-ssh-key.service"])
        # These have systemd units of their own: without the init scripts beside them, `systemctl
        # enable` (which labkit runs for keepalived and nginx) makes a link instead of running
        # update-rc.d, seconds under emulation.
        for script in SYSV_DUPLICATES:
            run(chroot + ["update-rc.d", "-f", script, "remove"])
            (etc / "init.d" / script).unlink()
        # labkit starts keepalived and nginx on the nodes whose role needs them, and loads the IPVS
        # rules itself; at boot they would only take CPU from what SSH waits for. Each can still
        # be started, inspected and restarted as a systemd service.
        run(chroot + ["systemctl", "disable", "--quiet", *BOOT_DISABLED])
        run(chroot + ["systemctl", "mask", "--quiet", *UNUSED_UNITS])
        # The initramfs without udev: it loads its few modules by name (MODULES=list) and finds
        # the root by its device name. udev there started, probed every device of the VM and
        # loaded modules for them first: seconds under emulation, done again by the root's udev.
        off = tree / "usr/share/labkit-initramfs-off"
        off.mkdir(parents=True, exist_ok=True)
        for path in UDEV_IN_INITRAMFS:
            divert = f"/{off.relative_to(tree)}/{path.replace('/', '_')}"
            run(chroot + ["dpkg-divert", "--local", "--rename", "--divert", divert, "--add", path])
        run(chroot + ["update-initramfs", "-u", "-k", kernel])
    return kernel


UDEV_IN_INITRAMFS = (
    "/usr/share/initramfs-tools/hooks/udev",
    "/usr/share/initramfs-tools/scripts/init-top/udev",
    "/usr/share/initramfs-tools/scripts/init-bottom/udev",
)


UNUSED_GENERATORS = (
    "systemd-cryptsetup-generator",
    "systemd-gpt-auto-generator",
    "systemd-hibernate-resume-generator",
    "systemd-integritysetup-generator",
    "systemd-veritysetup-generator",
    "systemd-system-update-generator",
    "systemd-rc-local-generator",
)
SYSV_DUPLICATES = ("keepalived", "nginx", "ssh")
BOOT_DISABLED = ("keepalived", "nginx", "ipvsadm")
# Units a lab VM has no use for. Under emulation the guest boots on one slow CPU, and each of
# these took seconds of it before SSH answered.
UNUSED_UNITS = (
    # Seats and logins at a console: labs are reached over SSH, and the box has no pam_systemd.
    "systemd-logind.service",
    # The VMs have no video device; the serial console keeps its getty.
    "getty@tty1.service",
    # Kernel debug and tracing file systems, configfs, POSIX queues, huge pages, FUSE, binfmt.
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-kernel-config.mount",
    "dev-mqueue.mount",
    "dev-hugepages.mount",
    "sys-fs-fuse-connections.mount",
    "proc-sys-fs-binfmt_misc.automount",
    "systemd-binfmt.service",
    # Modules loaded early "in case": the labs load what they use (ip_vs, ipip, ...) themselves.
    "modprobe@configfs.service",
    "modprobe@dm_mod.service",
    "modprobe@drm.service",
    "modprobe@efi_pstore.service",
    "modprobe@fuse.service",
    "modprobe@loop.service",
    # Device nodes for modules not loaded yet (fuse, loop, tun...); devtmpfs makes a node when
    # its module loads.
    "kmod-static-nodes.service",
    # A crash store and a random seed carried across boots: a lab VM is thrown away, and the
    # kernel seeds its generator by itself.
    "systemd-pstore.service",
    "systemd-random-seed.service",
    # The journal stays in memory (journald.conf.d), nothing to flush; no utmp records.
    "systemd-journal-flush.service",
    "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service",
    # Nothing waits for the network to be "online" (sshd, nginx, keepalived bind the wildcard
    # address); no network settings on the kernel command line.
    "systemd-networkd-wait-online.service",
    "systemd-network-generator.service",
    # The system users the packages declare were made when they were installed, in the image.
    "systemd-sysusers.service",
    # The serial console goes to a file on the host (console-NODE.log): nobody can log in there.
    "serial-getty@ttyS0.service",
    # Periodic chores of a long-lived machine (apt's would also look for a network they lack).
    "e2scrub_reap.service",
    "e2scrub_all.timer",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "fstrim.timer",
)


# At boot udev announces only what a lab's VM waits for: its NICs (networkd configures a link once
# udev has seen it) and its disk. Announcing every device of the machine loaded modules for the
# PS/2 mouse, the PC speaker, the SMBus and more, seconds of one emulated CPU. Devices that come
# later (a NIC plugged in, a module a lab loads) are announced as they appear, as before.
UDEV_TRIGGER = """\
[Service]
ExecStart=
ExecStart=-udevadm trigger --type=all --action=add --subsystem-match=net --subsystem-match=block
"""


HOST_KEYS_UNIT = """\
[Unit]
Description=Generate SSH host keys on first boot
Before=ssh.service
# Empty counts as missing: a VM stopped hard seconds after its first boot can keep the key's
# file without its contents (written back later than the file was made), and sshd would never start.
ConditionFileNotEmpty=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/bin/rm -f /etc/ssh/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key.pub
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
ExecStart=/bin/sync /etc/ssh/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key.pub /etc/ssh

[Install]
WantedBy=ssh.service
"""


GUEST_KEY_SCRIPT = "/usr/local/sbin/labkit-ssh-key"  # guest_key.SCRIPT
GUEST_KEY_UNIT = f"""\
[Unit]
Description=Trust the SSH key the host passes as an SMBIOS OEM string
Before=ssh.service

[Service]
Type=oneshot
ExecStart={GUEST_KEY_SCRIPT}

[Install]
WantedBy=ssh.service
"""


def releases(tree: Path) -> list[str]:
    """The releases of the kernels in the tree's /boot."""
    return sorted(p.name.removeprefix("vmlinuz-") for p in (tree / "boot").glob("vmlinuz-*"))


def kernel_version(tree: Path) -> str:
    kernels = releases(tree)
    if not kernels:
        raise BoxError(f"no kernel in {tree}/boot: delete that cached tree and build again")
    return kernels[-1]


def make_disk(tree: Path, raw: Path, root_uuid: str, log: Callable[[str], None]) -> None:
    log(f"making a {DISK_GIB} GiB disk")
    with open(raw, "wb") as disk:
        disk.truncate(DISK_GIB * 1024**3)  # sparse
    # One bootable Linux partition from 1 MiB on; the disk id is the root's, as before.
    run(["sfdisk", "--quiet", str(raw)], stdin=partition_table(root_uuid))
    code = mbr_code()
    assert code is not None  # checked in check_host
    with open(raw, "r+b") as disk:
        disk.write(code.read_bytes()[:440])  # syslinux's boot code, before the disk id and the table

    loop = run_out(["losetup", "--find", "--show", str(raw)]).strip()
    try:
        # partx reads the table itself: the host kernel may lack the MBR parser that
        # `losetup --partscan` relies on (or already scanned it, with loop max_part set).
        if not Path(loop + "p1").exists():
            run(["partx", "--add", "--nr", "1", loop])
        part = wait_for(Path(loop + "p1"))
        run(["mkfs.ext4", "-q", "-F", "-L", "root", "-U", root_uuid, "-O", ext4_features(), "-d", str(tree), str(part)])
        mnt = raw.with_name("mnt")
        mnt.mkdir()
        run(["mount", str(part), str(mnt)])
        try:
            run(["extlinux", "--install", str(mnt / "boot/extlinux")])
        finally:
            run(["umount", str(mnt)])
        mnt.rmdir()
    finally:
        # a partition added by partx outlives the loop device unless deleted first
        subprocess.run(["partx", "--delete", loop], capture_output=True)
        subprocess.run(["losetup", "--detach", loop])


def ext4_features() -> str:
    """ext4 features extlinux cannot read; mke2fs before 1.47 knows no orphan_file."""
    features = ["^64bit", "^metadata_csum"]
    out = subprocess.run(["mkfs.ext4", "-V"], capture_output=True, text=True).stderr
    m = re.search(r"mke2fs (\d+)\.(\d+)", out)
    if m and (int(m.group(1)), int(m.group(2))) >= (1, 47):
        features.append("^orphan_file")
    return ",".join(features)


def partition_table(root_uuid: str) -> str:
    """sfdisk's script for the disk: a DOS label and one bootable Linux partition filling it."""
    return f"label: dos\nlabel-id: 0x{uuid.UUID(root_uuid).hex[:8]}\nstart=2048, type=83, bootable\n"
