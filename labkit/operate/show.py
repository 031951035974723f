"""`labkit show`: both directors' IPVS tables side by side, with counters and rates.

Pure: the CLI runs ipvs.COMMANDS on each director and hands the outputs to director_state(); this
module parses them (through ipvs.py) and builds what is printed or dumped as JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import ip_address

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from labkit.labfile import Lab
from labkit.labfile.model import host_port
from labkit.plan import ipvs, mesh
from labkit.plan.ipvs import held_vips

# Only for --connections: the table can hold thousands of entries.
CONNECTIONS_COMMAND = ["sudo", "-n", "ipvsadm", "-L", "-n", "-c"]

NOTE = "The kernel's estimator refreshes counters and rates about every 2 s: they can lag the traffic."


@dataclass
class DirectorState:
    name: str
    services: list[ipvs.Service]
    vips: list[str]  # the lab's VIPs this director holds
    connections: list[ipvs.Connection] | None = None  # None unless asked for
    sync: list[ipvs.SyncDaemon] = field(default_factory=list)
    # A routing mesh's node: the table is its ingress namespace's, which has these addresses.
    namespace: str | None = None
    addresses: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        # The active director is the one holding the VIPs: clients' packets reach only it.
        return bool(self.vips)


def ingress_commands(commands: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """The same listings, run inside a swarm node's ingress namespace, where its IPVS table is."""
    inside = ["sudo", "-n", "ip", "netns", "exec", mesh.SBOX]
    return {
        name: inside + (words[2:] if words[:2] == ["sudo", "-n"] else words)
        for name, words in commands.items()
        if name != "daemon"
    }


def ingress_state(lab: Lab, name: str, outputs: Mapping[str, str]) -> DirectorState:
    """A swarm node's ingress namespace from the outputs of ingress_commands(ipvs.COMMANDS)."""
    state = director_state(lab, name, outputs)
    state.namespace = mesh.SBOX
    state.addresses = [a for a in ipvs.INET.findall(outputs["addresses"]) if "." in a and not a.startswith("127.")]
    return state


def director_state(lab: Lab, name: str, outputs: Mapping[str, str]) -> DirectorState:
    """One director from the outputs of ipvs.COMMANDS (same keys), plus "connections" if it ran
    CONNECTIONS_COMMAND."""
    return DirectorState(
        name,
        ipvs.table(outputs["list"], outputs["stats"], outputs["rate"]),
        held_vips(lab, outputs["addresses"]),
        ipvs.parse_connections(outputs["connections"]) if "connections" in outputs else None,
        ipvs.parse_daemons(outputs.get("daemon", "")),
    )


# ---- rendering ------------------------------------------------------------------------------


def _title(d: DirectorState) -> Text:
    if d.namespace:
        where = f" (ip netns exec {d.namespace}: {', '.join(d.addresses)}; the node itself has neither)"
        return Text.assemble((f"{d.name} ", "bold"), (d.namespace, "bold cyan"), where)
    if d.active:
        return Text.assemble((f"{d.name} ", "bold"), ("● active", "bold green"), f" (holds {', '.join(d.vips)})")
    return Text.assemble((f"{d.name} ", "bold"), ("○ standby", "yellow"), " (holds no VIP)")


def _sync(d: DirectorState) -> str:
    if d.namespace:
        return f"tasks checked by keepalived in {d.namespace} (systemctl status {mesh.UNIT})"
    if not d.sync:
        return "no sync daemon"
    return "; ".join(f"sync {s.role} on {s.interface}, syncid {s.syncid}" for s in d.sync)


def _name(svc: ipvs.Service) -> str:
    name = (
        f"FWM {svc.fwmark}"
        if svc.fwmark is not None
        else f"{svc.protocol.value.upper()} {host_port(svc.vip, svc.port)}"
    )
    flags = ([f"persistent {svc.persistence}"] if svc.persistence else []) + (["ops"] if svc.ops else [])
    return f"{name} ({', '.join(flags)})" if flags else name


def _real_server(lab: Lab, dest: ipvs.Destination) -> str:
    try:
        node = lab.server_at(ip_address(dest.address), dest.port)  # a node, or a container
    except ValueError:
        node = None
    return f"  {dest.key}" + (f" {node}" if node else "")


def _pair(a: int, b: int) -> str:
    return f"{a}/{b}"


def _numbers(stats: ipvs.Stats | None, rates: ipvs.Rates | None) -> list[str]:
    counted = (
        [str(stats.conns), _pair(stats.in_packets, stats.out_packets), _pair(stats.in_bytes, stats.out_bytes)]
        if stats
        else ["–"] * 3
    )
    rated = (
        [str(rates.cps), _pair(rates.in_pps, rates.out_pps), _pair(rates.in_bps, rates.out_bps)] if rates else ["–"] * 3
    )
    return counted + rated


# Two-line headings, as narrow as the numbers under them, so that two directors fit side by side.
# ActiveConn/InActConn are what the scheduler weighs now; conns counts every connection since the
# service was added or last zeroed (ipvsadm -Z).
HEADINGS = (
    "weight",
    "active/\ninact",
    "conns",
    "packets\nin/out",
    "bytes\nin/out",
    "conn/s",
    "pkt/s\nin/out",
    "B/s\nin/out",
)


# How many of HEADINGS a narrower table keeps: first without the rates, then without packets
# and bytes. A table with fewer columns reads better than one whose addresses are cut.
FULL, WITHOUT_RATES, FEWEST = len(HEADINGS), 5, 3


def left_out(headings: list[str] | tuple[str, ...], json: bool = True) -> str:
    """The note under a table that left columns out to fit the terminal."""
    names = ", ".join(h.split("\n")[0] for h in headings)
    return f"Left out at this width: {names}. A wider terminal shows them" + (", and so does --json." if json else ".")


def packed(first: str, items: list[str], width: int, joint: str = "", indent: str = "    ") -> list[str]:
    """`first`, then the items separated by `joint` and a space, on as few lines of at most `width`
    as hold each item whole (an address with its port, a node with its count); later lines start
    with `indent`."""
    lines = [first]
    for item in [item + joint for item in items[:-1]] + items[-1:]:
        if len(lines[-1]) + 1 + len(item) > width and lines[-1].strip():
            lines.append(indent + item)
        else:
            lines[-1] += " " + item
    return lines


def services_table(lab: Lab, d: DirectorState, columns: int = FULL) -> Table:
    """One director's IPVS table: a row per service, then one per real server, as ipvsadm lists them;
    the first `columns` of HEADINGS."""
    table = Table(
        title=_title(d),
        caption=_sync(d),
        box=box.SIMPLE_HEAD,
        padding=(0, 0),
        show_edge=False,
        title_justify="left",
        caption_justify="left",
    )
    # On a terminal narrower than even the fewest columns, cells fold onto a second line rather
    # than end in "…": a cut number reads as another number.
    table.add_column("virtual service\n  real server", overflow="fold")
    table.add_column("sched\nfwd", overflow="fold")
    for heading in HEADINGS[:columns]:
        table.add_column(heading, justify="right", overflow="fold")
    if not d.services:
        table.add_row("(no virtual service)")
    for svc in d.services:
        numbers = ["", "", *_numbers(svc.stats, svc.rates)][:columns]
        # Text, not markup: `[fd00:55::100]:80` would read as a style tag
        table.add_row(Text(_name(svc)), svc.scheduler, *numbers, style="bold")
        for dest in svc.destinations:
            numbers = [str(dest.weight), _pair(dest.active, dest.inactive), *_numbers(dest.stats, dest.rates)]
            table.add_row(Text(_real_server(lab, dest)), dest.forward.listed_as, *numbers[:columns])
    return table


def _vip_warnings(lab: Lab, directors: list[DirectorState]) -> list[Text]:
    # A VIP on two directors answers ARP from both (clients flip between them); on none, nothing answers.
    out = []
    for vip in [str(vip) for vip in lab.vips]:
        holders = [d.name for d in directors if vip in d.vips]
        if len(holders) > 1:
            out.append(Text(f"warning: {vip} is held by {' and '.join(holders)}", style="bold red"))
        elif not holders:
            out.append(Text(f"warning: no director holds {vip}", style="bold red"))
    return out


class Widest:
    """The first of these renderings that fits the console whole, or else the last (the narrowest),
    each followed by its notes (unmeasured: a note wraps, a table must not)."""

    def __init__(self, *choices: tuple[RenderableType, list[RenderableType]]):
        self.choices = choices

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        # The natural width, unbounded: a cell's minimum is its longest word, which would let numbers fold.
        unbounded = options.update_width(1_000_000)
        fits = (c for c in self.choices if Measurement.get(console, unbounded, c[0]).maximum <= options.max_width)
        renderable, notes = next(fits, self.choices[-1])
        yield renderable
        yield from notes


def side_by_side(tables: list[Table], gap: int = 3) -> Table:
    grid = Table.grid(padding=(0, gap))
    for _ in tables:
        grid.add_column(vertical="top")
    grid.add_row(*tables)
    return grid


def view(lab: Lab, directors: list[DirectorState]) -> RenderableType:
    """Both directors' tables side by side, the active one marked, then what looks wrong. On a
    narrower console one under the other (two squeezed tables are harder to read than two
    stacked), then with fewer columns."""
    full = [services_table(lab, d) for d in directors]
    fewer = [
        (
            Group(*[services_table(lab, d, columns) for d in directors]),
            [Text(left_out(HEADINGS[columns:]), style="dim")],
        )
        for columns in (WITHOUT_RATES, FEWEST)
    ]
    return Group(
        Widest((side_by_side(full), []), (Group(*full), []), *fewer),
        *_vip_warnings(lab, directors),
        Text(NOTE, style="dim"),
    )


def _expire(seconds: int) -> str:
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


# The columns of `ipvsadm -L -n -c`. A narrow console leaves out expire, then state: what went
# where matters most.
CONNECTION_HEADINGS = ("pro", "expire", "state", "source", "virtual", "destination")


def connections_table(
    lab: Lab, d: DirectorState, compact: bool = False, headings: tuple[str, ...] = CONNECTION_HEADINGS
) -> Table:
    """One director's connection table, as `ipvsadm -L -n -c` lists it; `compact`: one space
    between columns; `headings`: which of its columns."""
    conns = d.connections or []
    caption = f"{len(conns)} entr{'y' if len(conns) == 1 else 'ies'}"
    table = Table(
        title=_title(d),
        caption=caption,
        box=box.SIMPLE_HEAD,
        padding=(0, 0) if compact else (0, 1),
        show_edge=False,
        title_justify="left",
        caption_justify="left",
    )
    for heading in headings:
        table.add_column(heading, overflow="fold")
    for c in conns:
        cells = dict(
            zip(CONNECTION_HEADINGS, (c.protocol, _expire(c.expire), c.state, c.source, c.virtual, c.destination))
        )
        table.add_row(*(cells[h] for h in headings))
    return table


def connections_view(lab: Lab, directors: list[DirectorState]) -> RenderableType:
    """`labkit show --connections`: each director's connection table, side by side when they fit;
    on a narrower console one under the other, then without expire, then without state."""
    full = [connections_table(lab, d) for d in directors]
    choices: list[tuple[RenderableType, list[RenderableType]]] = [(side_by_side(full), []), (Group(*full), [])]
    for dropped in ((), ("expire",), ("expire", "state")):
        headings = tuple(h for h in CONNECTION_HEADINGS if h not in dropped)
        tables = Group(*[connections_table(lab, d, compact=True, headings=headings) for d in directors])
        choices.append((tables, [Text(left_out(dropped), style="dim")] if dropped else []))
    return Widest(*choices)


# ---- JSON -------------------------------------------------------------------------------------


def _stats_json(stats: ipvs.Stats | None) -> dict | None:
    if stats is None:
        return None
    return {
        "conns": stats.conns,
        "in_packets": stats.in_packets,
        "out_packets": stats.out_packets,
        "in_bytes": stats.in_bytes,
        "out_bytes": stats.out_bytes,
    }


def _rates_json(rates: ipvs.Rates | None) -> dict | None:
    if rates is None:
        return None
    return {
        "cps": rates.cps,
        "in_pps": rates.in_pps,
        "out_pps": rates.out_pps,
        "in_bps": rates.in_bps,
        "out_bps": rates.out_bps,
    }


def _service_json(svc: ipvs.Service) -> dict:
    return {
        "key": svc.key,
        "protocol": svc.protocol.value.upper() if svc.protocol else "FWM",
        "vip": svc.vip,
        "port": svc.port,
        "fwmark": svc.fwmark,
        "scheduler": svc.scheduler,
        "persistence": svc.persistence,
        "ops": svc.ops,
        "stats": _stats_json(svc.stats),
        "rates": _rates_json(svc.rates),
        "real_servers": [
            {
                "address": d.address,
                "port": d.port,
                "forward": d.forward.listed_as,
                "weight": d.weight,
                "active_conns": d.active,
                "inactive_conns": d.inactive,
                "stats": _stats_json(d.stats),
                "rates": _rates_json(d.rates),
            }
            for d in svc.destinations
        ],
    }


def as_json(lab: Lab, directors: list[DirectorState]) -> dict:
    """The same data as view() (and the connections when fetched), for scripts: stable keys,
    exact integers, null where a listing had no row."""
    return {
        "lab": lab.name,
        "directors": [
            {
                "name": d.name,
                **({"namespace": d.namespace, "addresses": d.addresses} if d.namespace else {}),
                "active": d.active,
                "vips": d.vips,
                "sync_daemons": [
                    {"role": s.role, "interface": s.interface, "syncid": s.syncid, **s.options} for s in d.sync
                ],
                "services": [_service_json(svc) for svc in d.services],
                "connections": None
                if d.connections is None
                else [
                    {
                        "protocol": c.protocol,
                        "expire": c.expire,
                        "state": c.state,
                        "source": c.source,
                        "virtual": c.virtual,
                        "destination": c.destination,
                    }
                    for c in d.connections
                ],
            }
            for d in directors
        ],
    }
