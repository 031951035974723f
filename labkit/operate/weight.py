"""`labkit weight`: a real server's weight changed on the running directors, and the lab recorded
as it now runs."""

from __future__ import annotations

from labkit.labfile import Lab, with_weight
from labkit.labfile.model import host_port
from labkit.operate.failover import wait_for
from labkit.plan import ipvs
from labkit.running import RunningLab

# keepalived applies a reload after the signal returns: the seconds its new weights may take
APPLIED_SECONDS = 20


def change(running: RunningLab, real_server: str, new_weight: int, service: str | None) -> Lab:
    """Set the weight, wait until every director's IPVS table has it, and record the lab: verify
    checks this split, `labkit provision LAB` restores the file's."""
    changed = with_weight(running.lab, real_server, new_weight, service)
    running.provision(changed, nodes=changed.directors)
    running.record(changed, f"labkit weight {real_server} {new_weight}")
    wait_for(
        f"every director listing {real_server} at weight {new_weight}",
        lambda: listed(running, changed, real_server),
        APPLIED_SECONDS,
    )
    return changed


def listed(running: RunningLab, lab: Lab, real_server: str) -> bool:
    """Whether each director's `ipvsadm -L -n` gives the real server the lab's weights."""
    want = {
        (svc.key, host_port(rs.address, svc.listed_port(rs))): rs.weight
        for svc in lab.services
        for rs in svc.real_servers
        if lab.is_called(svc, rs, real_server)
    }
    outputs = running.run_on(lab.directors, {"list": ipvs.COMMANDS["list"]})
    for out in outputs.values():
        seen = {(s.key, d.key): d.weight for s in ipvs.parse_list(out["list"]) for d in s.destinations}
        if any(seen.get(key) != weight for key, weight in want.items()):
            return False
    return True
