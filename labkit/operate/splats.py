"""The kernel's own complaints: splats in a VM's kernel log (its console log, and dmesg read over
SSH) and the taint flags in /proc/sys/kernel/tainted. A regression often shows here first, while
traffic still flows. Pure: reads text, runs nothing.

A splat starts with the line the kernel prints first for it (the headings below, as the kernel's
lib/, mm/kasan, kernel/locking, kernel/rcu and kernel/hung_task.c print them); its lines go on
until a blank line, the kernel's end-of-trace line, or LINES lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LINES = 12  # of a splat kept: the heading, the place and the top of the stack

# First match wins: a KASAN report starts with "BUG: KASAN", which is no plain BUG.
KINDS: list[tuple[str, re.Pattern]] = [
    (kind, re.compile(pattern))
    for kind, pattern in [
        ("KASAN", r"BUG: KASAN: "),
        ("KFENCE", r"BUG: KFENCE: "),
        ("UBSAN", r"UBSAN: "),
        (
            "lockdep",
            r"WARNING: (possible (circular|recursive) locking|inconsistent lock state|suspicious RCU usage)"
            r"|INFO: possible (circular|recursive) locking",
        ),
        ("RCU stall", r"INFO: rcu_\w+ (self-)?detected stalls?"),
        ("hung task", r"INFO: task \S+ blocked for more than \d+ seconds"),
        ("soft lockup", r"BUG: soft lockup"),
        ("hard lockup", r"Watchdog detected hard LOCKUP"),
        ("Oops", r"BUG: (unable to handle|kernel NULL pointer dereference)|\bOops: "),
        ("BUG", r"kernel BUG at |BUG: (scheduling while atomic|sleeping function called|Bad page|workqueue)"),
        ("WARNING", r"WARNING: CPU: \d+ PID: \d+ at |WARNING: at "),
        ("panic", r"Kernel panic - not syncing"),
    ]
]
# "[  236.278671] ", "[ 1502.520319][T14140] ", a syslog or journal prefix up to "kernel: "
PREFIX = re.compile(r"^(?:.*?kernel: )?(?:\[[A-Z][a-z]{2} [^\]]*\] )?(?:\[\s*(\d+\.\d+)\])?(?:\[\s*[TC]\d+\])?\s?")
# what changes from boot to boot in a splat's first line: addresses, CPU, PID, a task's pid, seconds
# (the hung-task detector reports the same task again as it stays blocked: "more than 2 seconds")
VARIES = re.compile(r"0x[0-9a-f]+|(?<=CPU: )\d+|(?<=PID: )\d+|(?<=CPU#)\d+|:\d+(?= blocked)|(?<=more than )\d+|\d+s!")
END = re.compile(r"---\[ end trace|^=+$")

# Documentation/admin-guide/tainted-kernels.rst: bit, letter, what it means
TAINTS = [
    (0, "P", "proprietary module loaded"),
    (1, "F", "module force-loaded"),
    (2, "S", "kernel running on an out-of-specification system"),
    (3, "R", "module force-unloaded"),
    (4, "M", "processor reported a machine check exception"),
    (5, "B", "bad page referenced or unexpected page flags"),
    (6, "U", "taint requested by a userspace application"),
    (7, "D", "kernel died recently (OOPS or BUG)"),
    (8, "A", "ACPI table overridden by the user"),
    (9, "W", "kernel issued a warning"),
    (10, "C", "staging driver loaded"),
    (11, "I", "workaround for a platform firmware bug applied"),
    (12, "O", "externally-built (out-of-tree) module loaded"),
    (13, "E", "unsigned module loaded"),
    (14, "L", "soft lockup occurred"),
    (15, "K", "kernel live patched"),
    (16, "X", "auxiliary taint (distribution-defined)"),
    (17, "T", "kernel built with the struct randomization plugin"),
    (18, "N", "in-kernel test module loaded"),
]


@dataclass
class Splat:
    node: str
    kind: str
    title: str  # its first line, without the timestamp: what tells one splat from another
    lines: list[str]
    seconds: float | None  # the kernel's timestamp: seconds since the node booted
    moment: str = ""  # when, said against the cell's steps: "during verify, 42 s in"

    def key(self) -> tuple[str, str]:
        """The same splat on another kernel or in another run: its kind and where it hit, without
        addresses and numbers that change from boot to boot."""
        return self.kind, VARIES.sub("N", self.title)


def strip(line: str) -> tuple[str, float | None]:
    """A log line without its prefix; the kernel's timestamp, when it has one."""
    found = PREFIX.match(line)
    seconds = float(found[1]) if found and found[1] else None
    return line[found.end() :] if found else line, seconds


def kind_of(text: str) -> str | None:
    return next((kind for kind, pattern in KINDS if pattern.search(text)), None)


def parse(text: str, node: str) -> list[Splat]:
    """Every splat in a kernel log, in order."""
    lines = text.replace("\r", "").splitlines()
    found: list[Splat] = []
    i = 0
    while i < len(lines):
        message, seconds = strip(lines[i])
        kind = kind_of(message)
        if kind is None:
            i += 1
            continue
        kept = [message.rstrip()]
        j = i + 1
        while j < len(lines) and len(kept) < LINES:
            more, _ = strip(lines[j])
            if not more.strip() or END.search(more) or kind_of(more):
                break
            kept.append(more.rstrip())
            j += 1
        found.append(Splat(node, kind, message.strip(), kept, seconds))
        i = j
    return found


def merged(*sources: list[Splat]) -> list[Splat]:
    """Splats of one node read from several logs (console and dmesg), each once."""
    seen, out = set(), []
    for splat in (s for source in sources for s in source):
        if (splat.node, splat.title) not in seen:
            seen.add((splat.node, splat.title))
            out.append(splat)
    return out


def taint_flags(value: int) -> list[str]:
    """The taint letters set in /proc/sys/kernel/tainted's number, "W" etc.; unknown bits by number."""
    known = {bit: letter for bit, letter, _ in TAINTS}
    return [known.get(bit, f"bit {bit}") for bit in range(value.bit_length()) if value >> bit & 1]


def taint_text(letter: str) -> str:
    return next((f"{letter}: {why}" for _, flag, why in TAINTS if flag == letter), letter)


def moment(seconds: float | None, marks: list[tuple[str, float]]) -> str:
    """Which of the cell's steps a splat came in: `marks` are (step, the node's uptime when it
    began), in order."""
    if seconds is None or not marks:
        return "when is unknown (no timestamp)"
    step = None
    for name, start in marks:
        if seconds >= start:
            step = (name, start)
    if step is None:
        return f"during boot, {seconds:.0f} s after it began"
    return f"during {step[0]}, {seconds - step[1]:.0f} s in"
