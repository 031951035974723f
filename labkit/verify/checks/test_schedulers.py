"""Each scheduler does what it promises, seen from the client: where connections go, not only
that `ipvsadm -L` names the scheduler.

The client's work is one python3 program (probe.py) per batch, one SSH command each. Where a
scheduler counts connections, the director's counters before the batch and a model written from
the kernel's sources (scheduling.py) say where each connection held open must go; the check
asserts that the kernel sent them there. Checks that change a service (a fresh scheduler state, a
drained or removed real server) put back exactly the lab file's rules, so a provision after
verify changes nothing.
"""

from __future__ import annotations

import base64
import json
import shlex
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from labkit.labfile import Lab, VirtualService
from labkit.plan import ipvs
from labkit.verify.checks import scheduling
from labkit.verify.checks.scheduling import Dest
from labkit.verify.checks.table import connections, counters, recreate, settle

PROBE = base64.b64encode((Path(__file__).parent / "probe.py").read_bytes()).decode()

HELD = 6  # connections held open per batch: enough for each formula to move between servers
SOURCES = 24  # client addresses for the hashing schedulers


def probe(hosts, lab: Lab, args: dict, root: bool = False):
    """Run the client program on the client with these arguments; its JSON answer."""
    sudo = "sudo -n " if root else ""
    command = f'{sudo}python3 -c "$(echo {PROBE} | base64 -d)" {shlex.quote(json.dumps(args))}'
    return json.loads(hosts(lab.clients[0]).check_output(command))


def names(lab: Lab, keys) -> list[str]:
    """rs0:8002 for 192.168.66.111:8002; 'refused' for a connection that was not scheduled."""
    out = []
    for key in keys:
        if key is None:
            out.append("refused")
            continue
        address, _, port = key.rpartition(":")
        out.append(f"{lab.node_at(IPv4Address(address)) or address}:{port}")
    return out


def free_addresses(lab: Lab, count: int) -> list[str]:
    """Addresses on the client's network that no node, VIP or gateway of the lab uses: sources
    the client takes for one batch. (Extra client addresses in the lab file would stay in every
    other check's way; these exist only while the batch runs.)"""
    client = lab.clients[0]
    net_name, own = next(iter(lab.nodes[client].addresses.items()))
    used = {a for node in lab.nodes.values() for a in node.addresses.values()} | set(lab.vips) | {lab.gateway}
    free = [str(a) for a in lab.networks[net_name].hosts() if a not in used]
    return free[-count:]


def client_dev(lab: Lab) -> str:
    return next(iter(lab.nodes[lab.clients[0]].addresses))


def described(lab: Lab, dests: list[Dest]) -> str:
    return ", ".join(
        f"{n} (weight {d.weight}, active {d.active}, inactive {d.inactive})"
        for n, d in zip(names(lab, [d.key for d in dests]), dests)
    )


# ---- lc, wlc, sed, nq, ovf, lblc, lblcr: connections held open ------------------------------


def test_held_connections_go_where_the_scheduler_says(hosts, lab: Lab, held_service: VirtualService, figure):
    """Connections opened one after the other and held open go where the scheduler's formula
    says, given the counters at the start: lc to the fewest connections, wlc to the fewest per
    weight, sed counting the coming connection, nq to an idle server first, ovf to the highest
    weight until its active connections exceed its weight (then refused when all are over),
    lblc and lblcr keeping the VIP on one server until it is overloaded."""
    svc = held_service
    director = hosts(lab.active_director)
    recreate(director, svc)  # lblc and lblcr remember a server per address: start without one
    settle(director, svc)
    start = counters(director, svc)
    want = scheduling.hold(svc.scheduler.value, start, HELD).chosen
    seen = probe(hosts, lab, {"mode": "hold", "vip": str(svc.vip), "port": svc.port, "count": HELD})
    figure(f"{svc.scheduler}_held", " ".join(names(lab, seen)))
    assert seen == want, (
        f"{svc.key} {svc.scheduler}: {HELD} connections held open, starting from {described(lab, start)}:\n"
        f"  the scheduler's formula: {' '.join(names(lab, want))}\n"
        f"  the kernel sent them to: {' '.join(names(lab, seen))}"
    )


# ---- fo: the highest weight until it is drained ---------------------------------------------


def test_fo_fills_the_highest_weight_until_it_is_drained(hosts, lab: Lab, fo_service: VirtualService, figure):
    svc = fo_service
    director = hosts(lab.active_director)
    recreate(director, svc)
    start = counters(director, svc)
    top = scheduling.fo(start, {})
    want = scheduling.hold("fo", start, 3).chosen
    seen = probe(hosts, lab, {"mode": "hold", "vip": str(svc.vip), "port": svc.port, "count": 3})
    assert seen == want == [top.key] * 3, (
        f"{svc.key} fo: expected every connection on the highest weight, {' '.join(names(lab, want))}; "
        f"saw {' '.join(names(lab, seen))} ({described(lab, start)})"
    )
    director.check_output(f"sudo -n ipvsadm -e {ipvs.service_name(svc)} -r {top.key} {svc.forwarding.flag} -w 0")
    try:
        drained = counters(director, svc)
        want = scheduling.hold("fo", drained, 2).chosen
        seen = probe(hosts, lab, {"mode": "hold", "vip": str(svc.vip), "port": svc.port, "count": 2})
    finally:
        recreate(director, svc)  # the lab file's weights back
    figure("fo_after_drain", " ".join(names(lab, seen)))
    assert seen == want and top.key not in seen, (
        f"{svc.key} fo: with {names(lab, [top.key])[0]} drained, expected {' '.join(names(lab, want))}, "
        f"saw {' '.join(names(lab, seen))}"
    )


# ---- sh, mh, dh: hashing ------------------------------------------------------------------


def predicted(lab: Lab, svc: VirtualService, table: list[Dest], seen: dict, when: str) -> None:
    """sh and dh: each source's answer is the one the kernel's hash table gives (mh's is not
    modelled)."""
    if svc.scheduler.value not in ("sh", "dh"):
        return
    pick = (
        (lambda source: scheduling.sh(table, source))
        if svc.scheduler.value == "sh"
        else (lambda source: scheduling.dh(table, str(svc.vip)))
    )
    want = {source: getattr(pick(source), "key", None) for source in seen}
    wrong = {
        source: f"{names(lab, [seen[source]])[0]}, hashed to {names(lab, [want[source]])[0]}"
        for source in seen
        if seen[source] != want[source]
    }
    assert not wrong, (
        f"{svc.key} {svc.scheduler}{when}: sources answered elsewhere than the hash table says "
        f"(destinations in the kernel's order: {described(lab, table)}): {wrong}"
    )


def test_hash_keeps_each_source_on_one_server(hosts, lab: Lab, hash_service: VirtualService, figure):
    """sh and mh: each of many client addresses reaches the same server twice, and they spread
    over the servers; dh hashes the destination, so every source reaches the VIP's one server.
    Then one server is removed: its sources move; mh (Maglev hashing) keeps nearly all the
    others where they were, sh reassigns its whole table."""
    svc = hash_service
    director = hosts(lab.active_director)
    recreate(director, svc)
    args = {
        "mode": "sources",
        "vip": str(svc.vip),
        "port": svc.port,
        "dev": client_dev(lab),
        "sources": free_addresses(lab, SOURCES),
        "rounds": 2,
    }
    answers = probe(hosts, lab, args, root=True)
    first, second = ({s: a[i] for s, a in answers.items()} for i in (0, 1))
    table = counters(director, svc)
    servers = {d.key for d in table}
    assert set(first.values()) <= servers, f"{svc.key}: answers from {set(first.values())}, expected only {servers}"
    changed = {s: (first[s], second[s]) for s in first if first[s] != second[s]}
    assert not changed, f"{svc.key} {svc.scheduler}: sources that changed server between two requests: {changed}"
    predicted(lab, svc, table, first, "")
    used = sorted(set(first.values()))
    figure(f"{svc.scheduler}_servers_used", " ".join(names(lab, used)))
    if svc.scheduler.value == "dh":
        assert len(used) == 1, f"{svc.key} dh: every source asks the same VIP, so one server; saw {names(lab, used)}"
        return
    assert len(used) >= 2, f"{svc.key} {svc.scheduler}: {SOURCES} sources all reached {names(lab, used)}"

    gone = f"{svc.real_servers[-1].address}:{svc.real_port(svc.real_servers[-1])}"
    director.check_output(f"sudo -n ipvsadm -d {ipvs.service_name(svc)} -r {gone}")
    try:
        left = counters(director, svc)
        third = {s: a[0] for s, a in probe(hosts, lab, {**args, "rounds": 1}, root=True).items()}
    finally:
        recreate(director, svc)
    predicted(lab, svc, left, third, f" with {names(lab, [gone])[0]} removed")
    orphans = [s for s in first if first[s] == gone]
    stranded = [s for s in orphans if third[s] in (None, gone)]
    assert not stranded, f"{svc.key}: sources of the removed {names(lab, [gone])[0]} not moved to a server: {stranded}"
    others = [s for s in first if first[s] != gone]
    moved = [s for s in others if third[s] != first[s]]
    figure(
        f"{svc.scheduler}_sources_moved",
        f"{len(orphans) + len(moved)} of {len(first)} ({len(moved)} of {len(others)} not on the removed server)",
    )
    if svc.scheduler.value == "mh":
        # Maglev's table is rebuilt from each server's own preference list: a remaining server
        # keeps almost all its slots. At most one source in 8 of the others may move.
        assert len(moved) * 8 <= len(others), (
            f"{svc.key} mh: removing {names(lab, [gone])[0]} moved {len(moved)} of the {len(others)} sources "
            f"on other servers: {moved}"
        )


# ---- persistence ----------------------------------------------------------------------------


def wait_template_gone(director, source: str, limit: float) -> float:
    """Seconds until the director holds no persistence template for this client address."""
    start = time.monotonic()
    while True:
        if not any(c.source == f"{source}:0" for c in connections(director)) or time.monotonic() - start >= limit:
            return time.monotonic() - start
        time.sleep(1)


@pytest.fixture(scope="module")
def first_batches(hosts, lab: Lab) -> dict[str, tuple[dict, list, float]]:
    """service key -> (the probe's arguments, where its first batch went, when it ended), for
    every persistent service at once before their checks: their templates expire side by side,
    not one check after the other."""
    director = hosts(lab.active_director)
    # An address of its own per service: the client's usual address has templates from the
    # other checks, and another service's template would not expire while this one runs.
    persistent = [s for s in lab.services if s.persistence]
    sources = free_addresses(lab, SOURCES + len(persistent))[: len(persistent)]
    batches = {}
    for svc, source in zip(persistent, sources):
        args = {
            "mode": "ask",
            "targets": [[str(v), svc.port] for v in svc.addresses] * 2,
            "source": source,
            "dev": client_dev(lab),
        }
        wait_template_gone(director, source, 30)
        batches[svc.key] = (args, probe(hosts, lab, args, root=True), time.monotonic())
    return batches


def test_persistence_sticks_until_the_template_expires(
    hosts, lab: Lab, persistent_service: VirtualService, first_batches, figure
):
    """A client's connections all reach one server while its template lives (through every VIP
    of a firewall-mark service); once it expires, rr schedules the next connection anew: the
    server after the first one."""
    svc = persistent_service
    director = hosts(lab.active_director)
    args, first, ended = first_batches[svc.key]
    source = args["source"]
    assert None not in first and len(set(first)) == 1, (
        f"{svc.key} persistent: expected one server for {source} through {[str(v) for v in svc.addresses]}, "
        f"saw {names(lab, first)}"
    )
    # The template expires `persistence` seconds after the last connection began, once the
    # connections it controls are gone (reset: 10 s in CLOSE); a template that still controls
    # one when its time comes is kept another 60 s.
    limit = (svc.persistence if svc.persistence > 12 else svc.persistence + 60) + 5
    waited = time.monotonic() - ended + wait_template_gone(director, source, limit - (time.monotonic() - ended))
    assert waited < limit, f"{svc.key}: the template for {source} did not expire within {limit} s of the first batch"
    figure("template_gone_after_seconds", round(waited, 1))
    want = scheduling.rr(counters(director, svc), {"last": first[0]}).key
    second = probe(hosts, lab, args, root=True)
    assert second == [want] * len(second), (
        f"{svc.key}: after the template expired, expected rr's next server {names(lab, [want])[0]} "
        f"for every request, saw {names(lab, second)}"
    )
