"""Where labkit keeps what it makes: LABKIT_HOME (default ~/.local/share/labkit).

It holds the per-installation SSH key, the box cache, and one folder per running lab with its
rendered Vagrantfile. Vagrant's own `.vagrant/` in that folder is the only record of which
machines exist.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from labkit.errors import LabkitError


def home() -> Path:
    return Path(os.environ.get("LABKIT_HOME", Path.home() / ".local" / "share" / "labkit"))


def labs_dir() -> Path:
    return home() / "labs"


def lab_dir(lab: str) -> Path:
    return labs_dir() / lab


def cache_dir() -> Path:
    return home() / "cache"


def key() -> Path:
    """The installation's SSH key, made on first use. The labkit box trusts its public half."""
    path = home() / "id_ed25519"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "labkit", "-f", str(path)], check=True)
    return path


def vagrant_home() -> Path:
    """Vagrant's own folder: its boxes and its index of machines."""
    return Path(os.environ.get("VAGRANT_HOME", Path.home() / ".vagrant.d"))


def config_file() -> Path:
    return home() / "config.yaml"


def hosts() -> dict[str, str]:
    """The libvirt hosts named in labkit's config file (`hosts: {name: qemu+ssh://user@host/system}`),
    for --connect NAME and labkit list."""
    path = config_file()
    try:
        data = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
    except yaml.YAMLError as exc:
        raise LabkitError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}. Fix it or remove it") from None
    found = data.get("hosts", {}) if isinstance(data, dict) else None
    if not isinstance(found, dict) or not all(isinstance(v, str) for v in found.values()):
        raise LabkitError(f"{path}: expected `hosts:` with one `name: qemu+ssh://user@host/system` per host")
    return {str(k): v for k, v in found.items()}
