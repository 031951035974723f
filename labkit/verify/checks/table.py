"""A service as the active director's kernel holds it, for the checks that predict the
scheduler's choices: its destinations in the kernel's order with their connection counters."""

from __future__ import annotations

import shlex
import time

from labkit.labfile import VirtualService
from labkit.plan import ipvs
from labkit.verify.checks.scheduling import Dest


def listing(director, svc: VirtualService) -> ipvs.Service:
    """The service as the director's kernel has it, with counters. --nosort keeps the kernel's
    own order of the destinations (the newest first), which breaks the schedulers' ties;
    ipvsadm otherwise sorts them by address."""
    return ipvs.parse_list(director.check_output(f"sudo -n ipvsadm -L -n --nosort {ipvs.service_name(svc)}"))[0]


def counters(director, svc: VirtualService) -> list[Dest]:
    return [Dest(d.key, d.weight, d.active, d.inactive) for d in listing(director, svc).destinations]


def connections(director) -> list[ipvs.Connection]:
    """The director's connection entries. `ipvsadm -L -n -c` reads /proc/net/ip_vs_conn a page
    at a time, and each page starts again from the table's beginning, counting off the entries
    already read: an entry that expires between two pages shifts that count, and the listing
    skips one that still exists. Two listings read one after the other, merged: an entry would
    have to be skipped by both."""
    merged = {}
    for c in ipvs.parse_connections(director.check_output("sudo -n sh -c 'ipvsadm -L -n -c; ipvsadm -L -n -c'")):
        merged.setdefault((c.protocol, c.source, c.virtual, c.destination), c)
    return list(merged.values())


def settle(director, svc: VirtualService, within: int = 15) -> None:
    """Wait until none of the service's connection entries expires in the next `within` seconds:
    an inactive connection that goes mid-check would change the counters the model started from."""
    for _ in range(3):
        entries = connections(director)
        soon = [c.expire for c in entries if c.virtual == f"{svc.vip}:{svc.port}" and c.expire < within]
        if not soon:
            return
        time.sleep(max(soon) + 1)


def recreate(director, svc: VirtualService) -> None:
    """The service as the lab file makes it, made anew: the scheduler's memory starts empty.
    (The real servers' counters stay: the kernel keeps a removed destination while connections
    use it, and takes it back when it is added again.)"""
    # One ipvsadm per rule: ipvsadm-restore would clear the whole table first.
    commands = [f"ipvsadm -D {ipvs.service_name(svc)}"]
    commands += [shlex.join(["ipvsadm", *line.split()]) for line in ipvs.service_rules(svc).splitlines()]
    director.check_output(f"sudo -n sh -c {shlex.quote('; '.join(commands))}")
