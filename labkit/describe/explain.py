"""The plan of each node as a walkthrough: every step's reason and the commands it runs,
written as a person would type them. Pure."""

from __future__ import annotations

import base64
import shlex

from labkit.labfile import Lab
from labkit.build.plan import Step, plan

# The plan's shell helpers (plan.PRELUDE), as the commands they stand for.
HELPERS = {
    "apt_install": lambda *pkgs: [shlex.join(["apt-get", "install", "-y", *pkgs])],
    "set_hostname": lambda name: [f"hostname {name}", f"echo {name} > /etc/hostname"],
    "name_link": lambda name, mac: [f"ip link set dev <the NIC with MAC {mac}> name {name}", f"ip link set dev {name} up"],
    "ipvs_load": lambda path: [f"ipvsadm-restore < {path}"],
    "random_file": lambda path, size: [f"head -c {size} /dev/urandom > {path}"],
    "apply_config": lambda unit: [f"systemctl reload-or-restart {unit}"],
}


def _file(path: str, mode: str, data: str) -> list[str]:
    content = base64.b64decode(data)
    try:
        text = content.decode()
    except UnicodeDecodeError:
        return [f"write {path} ({len(content)} bytes, mode {mode})"]
    return [f"cat > {path} <<'EOF'", *text.splitlines(), "EOF"]


def commands(step: Step) -> list[str]:
    out: list[str] = []
    for words in step.commands:
        if words[0] == "put":
            out += _file(*words[1:])
        elif words[0] in HELPERS:
            out += HELPERS[words[0]](*words[1:])
        else:
            out.append(shlex.join(words))
    return out


def walkthrough(lab: Lab, node: str) -> list[tuple[str, list[str]]]:
    """(reason, commands) for each step of the node, in the order labkit applies them."""
    return [(step.why, commands(step)) for step in plan(lab, node)]
