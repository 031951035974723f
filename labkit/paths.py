"""Where labkit keeps its files.

The project folder (a clone of labkit) holds the lab files and Vagrantfile.j2. Everything
labkit makes lives under LABKIT_HOME (default ~/.local/share/labkit): the per-installation
SSH key, the box cache, and one folder per lab with its rendered Vagrantfile. Vagrant's own
`.vagrant/` in that folder is the only record of which machines exist.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
TEMPLATE = PROJECT / "Vagrantfile.j2"
LABS = PROJECT / "labs"


def home() -> Path:
    return Path(os.environ.get("LABKIT_HOME", Path.home() / ".local" / "share" / "labkit"))


def lab_dir(lab: str) -> Path:
    return home() / "labs" / lab


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


def lab_file(name_or_path: str) -> Path:
    """`nat` means labs/nat/lab.yaml; a folder or a .yaml path is taken as given."""
    given = Path(name_or_path)
    if given.suffix in (".yaml", ".yml"):
        return given
    if given.is_dir():
        return given / "lab.yaml"
    return LABS / name_or_path / "lab.yaml"


def known_labs() -> list[str]:
    return sorted(p.parent.name for p in LABS.glob("*/lab.yaml"))


def shown(path: Path) -> str:
    """A lab file's path as a reader would name it: relative to the project when inside it."""
    try:
        return str(path.resolve().relative_to(PROJECT))
    except ValueError:
        return str(path)
