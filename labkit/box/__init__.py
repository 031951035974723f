"""labkit's Vagrant box, built from Debian packages (Vagrant Cloud is not needed)."""

from labkit.box.build import build_box
from labkit.box.image import DEFAULT_BOX, PACKAGES, package_list
from labkit.box.kernel import SUITES, Kernel
from labkit.box.kernel import parse as parse_kernel
from labkit.box.mirror import debian_mirror, mirror_from_sources
from labkit.box.share import Shared, export_box, import_box
from labkit.box.store import (
    BootFiles,
    Box,
    base_volume_prefix,
    boot_files,
    boot_volumes,
    box_boots_lean,
    box_exists,
    box_for,
    box_for_kernel,
    box_has_packages,
    box_takes_key_at_boot,
    is_labkit_box,
    labkit_boxes,
    why_outdated,
)
from labkit.box.system import BoxError

__all__ = [
    "DEFAULT_BOX",
    "PACKAGES",
    "SUITES",
    "BootFiles",
    "Box",
    "base_volume_prefix",
    "boot_files",
    "boot_volumes",
    "BoxError",
    "Kernel",
    "Shared",
    "box_boots_lean",
    "box_exists",
    "box_for",
    "box_for_kernel",
    "box_has_packages",
    "box_takes_key_at_boot",
    "build_box",
    "debian_mirror",
    "export_box",
    "import_box",
    "is_labkit_box",
    "labkit_boxes",
    "mirror_from_sources",
    "package_list",
    "parse_kernel",
    "why_outdated",
]
