"""labkit's Vagrant box, built from Debian packages (Vagrant Cloud is not needed)."""

from labkit.box.build import build_box
from labkit.box.image import DEFAULT_BOX, PACKAGES, BoxError, package_list
from labkit.box.mirror import debian_mirror, mirror_from_sources
from labkit.box.store import box_exists, box_has_packages, box_trusts

__all__ = ["DEFAULT_BOX", "PACKAGES", "BoxError", "box_exists", "box_has_packages", "box_trusts", "build_box",
           "debian_mirror", "mirror_from_sources", "package_list"]
