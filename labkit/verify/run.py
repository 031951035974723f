"""Run the verify suite with pytest. pytest's exit code is labkit's."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

CHECKS = Path(str(resources.files("labkit.verify.checks")))
NONE_CHOSEN = 5  # pytest's exit status when -k or -m chose no check


def verify(lab_dir: Path, ssh_config: Path, pytest_args: list[str]) -> int:
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(CHECKS),
        # Only the plugins the checks use, not every pytest plugin installed beside labkit: another
        # could change how the checks run, and each costs startup (with labkit's test extras
        # installed, verify started 0.8 s later).
        "-p",
        "testinfra.plugin",
        "-p",
        "labkit.verify.checks.plugin",
        f"--lab-dir={lab_dir}",
        f"--ssh-config={ssh_config}",
        f"--rootdir={CHECKS}",
        "-p",
        "no:cacheprovider",
        "-o",
        "junit_family=xunit1",  # keeps the measured figures as <properties> in JUnit XML
        *pytest_args,
    ]
    return subprocess.run(command, env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}).returncode
