"""Finding a lab file: a shipped lab by name, a folder, or a path."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# The labs that come with labkit, inside the package so that an installed wheel has them.
LABS = Path(str(resources.files("labkit") / "labs"))


def lab_file(name_or_path: str) -> Path:
    """`nat` means the shipped nat lab; a folder or a .yaml path is taken as given."""
    given = Path(name_or_path)
    if given.suffix in (".yaml", ".yml"):
        return given
    if given.is_dir():
        return given / "lab.yaml"
    return LABS / name_or_path / "lab.yaml"


def known_labs() -> list[str]:
    return sorted(p.parent.name for p in LABS.glob("*/lab.yaml"))


def shown(path: Path) -> str:
    """A lab file's path as a reader would name it: `labs/nat/lab.yaml` for a shipped lab,
    relative to the current folder when inside it."""
    path = path.resolve()
    for base, prefix in ((LABS, "labs"), (Path.cwd(), "")):
        try:
            return str(Path(prefix) / path.relative_to(base))
        except ValueError:
            continue
    return str(path)
