"""Boxes that differ from labkit's default box only in their kernel, so that a difference in a
lab's results is the kernel's: a Debian suite's linux-image-amd64, or a kernel package a developer
built (`make bindeb-pkg`), installed into a copy of the same root tree."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from labkit.box.image import SUITE, releases
from labkit.box.system import BoxError, chroot_mounts, run, run_out, write

# The suites whose linux-image-amd64 a box can take; bookworm's is the default box's own kernel.
SUITES = ("bookworm", "bookworm-backports", "trixie", "sid")

# What the labs load (IPVS, its schedulers, the tunnels' ends on the real servers: ipip, fou for
# GUE, ip_gre; conntrack and marks for NAT and fwmark; the NAT that maps a TUN port, which
# bookworm's iptables-nft loads as nft_chain_nat and xt_nat) and what the box needs to boot. A
# kernel without one of them cannot run every lab.
NEEDED_MODULES = (
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_wlc",
    "ip_vs_sh",
    "ipip",
    "fou",
    "ip_gre",
    "nf_conntrack",
    "xt_mark",
    "iptable_mangle",
    "nft_chain_nat",
    "xt_nat",
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "ext4",
)

KERNEL_SOURCE = "etc/apt/sources.list.d/labkit-kernel.list"


@dataclass(frozen=True)
class Kernel:
    spec: str  # as the user gave it
    suite: str | None = None
    deb: Path | None = None

    @cached_property
    def deb_sha256(self) -> str | None:
        return hashlib.sha256(self.deb.read_bytes()).hexdigest() if self.deb else None

    @property
    def is_default(self) -> bool:
        return self.suite == SUITE


def parse(spec: str) -> Kernel:
    """A Debian suite or the path of a linux-image .deb; anything else is one clear error."""
    if spec in SUITES:
        return Kernel(spec, suite=spec)
    path = Path(spec).expanduser()
    if spec.endswith(".deb"):
        if not path.is_file():
            raise BoxError(
                f"kernel package {spec} does not exist: give the path of a linux-image-*.deb "
                "(make bindeb-pkg writes it beside the kernel tree)"
            )
        package = _deb_package(path)
        if not package.startswith("linux-image-"):
            raise BoxError(
                f"{path.name} holds {package}, not a kernel image: give the linux-image-*.deb, "
                "not the headers or libc-dev one"
            )
        return Kernel(spec, deb=path.resolve())
    raise BoxError(
        f"unknown kernel {spec!r}: give a Debian suite ({', '.join(SUITES)}) or the path of a linux-image-*.deb"
    )


def _deb_package(path: Path) -> str:
    proc = subprocess.run(["dpkg-deb", "--field", str(path), "Package"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BoxError(
            f"{path} is not a Debian package ({proc.stderr.strip().splitlines()[-1]}): "
            "give the linux-image-*.deb that make bindeb-pkg wrote"
        )
    return proc.stdout.strip()


def package_modules(deb: Path) -> set[str]:
    """The modules a kernel package holds, as files or built in, read from the package itself."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    found: set[str] = set()
    assert proc.stdout is not None
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        for member in tar:
            if member.name.endswith("/modules.builtin") and member.isfile():
                found |= _module_names(tar.extractfile(member).read().decode(errors="replace"))
            elif MODULE_FILE.search(member.name):
                found |= _module_names(member.name)
    proc.wait()
    return found


MODULE_FILE = re.compile(r"\.ko(\.\w+)?$")


def _module_names(listing: str) -> set[str]:
    """Module names from lines such as modules.dep's "kernel/net/ipv4/ipip.ko.xz: ..."."""
    names = set()
    for line in listing.splitlines():
        path = line.split(":")[0].strip()
        if path:
            names.add(MODULE_FILE.sub("", path.rsplit("/", 1)[-1]).replace("-", "_"))
    return names


def check_package(kernel: Kernel) -> None:
    """A kernel package without what the labs need is refused before anything is built."""
    if kernel.deb is not None:
        _refuse_missing(kernel, kernel.deb.name, [m for m in NEEDED_MODULES if m not in package_modules(kernel.deb)])


def install(tree: Path, kernel: Kernel, mirror: str, log: Callable[[str], None]) -> str:
    """Put the kernel into the root tree in place of bookworm's; its release (uname -r).

    Only the kernel package comes from the other suite, with what it depends on that bookworm
    cannot satisfy (apt's pkg/suite form); the rest of the userland stays bookworm's.
    """
    before = set(releases(tree))
    write(tree / RUN_PARTS_SHIM, RUN_PARTS_WRAPPER, mode=0o755)
    try:
        return _install(tree, kernel, mirror, before, log)
    finally:
        (tree / RUN_PARTS_SHIM).unlink(missing_ok=True)


# Newer kernel packages (linux-base 4.12 and later) run their hooks with several directories,
# `run-parts ... /etc/kernel/postinst.d /usr/share/kernel/postinst.d`, which bookworm's run-parts
# (debianutils 5.7, one directory only) refuses; the debianutils that takes several needs a newer
# C library, and so would change the userland. While the kernel is installed, this wrapper, found
# first on dpkg's PATH, runs bookworm's run-parts once per directory.
RUN_PARTS_SHIM = "usr/local/sbin/run-parts"
RUN_PARTS_WRAPPER = """\
#!/usr/bin/perl
# labkit: bookworm's run-parts takes one directory; run it once for each one given.
my @options = grep { /^-/ && $_ ne "--" } @ARGV;
for my $dir (grep { !/^-/ } @ARGV) {
    system("/bin/run-parts", @options, $dir) == 0 or exit(($? >> 8) || 1);
}
"""


def _install(tree: Path, kernel: Kernel, mirror: str, before: set[str], log: Callable[[str], None]) -> str:
    chroot = ["chroot", str(tree)]
    # apt gives dpkg a PATH of its own (DPkg::Path): put the run-parts wrapper's folder first.
    # INITRD=No: the kernel's hooks make no initramfs; the box build makes its own, small one.
    apt = [
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "INITRD=No",
        "apt-get",
        "-q",
        "-y",
        "--no-install-recommends",
        "-o",
        "Dpkg::Options::=--force-confnew",
        "-o",
        "DPkg::Path=/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
    ]
    if kernel.suite:
        # Signatures are checked, the Release file's age is not: a frozen mirror or a snapshot of
        # the archive serves testing's and unstable's Release past its Valid-Until date.
        added = tree / KERNEL_SOURCE
        write(added, f"deb [check-valid-until=no] {mirror} {kernel.suite} main\n")
        package, what = f"linux-image-amd64/{kernel.suite}", f"{kernel.suite}'s kernel"
    else:
        assert kernel.deb is not None
        added = tree / "tmp" / kernel.deb.name
        shutil.copyfile(kernel.deb, added)
        package, what = f"/tmp/{kernel.deb.name}", kernel.deb.name
    log(f"installing {what}")
    with chroot_mounts(tree):
        try:
            run(chroot + apt + ["update"], hint=f"check that {mirror} is reachable and serves what {what} needs")
            run(
                chroot + apt + ["install", package],
                hint=f"apt could not install {what} into bookworm; see its output above",
            )
        finally:
            added.unlink()
        new = sorted(set(releases(tree)) - before)
        if len(new) != 1:
            raise BoxError(
                f"installing kernel {kernel.spec} gave {len(new)} new kernels ({', '.join(new) or 'none'}): "
                "give a package that holds exactly one"
            )
        release = new[0]
        # Newer kernel packages keep their config beside the modules; bookworm's mkinitramfs
        # reads it from /boot to learn which compressions the kernel can unpack.
        config = tree / "boot" / f"config-{release}"
        if not config.exists() and (tree / "usr/lib/modules" / release / "config").exists():
            config.symlink_to(f"../usr/lib/modules/{release}/config")
        old = [p for p in _installed(tree, "linux-image-[0-9]*") if release not in p]
        if old:
            log(f"removing {', '.join(old)}")
            run(chroot + apt + ["purge", *old])
        run(chroot + apt + ["clean"])
    for lists in (tree / "var/lib/apt/lists").glob("*_dists_*"):
        lists.unlink()
    return release


def _installed(tree: Path, pattern: str) -> list[str]:
    out = run_out(["chroot", str(tree), "dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Package}\n", pattern])
    return [line.split()[-1] for line in out.splitlines() if line.startswith("ii")]


def missing_modules(tree: Path, release: str) -> list[str]:
    """NEEDED_MODULES that the kernel has neither built in nor as a module."""
    have: set[str] = set()
    for index in ("modules.dep", "modules.builtin"):
        path = tree / "lib/modules" / release / index
        if path.exists():
            have |= _module_names(path.read_text())
    return [m for m in NEEDED_MODULES if m not in have]


def check_modules(tree: Path, kernel: Kernel, release: str) -> None:
    _refuse_missing(kernel, release, missing_modules(tree, release))


def _refuse_missing(kernel: Kernel, what: str, missing: list[str]) -> None:
    if missing:
        raise BoxError(
            f"kernel {what} (from {kernel.spec}) has no {', '.join(missing)}: the labs need them. "
            "Build the kernel with them as modules or built in (e.g. CONFIG_IP_VS=m, CONFIG_NET_IPIP=m)"
        )


def package_version(tree: Path, package: str) -> str:
    return run_out(["chroot", str(tree), "dpkg-query", "-W", "-f", "${Version}", package]).strip()


def box_name(release: str) -> str:
    """labkit/linux-6.12.57+deb12-amd64 -> a name Vagrant takes as it is."""
    return "labkit/linux-" + re.sub(r"[^A-Za-z0-9._-]", "-", release)
