"""What keepalived's health checker promises, read from the keepalived.conf a director runs (not
from labkit's generator, so a generator bug cannot move the bound with it).

A real server that stops answering is taken out after its check fails and every retry fails. A
check starts within delay_loop; each attempt gives up after connect_timeout (a server that hangs
uses all of it; one that refuses fails at once); retries wait delay_before_retry. So the longest
it can take is delay_loop + (retry + 1) * connect_timeout + retry * delay_before_retry, for the
slowest settings in the file.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

SETTINGS = ("delay_loop", "connect_timeout", "retry", "delay_before_retry")
# What the client adds to the checker's time: its own 1 s request timeout and 0.1 s between
# requests, and guests under software emulation scheduling the checker late.
MARGIN_SECONDS = 3.0


def settings(conf: str) -> dict[str, float]:
    """The largest value of each setting in a keepalived.conf."""
    found = {}
    for name in SETTINGS:
        values = [float(v) for v in re.findall(rf"^\s*{name}\s+(\d+(?:\.\d+)?)\s*$", conf, re.M)]
        if not values:
            raise ValueError(f"keepalived.conf sets no {name}")
        found[name] = max(values)
    return found


def takeout_bound(conf: str) -> float:
    """Seconds within which the checker takes a dead real server out, by its settings."""
    s = settings(conf)
    return s["delay_loop"] + (s["retry"] + 1) * s["connect_timeout"] + s["retry"] * s["delay_before_retry"]


def seconds_until(condition: Callable[[], bool], limit: float) -> float | None:
    """Poll condition() every 0.5 s: the seconds until it held, or None if it did not within limit."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if condition():
            return time.monotonic() - start
        time.sleep(0.5)
    return None
