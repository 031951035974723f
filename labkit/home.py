"""Where labkit keeps what it makes: LABKIT_HOME (default ~/.local/share/labkit).

It holds the per-installation SSH key, the box cache, and one folder per running lab with its
rendered Vagrantfile. Vagrant's own `.vagrant/` in that folder is the only record of which
machines exist.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


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
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "labkit", "-f", str(path)],
                       check=True)
    return path
