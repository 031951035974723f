"""`labkit list`: every lab and copy on every libvirt host labkit knows."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from labkit import box
from labkit.boot import libvirt
from labkit.running import RunningLab, rendered


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
    kernels = {b.name: b.kernel for b in box.labkit_boxes()}
    rows = []
    for running in labs:
        on_host = held[running.uri]
        made = rendered(running.folder, "box") or "?"
        vms = [on_host[d] for d in running.domains if d in on_host] if on_host is not None else []
        rows.append(
            Listed(
                running.uri,
                running.lab.name,
                running.name,
                _state(vms, len(running.domains)) if on_host is not None else "host does not answer",
                kernels.get(made) or made,
                sum(vm.rss_mib for vm in vms),
                time.time() - (running.folder / "Vagrantfile").stat().st_mtime,
            )
        )
    ours = {d for r in labs for d in r.domains}
    seen_hosts = set()
    for uri, on_host in held.items():
        if hosts[uri] in seen_hosts:  # the same host by another URI: its VMs are listed already
            continue
        seen_hosts.add(hosts[uri])
        others: dict[str, list[libvirt.Domain]] = {}
        for domain, vm in (on_host or {}).items():
            if domain not in ours:  # labkit-<name>-<node>: another installation's, or lost
                others.setdefault(domain.removeprefix("labkit-").rsplit("-", 1)[0], []).append(vm)
        for name, vms in sorted(others.items()):
            rows.append(Listed(uri, "?", name, _state(vms, len(vms)), "?", sum(vm.rss_mib for vm in vms), None))
    return rows


def _state(vms: list[libvirt.Domain], expected: int) -> str:
    states = sorted({vm.state for vm in vms})
    if not vms:
        return "not created"
    if len(vms) == expected and len(states) == 1:
        return states[0]
    return ", ".join(f"{state} {sum(vm.state == state for vm in vms)}/{expected}" for state in states)
