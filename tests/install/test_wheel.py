"""labkit installed the ordinary way: a wheel built from the project, installed in a fresh venv,
finds its shipped labs and templates (nothing is read from a clone)."""

import subprocess
import sys
import venv
from pathlib import Path

import pytest

from labkit.labfile import LABS, load_lab

PROJECT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(path.parent.name for path in LABS.glob("*/lab.yaml"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The labkit command of a fresh venv with the wheel installed."""
    work = tmp_path_factory.mktemp("wheel")
    tracked = subprocess.run(["git", "ls-files"], cwd=PROJECT, capture_output=True, text=True, check=True).stdout
    source = work / "source"
    for name in tracked.split("\n"):
        if name and (PROJECT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((PROJECT / name).read_bytes())
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"), str(source)], check=True
    )
    wheel = next((work / "dist").glob("labkit-*.whl"))
    venv.create(work / "venv", with_pip=True)
    subprocess.run([str(work / "venv/bin/pip"), "install", "-q", str(wheel)], check=True)
    return work / "venv/bin/labkit"


@pytest.mark.parametrize("lab", SHIPPED)
def test_the_wheel_renders_and_explains_every_shipped_lab(installed, lab, tmp_path):
    env = {"LABKIT_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    rendered = subprocess.run(
        [str(installed), "render", lab, "--accel", "tcg"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stdout.startswith(f"# Rendered by labkit from labs/{lab}/lab.yaml")
    assert f'libvirt__network_name: "labkit-{lab}-' in rendered.stdout
    explained = subprocess.run([str(installed), "explain", lab], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert explained.returncode == 0, explained.stderr
    for name, node in load_lab(LABS / lab / "lab.yaml").nodes.items():
        assert f"## {name} ({node.role.value})" in explained.stdout
