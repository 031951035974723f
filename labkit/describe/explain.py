"""The plan of each node as a walkthrough: every step's reason and the commands it runs,
written as a person would type them. Pure."""

from __future__ import annotations

from labkit.labfile import Lab
from labkit.plan.guest import shown
from labkit.plan.steps import plan


def walkthrough(lab: Lab, node: str) -> list[tuple[str, list[str]]]:
    """(reason, commands) for each step of the node, in the order labkit applies them."""
    return [(step.why, [line for words in step.commands for line in shown(words)]) for step in plan(lab, node)]
