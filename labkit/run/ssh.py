"""Push a lab's plan to its nodes over SSH with fabric, all nodes at once.

Each node gets its whole plan as one script, run by `sudo sh -c`: one round trip per node,
whatever the number of steps. (Not on standard input: invoke feeds that a byte at a time.)
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fabric import Config, Connection
from paramiko.ssh_exception import SSHException

from labkit.errors import LabkitError
from labkit.labfile import Lab
from labkit.build.plan import plan, script


@dataclass
class NodeResult:
    node: str
    changed: list[str] = field(default_factory=list)
    error: str = ""  # empty when every step succeeded


def connect(node: str, ssh_config: Path) -> Connection:
    return Connection(node, config=Config(runtime_ssh_path=str(ssh_config)), connect_timeout=30)


def run(node: str, ssh_config: Path, commands: dict[str, list[str]]) -> dict[str, str]:
    """Run each command (a list of words) on the node over one connection: name -> stdout.
    A command that fails is an error naming the node, the command and what it said."""
    outputs = {}
    try:
        with connect(node, ssh_config) as conn:
            for name, words in commands.items():
                out = conn.run(shlex.join(words), hide=True, warn=True, in_stream=False)
                if out.exited != 0:
                    raise LabkitError(f"{node}: {shlex.join(words)} failed: {out.stderr.strip()[-300:]}")
                outputs[name] = out.stdout
    except (OSError, SSHException) as exc:
        raise LabkitError(f"cannot reach {node} over SSH: {exc}") from None
    return outputs


def run_on(nodes: list[str], ssh_config: Path, commands: dict[str, list[str]]) -> dict[str, dict[str, str]]:
    """run() on several nodes at once: node -> name -> stdout."""
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        return dict(zip(nodes, pool.map(lambda node: run(node, ssh_config, commands), nodes)))


def provision_node(lab: Lab, node: str, ssh_config: Path) -> NodeResult:
    result = NodeResult(node)
    try:
        with connect(node, ssh_config) as conn:
            command = shlex.join(["sudo", "-n", "sh", "-c", script(plan(lab, node))])
            out = conn.run(command, hide=True, warn=True, in_stream=False)
    except (OSError, SSHException) as exc:  # unreachable or refused: name the node and the cause
        result.error = f"cannot reach {node} over SSH: {exc}"
        return result
    result.changed = [line.removeprefix("labkit-changed: ")
                      for line in out.stdout.splitlines() if line.startswith("labkit-changed: ")]
    if out.exited != 0:
        failed = [line.removeprefix("labkit-failed: ")
                  for line in out.stderr.splitlines() if line.startswith("labkit-failed: ")]
        detail = "\n".join(line for line in out.stderr.splitlines()[-8:] if not line.startswith("labkit-failed: "))
        result.error = f"step failed: {failed[0] if failed else '?'}\n{detail}".rstrip()
    return result


def provision(lab: Lab, ssh_config: Path, on_done: Callable[[NodeResult], None] = lambda r: None,
              nodes: list[str] | None = None) -> list[NodeResult]:
    nodes = nodes or list(lab.nodes)
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        futures = [pool.submit(provision_node, lab, node, ssh_config) for node in nodes]
        results = []
        for future in futures:
            results.append(future.result())
            on_done(results[-1])
    return results
