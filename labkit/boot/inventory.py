"""`labkit list`: every lab and copy on every libvirt host labkit knows."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from labkit.boot import libvirt, names
from labkit.running import RunningLab


@dataclass
class Listed:
    """One lab or copy as `labkit list` shows it."""

    host: str
    lab: str
    name: str
    state: str
    kernel: str
    memory_mib: int
    age_s: float | None  # None: not made by this installation


def inventory(known: list[str]) -> list[Listed]:
    """Every lab and copy this installation has up, and every other labkit VM on the hosts it
    knows (this one, those its labs run on, and `known`), with state, kernel, memory and age."""
    labs = RunningLab.all()
    uris = list(dict.fromkeys([libvirt.LOCAL, *(r.uri for r in labs), *known]))
    with ThreadPoolExecutor(max_workers=len(uris)) as pool:
        held = dict(zip(uris, pool.map(libvirt.domains, uris)))
        hosts = dict(zip(uris, pool.map(libvirt.host_uuid, uris)))
    rows = []
    for running in labs:
        on_host = held[running.uri]
        booked = running.booked
        vms = [on_host[d] for d in running.domains if d in on_host] if on_host is not None else []
        rows.append(
            Listed(
                running.uri,
                running.lab.name,
                running.name,
                _state(vms, len(running.domains)) if on_host is not None else "host does not answer",
                booked.release or booked.box,
                sum(vm.rss_mib for vm in vms),
                time.time() - booked.created_at.timestamp(),
            )
        )
    ours = {d for r in labs for d in r.domains}
    seen_hosts = set()
    for uri, on_host in held.items():
        if hosts[uri] in seen_hosts:  # the same host by another URI: its VMs are listed already
            continue
        seen_hosts.add(hosts[uri])
        others = [d for d in on_host or {} if d not in ours]  # another installation's, or lost
        for name, domains in sorted(names.by_owner(others, libvirt.descriptions(uri, others)).items()):
            vms = [on_host[d] for d in domains]
            rows.append(Listed(uri, "?", name, _state(vms, len(vms)), "?", sum(vm.rss_mib for vm in vms), None))
    return rows


def _state(vms: list[libvirt.Domain], expected: int) -> str:
    states = sorted({vm.state for vm in vms})
    if not vms:
        return "not created"
    if len(vms) == expected and len(states) == 1:
        # every VM off, as after the host restarted: the lab is there, `labkit up` starts it
        return "stopped" if states == ["shutoff"] else states[0]
    return ", ".join(f"{state} {sum(vm.state == state for vm in vms)}/{expected}" for state in states)
