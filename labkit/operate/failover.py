"""Failure scenarios: break one part of a running lab while the client keeps asking, and
measure what the client saw. Used by `labkit fail`/`labkit heal` and by the verify suite.

The load runs on the client VM (a small Python program, bounded in time and rate) against the
lab's own VIP; every figure comes from the client's clock, as a user would notice it.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from labkit.apply.ssh import Said
from labkit.errors import LabkitError
from labkit.labfile import Lab, Protocol, Role, VirtualService
from labkit.labfile.model import Impairment, host_port, mesh_network
from labkit.plan import containers, ipvs, mesh
from labkit.running import RunningLab

SERVICES = {Role.director: "keepalived", Role.real_server: "nginx", Role.swarm_node: mesh.UNIT}


@dataclass(frozen=True)
class PublishedPort:
    """What the load asks in a routing mesh: the first swarm node's published port (any node
    would do; the others answer the same)."""

    address: IPv4Address
    port: int

    @property
    def addresses(self) -> list[IPv4Address]:
        return [self.address]

    @property
    def key(self) -> str:
        return host_port(self.address, self.port)


def published_port(lab: Lab) -> PublishedPort:
    node = lab.swarm_nodes[0]
    return PublishedPort(lab.nodes[node].addresses[mesh_network(lab)], lab.mesh.publish[0].port)


@dataclass(frozen=True)
class Freeze:
    """A whole node: its VM is paused, as a crashed machine stops, without a word to its peers."""

    node: str

    def __str__(self) -> str:
        return self.node

    @property
    def what(self) -> str:
        return f"{self.node} frozen (its VM paused, as if it crashed)"


@dataclass(frozen=True)
class StopService:
    node: str
    service: str  # keepalived on a director, nginx on a real server

    def __str__(self) -> str:
        return f"{self.node}:{self.service}"

    @property
    def what(self) -> str:
        return f"{self.service} stopped on {self.node}"


@dataclass(frozen=True)
class LinkDown:
    node: str
    network: str

    def __str__(self) -> str:
        return f"{self.node}:{self.network}"

    @property
    def what(self) -> str:
        return f"{self.node}'s link to network {self.network} down"


@dataclass(frozen=True)
class Impair:
    """One network's links made worse (netem on each node's interface on it), not cut."""

    network: str
    impairment: Impairment
    node: str = ""  # none: a network, not a node

    def __str__(self) -> str:
        return self.network

    @property
    def what(self) -> str:
        return f"network {self.network} impaired ({' '.join(self.impairment.netem())})"


Target = Freeze | StopService | LinkDown | Impair


# The handle of the netem `labkit fail NETWORK` puts on: none of the lab file's (1: to 7fff:), so
# the next provision takes it off even where the lab file impairs the same network.
FAIL_HANDLE = "8000:"


def impair_commands(lab: Lab, network: str, impairment: Impairment) -> dict[str, list[str]]:
    """node -> the tc command that puts netem on its interface on `network` (named as the
    network: labkit names each NIC so). netem shapes what leaves an interface: on every node
    of the network, each way is delayed once."""
    netem = ["tc", "qdisc", "replace", "dev", network, "root", "handle", FAIL_HANDLE, "netem", *impairment.netem()]
    return {node: ["sudo", "-n", *netem] for node, spec in lab.nodes.items() if network in spec.addresses}


def impairment_for(lab: Lab, network: str, delay: str | None, loss: str | None, rate: str | None) -> Impair:
    """`labkit fail LAB NETWORK --delay ...`: the target, or one line saying what is wrong."""
    if network not in lab.networks:
        raise LabkitError(
            f"the lab {lab.name} has no network {network!r}. Networks: {', '.join(lab.networks)}. "
            "Give a network with --delay, --loss or --rate"
        )
    if delay is None and loss is None and rate is None:
        raise LabkitError(f"{network}: say how to impair it: --delay 20ms, --loss 1% or --rate 10mbit")
    try:
        return Impair(network, Impairment(delay=delay, loss=loss, rate=rate))
    except ValueError as exc:
        why = exc.errors()[0]["msg"].removeprefix("Value error, ") if hasattr(exc, "errors") else str(exc)
        raise LabkitError(f"{why} (--{why.split()[0]})") from None


def parse_target(lab: Lab, text: str) -> Target:
    node, _, part = text.partition(":")
    usage = "Use NODE (freeze it), NODE:SERVICE (stop it) or NODE:NETWORK (link down)"
    if node not in lab.nodes:
        raise LabkitError(f"the lab {lab.name} has no node {node!r}. Nodes: {', '.join(lab.nodes)}. {usage}")
    role = lab.nodes[node].role
    if role == Role.client:
        raise LabkitError(f"{node} is the client that measures the failure; break a director or a real server")
    if not part:
        return Freeze(node)
    if part == SERVICES[role]:
        return StopService(node, part)
    if part in lab.nodes[node].containers or part in lab.nodes[node].tasks:  # stopped, as docker stop does
        return StopService(node, containers.unit(part))
    if part in lab.nodes[node].addresses:
        return LinkDown(node, part)
    raise LabkitError(
        f"{text}: {node} runs no service and has no network called {part!r}. "
        f"Use {node}:{SERVICES[role]} or {node}:<{'|'.join([*lab.nodes[node].containers, *lab.nodes[node].tasks, *lab.nodes[node].addresses])}>"
    )


# ---- the client's load ------------------------------------------------------------------

# Runs on the client with the box's python3. Sequential requests, each on a new connection so
# that IPVS schedules each one; optionally a long, slow download alongside. The caller creates the
# file "mark" once it has broken the lab. With "after", the load goes on for that many seconds
# after the break however long the break took to make (waiting for it "seconds" more at most).
# With "settled", it ends early once the client has been answered for that many seconds since
# both the break and its last failed request, with the download done. Prints one JSON.
LOAD = r"""
import hashlib, json, os, socket, sys, threading, time
a = json.loads(sys.argv[1])
t0 = time.monotonic()

def fetch(path, rcvbuf=0, rate=0, timeout=1.0, first_bytes=None):
    s = socket.socket(socket.AF_INET6 if ":" in a["vip"] else socket.AF_INET)
    if rcvbuf:  # a small window keeps the download slow end to end, not just at the reader
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    try:
        s.connect((a["vip"], a["port"]))
        s.sendall(("GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" % (path, a["vip"])).encode())
        data, start = b"", time.monotonic()
        while True:
            chunk = s.recv(16384)
            if not chunk:
                return data
            data += chunk
            if first_bytes is not None:
                first_bytes.set()
            if rate:
                time.sleep(max(0.0, len(data) / rate - (time.monotonic() - start)))
    finally:
        s.close()

def split(data):
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    return lines[0], headers, body

transfer = {}
def download():
    try:
        status, headers, body = split(fetch(a["path"], 16384, a["rate"], 30.0, started))
        transfer.update(status=status, server=headers.get("x-real-server"), bytes=len(body),
                        sha256=hashlib.sha256(body).hexdigest(), length=int(headers.get("content-length", -1)))
    except Exception as e:
        transfer.update(error=repr(e))
    finally:
        started.set()

started = threading.Event()
worker = threading.Thread(target=download)
if a["path"]:
    worker.start()
    started.wait(10)
print("labkit-load-started", flush=True)  # the caller breaks the lab after this
requests, i, last_failed, broken = [], 0, None, None
def going_on():
    elapsed = time.monotonic() - t0
    if elapsed < a["seconds"]:
        return True
    waited = broken is None or elapsed - broken < a["after"]
    return bool(a["after"]) and waited and elapsed < 2 * a["seconds"] + a["after"]
while going_on():
    start = time.monotonic()
    try:
        status, headers, body = split(fetch("/", timeout=a["timeout"]))
        ok = status.split()[1:2] == ["200"]
        requests.append([start - t0, time.monotonic() - t0, body.decode().strip() if ok else None, None if ok else status])
    except Exception as e:
        requests.append([start - t0, time.monotonic() - t0, None, type(e).__name__])
    if requests[-1][2] is None:
        last_failed = requests[-1][1]
    if a["mark"] and broken is None and os.path.exists(a["mark"]):
        broken = requests[-1][1]
    calm = max(broken or 0, last_failed or 0)
    if a["settled"] and broken is not None and requests[-1][1] - calm >= a["settled"] and not worker.is_alive():
        break
    i += 1
    time.sleep(max(0.0, t0 + i * a["interval"] - time.monotonic()))
if a["path"]:
    worker.join(90)
if a["mark"] and os.path.exists(a["mark"]):
    os.unlink(a["mark"])
print(json.dumps({"requests": requests, "transfer": transfer or None}))
"""

BIG_PATH = "/1m.bin"
LEAD_SECONDS = 3  # from the start of the load to the break of a director, 1 s for anything else: see lead()
AFTER_SECONDS = 1  # the short load that shows who answers once a checker or a heal is done: 10 requests


@dataclass(frozen=True)
class Request:
    """One request of the load, times in seconds from its start on the client's clock."""

    sent: float
    done: float
    server: str | None  # the real server that answered, None when the request failed
    error: str | None = None  # why it failed: an exception's name or the HTTP status line


@dataclass
class Load:
    """What the client saw."""

    requests: list[Request] = field(default_factory=list)
    transfer: dict | None = None  # the long download: status, server, bytes, sha256, length (or error)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.requests if r.server is None)

    @property
    def outage(self) -> float:
        """The longest time without any answer, from the end of the last answered request
        before failures to the start of the next answered one: how long the VIP was gone.
        0 when nothing failed."""
        longest, last_ok, failed_since = 0.0, None, None
        for r in self.requests:
            if r.server is None:
                failed_since = r.sent if failed_since is None else failed_since
                continue
            if failed_since is not None:
                longest = max(longest, r.sent - (last_ok if last_ok is not None else failed_since))
                failed_since = None
            last_ok = r.done
        if failed_since is not None:  # still failing at the end
            longest = max(longest, self.requests[-1].done - (last_ok if last_ok is not None else failed_since))
        return round(longest, 2)

    @property
    def failing_for(self) -> float:
        """Seconds from the first failed request to the end of the last one."""
        return self.failing_with()

    def failing_with(self, error: str | None = None) -> float:
        """failing_for, counting only the requests that failed with `error` (any, if None)."""
        bad = [r for r in self.requests if r.server is None and error in (None, r.error)]
        return round(bad[-1].done - bad[0].sent, 2) if bad else 0.0

    def served(self, since: float = 0.0) -> Counter:
        return Counter(r.server for r in self.requests if r.server is not None and r.sent >= since)

    def errors(self) -> Counter:
        return Counter(r.error for r in self.requests if r.server is None)


def after_load(running: RunningLab, svc: VirtualService | PublishedPort) -> Load:
    """The short load that shows who answers once a checker or a heal is done. Its requests wait
    3 s for an answer, not 1 s: one the scheduler sends to a dead server is never answered however
    long the client waits, while a SYN lost or a guest stalled under emulation (TCP sends the SYN
    again after 1 s) is not what it is about."""
    return client_load(running, svc, AFTER_SECONDS, timeout=3.0)


def client_load(
    running: RunningLab,
    svc: VirtualService | PublishedPort,
    seconds: float,
    transfer_seconds: float = 0,
    started: threading.Event | None = None,
    settled: float = 0,
    mark: str = "",
    timeout: float = 1.0,
    after: float = 0,
) -> Load:
    """A bounded load from the client against one of the lab's own services: a request every
    0.1 s for `seconds`, plus, if asked, the 1 MiB file spread over about `transfer_seconds`.
    `started` is set once the load runs (and the download has begun). The caller makes the file
    `mark` on the client once it has broken the lab; the load then goes on for `after` seconds
    more, if that ends later than `seconds` (a break slow to make still has its share of the
    load). With `settled`, the load ends sooner: once the client has been answered for `settled`
    seconds since the break and since its last failed request, with the download done. Each
    request waits `timeout` seconds for its answer."""
    args = {
        "vip": str(svc.addresses[0]),
        "port": svc.port,
        "seconds": seconds,
        "interval": 0.1,
        "timeout": timeout,
        "path": BIG_PATH if transfer_seconds else "",
        "rate": int(1024 * 1024 / transfer_seconds) if transfer_seconds else 0,
        "settled": settled,
        "mark": mark,
        "after": after,
    }
    client = running.lab.clients[0]
    try:
        # On a pty: if labkit stops, the hangup stops the load on the client too.
        out = running.run(
            client,
            ["python3", "-c", LOAD, json.dumps(args)],
            watchers=[Said("labkit-load-started", started or threading.Event())],
            pty=True,
        )
        data = json.loads(out.splitlines()[-1])
    except (LabkitError, ValueError, IndexError) as exc:
        raise LabkitError(f"the load on {client} failed: {exc}") from None
    return Load([Request(*row) for row in data["requests"]], data["transfer"])


def service_for(lab: Lab, target: Target) -> VirtualService | PublishedPort:
    """The TCP service the load asks: one the broken real server serves, or the first; in a
    routing mesh, the first node's published port."""
    if lab.mesh is not None:
        return published_port(lab)
    tcp = [s for s in lab.services if s.protocol == Protocol.tcp]
    if not tcp:
        raise LabkitError(f"the lab {lab.name} has no TCP service to load")
    if target.node and lab.nodes[target.node].role == Role.real_server:
        return next((s for s in tcp if s in lab.services_of(target.node)), tcp[0])
    return tcp[0]


# ---- breaking and healing ------------------------------------------------------------------


def inject(running: RunningLab, target: Target) -> None:
    match target:
        case StopService(node, service):
            running.run(node, ["sudo", "-n", "systemctl", "stop", service])
        case LinkDown(node, network):
            running.run(node, ["sudo", "-n", "ip", "link", "set", "dev", network, "down"])
        case Freeze(node):
            running.freeze(node)
        case Impair(network, impairment):
            commands = impair_commands(running.lab, network, impairment)
            for node, words in commands.items():
                running.run(node, words)


def table(running: RunningLab, director: str) -> dict[str, ipvs.Service]:
    return {s.key: s for s in ipvs.parse_list(running.run(director, ipvs.COMMANDS["list"]))}


def ingress_table(running: RunningLab, node: str) -> dict[str, ipvs.Service]:
    """A swarm node's IPVS services, which live in its ingress namespace."""
    listed = running.run(node, ["sudo", "-n", "ip", "netns", "exec", mesh.SBOX, "ipvsadm", "-L", "-n"])
    return {s.key: s for s in ipvs.parse_list(listed)}


def wait_for(what: str, condition, seconds: float):
    """Poll until condition() returns something true; return it, or fail saying what did not happen."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise LabkitError(f"{what} did not happen within {seconds:.0f} s")
        time.sleep(0.5)


@dataclass
class Report:
    target: Target
    service: str
    load: Load
    holder: str | None = None  # the director holding the VIP afterwards
    noticed: float | None = None  # seconds until the checker took a dead real server out
    after: Load | None = None  # the load once the checker had noticed

    def lines(self) -> list[str]:
        load = self.load
        out = [
            f"{self.target.what}, under load against {self.service}:",
            f"  requests: {len(load.requests)}, failed: {load.failed}"
            + (f" ({', '.join(f'{n} {e}' for e, n in load.errors().items())})" if load.failed else ""),
            f"  the longest time without an answer: {load.outage:.2f} s"
            if load.failed
            else "  the VIP answered throughout",
        ]
        if load.transfer is not None:
            t = load.transfer
            if "error" in t:
                out.append(f"  long transfer: broken ({t['error']})")
            else:
                out.append(
                    f"  long transfer: {t['bytes']} of {t['length']} bytes from {t['server']}, sha256 {t['sha256'][:16]}"
                )
        answered = sorted(r.done - r.sent for r in load.requests if r.server is not None)
        if isinstance(self.target, Impair) and answered:
            slowest = answered[min(len(answered) - 1, int(len(answered) * 0.99))]
            out.append(
                f"  answer time: median {answered[len(answered) // 2] * 1000:.0f} ms, 99th percentile {slowest * 1000:.0f} ms"
            )
        if self.holder:
            out.append(f"  VIP held by: {self.holder}")
        if self.noticed is not None:
            out.append(
                f"  requests failed for {self.noticed:.1f} s, until the checker took {taken_name(self.target)} out"
            )
        if self.after is not None:
            served = ", ".join(f"{k} {v}" for k, v in sorted(self.after.served().items()))
            out.append(f"  then: {len(self.after.requests)} requests, failed {self.after.failed}, served by {served}")
        return out


def taken_name(target: Target) -> str:
    """What a checker takes out: the node, or the stopped container."""
    if isinstance(target, StopService) and target.service.startswith(f"{containers.UNIT}@"):
        return target.service.partition("@")[2]
    return target.node


def taken_away(lab: Lab, target: Target) -> set[str]:
    """The IPVS destination addresses a broken target takes away: a real server's, or a stopped
    container's (on the director's bridge, or behind its node's published port)."""
    node = lab.nodes[target.node]
    if isinstance(target, StopService) and target.service.startswith(f"{containers.UNIT}@"):
        name = target.service.partition("@")[2]
        if name in node.tasks:
            return {str(node.tasks[name])}
        if target.node == lab.active_director:
            return {str(node.containers[name])}
        return {str(a) for a in node.addresses.values()}
    return {str(a) for a in node.addresses.values()} if node.role == Role.real_server else set()


def breaks_director(lab: Lab, target: Target) -> bool:
    """Whether the target takes a director away (not a container it runs)."""
    return bool(target.node) and lab.nodes[target.node].role == Role.director and not taken_away(lab, target)


def lead(lab: Lab, target: Target) -> float:
    """Seconds from the load's start to the break. A director is broken under a long transfer:
    once it is older than the 2 s the sync daemon may wait to send the standby its batch of
    connections, as a connection in real use would be. Anything else once the client has been
    answered for a second."""
    return LEAD_SECONDS if breaks_director(lab, target) else 1


def fail(running: RunningLab, target: Target, seconds: float = 16, settled: float = 0) -> Report:
    """Break the target `lead` seconds into a bounded load, and measure what the client saw. With
    `settled`, the load ends once the client has been answered that many seconds after its last
    failure (see client_load): the checks, which need only the outage and what followed it."""
    lab = running.lab
    svc = service_for(lab, target)
    addresses = taken_away(lab, target) if target.node else set()
    director, lead_seconds = breaks_director(lab, target), lead(lab, target)
    result: dict[str, Load | Exception] = {}
    mark = f"/tmp/labkit-broken-{uuid.uuid4().hex}"  # made on the client once the lab is broken

    started = threading.Event()

    def load() -> None:
        try:
            after = max(0.0, seconds - lead_seconds)  # what the break is given, however long it takes to make
            transfer = 10 if director else 0
            result["load"] = client_load(running, svc, seconds, transfer, started, settled, mark, after=after)
        except Exception as exc:  # reported below, in this thread
            result["load"] = exc
        started.set()

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    started.wait(60)
    time.sleep(lead_seconds)
    if worker.is_alive():
        inject(running, target)
        running.run(lab.clients[0], ["touch", mark])
    worker.join()
    if isinstance(result["load"], Exception):
        raise result["load"]
    report = Report(target, svc.key, result["load"])
    report.holder = running.holder(paused={target.node} if isinstance(target, Freeze) else set())
    if addresses and (lab.ha or lab.mesh is not None):
        if lab.mesh is not None:  # the checker in the ingress namespace of the node the client asks
            active, key = lab.swarm_nodes[0], f"fwm {lab.mesh.publish[0].fwmark}"
            listing = lambda: ingress_table(running, active)  # noqa: E731
        else:
            active, key = report.holder or lab.active_director, svc.key
            listing = lambda: table(running, active)  # noqa: E731
        wait_for(
            f"the checker on {active} taking {target.node} out of {key}",
            lambda: not addresses & {d.address for d in listing()[key].destinations},
            20,
        )
        # Requests fail until the checker takes the server out; the client saw that span. A stopped
        # service is refused by its node's kernel at once: a request that timed out meanwhile is the
        # client's or the emulation's hiccup (two, 6 s apart, once made a 1.3 s span 9.2 s).
        refused = isinstance(target, StopService) and "ConnectionRefusedError" in report.load.errors()
        report.noticed = report.load.failing_with("ConnectionRefusedError" if refused else None)
        report.after = after_load(running, svc)
    return report


def heal(running: RunningLab, on_done=lambda result: None, nodes: list[str] | None = None) -> tuple[float, Load]:
    """Resume frozen nodes and provision again, which restarts stopped services, raises downed
    links and takes off netem the lab file does not put there; wait until the preferred director
    has the VIPs and every real server back. Returns the seconds that took and a short load that
    shows who answers now. With `nodes`, only those are provisioned: the ones a scenario broke."""
    started = time.monotonic()
    for node in running.paused():
        running.thaw(node)
    running.provision(nodes=nodes, on_done=on_done)
    lab = running.lab
    if lab.ha:
        running.wait_whole(30)
    if lab.mesh is not None:
        node, key = lab.swarm_nodes[0], f"fwm {lab.mesh.publish[0].fwmark}"
        wait_for(
            f"every task back in {node}'s ingress namespace",
            lambda: (
                len(ingress_table(running, node).get(key, ipvs.Service(None, None, None, "")).destinations)
                == len(lab.task_nodes)
            ),
            30,
        )
        seconds = time.monotonic() - started
        return seconds, after_load(running, published_port(lab))
    seconds = time.monotonic() - started
    tcp = [s for s in lab.services if s.protocol == Protocol.tcp]
    return seconds, after_load(running, tcp[0]) if tcp else Load()
