"""Where IPVS sends a new connection: each connection-counting scheduler's choice, written from
the kernel's own sources (net/netfilter/ipvs/ip_vs_{rr,lc,wlc,sed,nq,fo,ovf,lblc,lblcr}.c), so
the checks can predict from the director's counters where each connection they hold goes; and
the source and destination hashing tables (ip_vs_sh.c, ip_vs_dh.c). mh (Maglev, ip_vs_mh.c)
hashes with siphash under the kernel's own keys and is not modelled: its checks assert what it
promises instead.

Pure: a list of destinations in the kernel's order (as `ipvsadm -L -n` lists them), each with its
weight and its active and inactive connection counts. A tie goes to the first in that order,
because every scheduler here replaces its pick only on a strict comparison.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address
from math import gcd

from labkit.labfile import Lab, VirtualService


@dataclass
class Dest:
    key: str  # address:port, as ipvsadm lists it
    weight: int
    active: int = 0
    inactive: int = 0

    @property
    def overhead(self) -> int:
        """ip_vs_dest_conn_overhead(): an active connection counts 256 inactive ones."""
        return (self.active << 8) + self.inactive


def exact_split(lab: Lab, svc: VirtualService) -> dict[str, int] | None:
    """Two rounds of rr or wrr over the live destinations: each real server's share of that many
    new connections (or datagrams), exactly; a server listed on several ports counts for each.
    None where the choice depends on more than turns and weights, or on persistence."""
    if svc.persistence or svc.scheduler.value not in ("rr", "wrr"):
        return None
    dests = [
        (lab.server_at(rs.address, svc.real_port(rs), svc.protocol), rs.weight)
        for rs in svc.real_servers
        if rs.weight > 0
    ]
    g = gcd(*(w for _, w in dests)) if svc.scheduler.value == "wrr" else None
    want: Counter[str] = Counter()
    for name, w in dests:
        want[name] += 2 * (w // g if g else 1)
    return dict(want)


def live(lab: Lab, svc: VirtualService) -> set[str]:
    """The real servers the service may send to: those of weight above 0."""
    return {lab.server_at(rs.address, svc.real_port(rs), svc.protocol) for rs in svc.real_servers if rs.weight > 0}


def split_count(lab: Lab, svc: VirtualService) -> int:
    """How many requests a split check sends: the exact split's, or two for each live server."""
    want = exact_split(lab, svc)
    return sum(want.values()) if want else 2 * len(live(lab, svc))


def _least(dests: list[Dest], cost) -> Dest | None:
    """The least loaded by cost/weight among those with weight > 0; the first of equals. The
    kernel compares loh * w_d > doh * w_least to avoid division (wlc, sed, lblc's fallback)."""
    least = None
    for d in dests:
        if d.weight <= 0:
            continue
        if least is None or cost(least) * d.weight > cost(d) * least.weight:
            least = d
    return least


def rr(dests: list[Dest], state: dict) -> Dest | None:
    """ip_vs_rr.c: the next live destination after the last one picked (the first at start)."""
    live = [d for d in dests if d.weight > 0]
    if not live:
        return None
    keys = [d.key for d in dests]
    last = state.get("last")
    start = keys.index(last) + 1 if last in keys else 0
    for d in dests[start:] + dests[:start]:
        if d.weight > 0:
            state["last"] = d.key
            return d
    return None


def lc(dests: list[Dest], state: dict) -> Dest | None:
    """ip_vs_lc.c: the least overhead (active*256 + inactive), weights ignored except 0."""
    least = None
    for d in dests:
        if d.weight > 0 and (least is None or d.overhead < least.overhead):
            least = d
    return least


def wlc(dests: list[Dest], state: dict) -> Dest | None:
    """ip_vs_wlc.c: the least overhead / weight."""
    return _least(dests, lambda d: d.overhead)


def sed(dests: list[Dest], state: dict) -> Dest | None:
    """ip_vs_sed.c: the least (active + 1) / weight: the connection about to come counts, and
    inactive ones do not."""
    return _least(dests, lambda d: d.active + 1)


def nq(dests: list[Dest], state: dict) -> Dest | None:
    """ip_vs_nq.c: the first idle destination (no active connection); else as sed."""
    for d in dests:
        if d.weight > 0 and d.active == 0:
            return d
    return sed(dests, state)


def fo(dests: list[Dest], state: dict) -> Dest | None:
    """ip_vs_fo.c: the highest weight, the first of equals; load does not matter."""
    best = None
    for d in dests:
        if d.weight > (best.weight if best else 0):
            best = d
    return best


def ovf(dests: list[Dest], state: dict) -> Dest | None:
    """ip_vs_ovf.c: the highest weight among those whose active connections do not exceed
    their weight; none when all are over (the connection is refused)."""
    best = None
    for d in dests:
        if d.weight == 0 or d.active > d.weight:
            continue
        if best is None or d.weight > best.weight:
            best = d
    return best


def _overloaded(dest: Dest, dests: list[Dest]) -> bool:
    """lblc/lblcr is_overloaded(): more active connections than its weight, while some
    destination is under half its weight."""
    return dest.active > dest.weight and any(d.active * 2 < d.weight for d in dests)


def lblc(dests: list[Dest], state: dict) -> Dest | None:
    """ip_vs_lblc.c: the destination address keeps the server it was given (one VIP here), until
    that server is overloaded; then wlc picks another, which the address keeps from then on."""
    by_key = {d.key: d for d in dests}
    cached = by_key.get(state.get("server"))
    if cached is not None and cached.weight > 0 and not _overloaded(cached, dests):
        return cached
    chosen = wlc(dests, state)
    if chosen is not None:
        state["server"] = chosen.key
    return chosen


def lblcr(dests: list[Dest], state: dict) -> Dest | None:
    """ip_vs_lblcr.c: the address keeps a set of servers, newest first; the least loaded of the
    set (wlc) serves unless it is overloaded, and then wlc over all picks one that joins the set.
    (The set drops its most loaded member only after lblcr_expiration, a day by default.)"""
    by_key = {d.key: d for d in dests}
    members = [by_key[k] for k in state.get("set", []) if k in by_key]
    if members:
        best = wlc(members, state)
        if best is not None and not _overloaded(best, dests):
            return best
    chosen = wlc(dests, state)
    if chosen is not None and chosen.key not in state.get("set", []):
        state["set"] = [chosen.key, *state.get("set", [])]
    return chosen


SCHEDULERS = {"rr": rr, "lc": lc, "wlc": wlc, "sed": sed, "nq": nq, "fo": fo, "ovf": ovf, "lblc": lblc, "lblcr": lblcr}


@dataclass
class Placement:
    """Connections opened one after the other and held open: where each goes (None: refused)."""

    chosen: list[str | None]
    dests: list[Dest] = field(default_factory=list)  # the counters after them


def hold(scheduler: str, dests: list[Dest], count: int, state: dict | None = None) -> Placement:
    """Where `count` new connections go, each held open (ESTABLISHED: one more active connection
    on its destination) before the next one is opened."""
    pick = SCHEDULERS[scheduler]
    dests = [replace(d) for d in dests]
    state = {} if state is None else state
    chosen: list[str | None] = []
    for _ in range(count):
        d = pick(dests, state)
        chosen.append(d.key if d else None)
        if d is not None:
            d.active += 1
    return Placement(chosen, dests)


def in_a_row(scheduler: str, dests: list[Dest], count: int, source: str, destination: str) -> list[str | None] | None:
    """Where `count` connections opened one after the other go when each is closed before the next
    (a request and its answer, as the split check sends them). A closed connection waits in FIN_WAIT
    or TIME_WAIT and counts as inactive on its server: lc and wlc, which count inactive ones, move
    on; sed, nq, fo and ovf count active ones only and stay on one server; lblc and lblcr, from a
    service made anew (no server kept for the VIP yet), keep the first they choose. sh and dh hash
    the client's and the VIP's address. None for mh, which is not modelled."""
    if scheduler in ("sh", "dh"):
        pick = sh(dests, source) if scheduler == "sh" else dh(dests, destination)
        return [pick.key if pick else None] * count
    if scheduler not in SCHEDULERS or scheduler == "rr":
        return None
    dests = [replace(d) for d in dests]
    state: dict = {}
    chosen: list[str | None] = []
    for _ in range(count):
        d = SCHEDULERS[scheduler](dests, state)
        chosen.append(d.key if d else None)
        if d is not None:
            d.inactive += 1
    return chosen


# ---- sh and dh: a table of 256 buckets --------------------------------------------------------

TABLE_BITS = 8  # CONFIG_IP_VS_SH_TAB_BITS and CONFIG_IP_VS_DH_TAB_BITS, 8 by default
GOLDEN_RATIO_32 = 0x61C88647


def hash_32(value: int, bits: int) -> int:
    """include/linux/hash.h: the top `bits` of value * GOLDEN_RATIO_32, in 32 bits."""
    return ((value * GOLDEN_RATIO_32) & 0xFFFFFFFF) >> (32 - bits)


def buckets(dests: list[Dest], weighted: bool) -> list[Dest]:
    """ip_vs_sh_reassign() / ip_vs_dh_reassign(): the destinations in the kernel's order, round
    and round; sh gives each as many buckets in a row as its weight (at least one), dh one."""
    table: list[Dest] = []
    while dests and len(table) < 1 << TABLE_BITS:
        for d in dests:
            table += [d] * (max(d.weight, 1) if weighted else 1)
    return table[: 1 << TABLE_BITS]


def _hashed(dests: list[Dest], address: str, weighted: bool) -> Dest | None:
    if not dests:
        return None
    d = buckets(dests, weighted)[hash_32(int(IPv4Address(address)), TABLE_BITS)]
    return d if d.weight > 0 else None  # a bucket's server at weight 0: no destination


def sh(dests: list[Dest], source: str) -> Dest | None:
    """ip_vs_sh.c (without the sh-port and sh-fallback flags): the bucket of the source address."""
    return _hashed(dests, source, weighted=True)


def dh(dests: list[Dest], destination: str) -> Dest | None:
    """ip_vs_dh.c: the bucket of the destination address (the VIP), weights ignored."""
    return _hashed(dests, destination, weighted=False)
