"""pytest plugin for the verify suite: which lab, how to reach its nodes, and the
parametrisation of checks by the lab's own nodes and services."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import testinfra

from labkit.apply.ssh import UNREACHABLE
from labkit.labfile import Check, Forwarding, Lab, Protocol, VirtualService, load_lab
from labkit.running import RunningLab
from labkit.verify.checks import state

# Schedulers whose choice for a connection held open the checks predict from the counters.
HELD = ("lc", "wlc", "sed", "nq", "ovf", "lblc", "lblcr")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--lab-dir", required=True, help="the running lab's folder (under LABKIT_HOME)")
    # --ssh-config (Vagrant's, for the lab's nodes) is testinfra's own option.


LAB = pytest.StashKey[Lab]()


def _lab(config: pytest.Config) -> Lab:
    """The lab file, read once per run (every check function's parameters come from it)."""
    if LAB not in config.stash:
        config.stash[LAB] = load_lab(Path(config.getoption("--lab-dir")) / "lab.yaml")
    return config.stash[LAB]


def parameters(lab: Lab) -> dict[str, list]:
    """Fixture name -> what a check taking it runs for. A check runs once for each, and is left
    out (not skipped) when its list is empty: a DR lab has no NAT director to check."""
    http = [s for s in lab.services if s.protocol == Protocol.tcp]
    return {
        "node": list(lab.nodes),
        "director": lab.directors,
        "nat_director": lab.directors if lab.nat else [],
        # directors whose replies come back another way (DR, TUN): they see half of each connection
        "bypassed_director": lab.directors if any(s.forwarding != Forwarding.masq for s in lab.services) else [],
        "paired_director": lab.directors if lab.ha else [],
        # a pair's directors sync connections; one director alone with keepalived has no one to sync with
        "synced_director": lab.directors if lab.ha and len(lab.directors) > 1 else [],
        "master": [lab.active_director] if lab.ha and len(lab.directors) > 1 else [],  # the director a pair prefers
        "real_server": lab.real_servers,
        # real servers whose own nginx serves (not every port published to a container)
        "web_real_server": [n for n in lab.real_servers if state.serves_web(lab, n)],
        # nodes with a container bridge (seed 000), and their containers
        "container_node": [n for n, node in lab.nodes.items() if node.bridge is not None],
        "container": list(lab.container_nodes),
        "publishing_node": [n for n, node in lab.nodes.items() if node.publish],
        # the director's own containers, where its keepalived checks them
        "director_container": list(lab.nodes[lab.active_director].containers) if lab.ha and lab.directors else [],
        "vip_real_server": [
            n for n in lab.real_servers if any(s.forwarding != Forwarding.masq for s in lab.services_of(n))
        ],
        # the routing mesh (seed 001): its nodes, their tasks, and the task stopped to be taken out
        # (one on another node than the first, whose ingress namespace reaches it over the VXLAN)
        "swarm_node": lab.swarm_nodes,
        "task": list(lab.task_nodes),
        "stopped_task": [t for t, n in lab.task_nodes.items() if n != lab.swarm_nodes[0]][-1:]
        if lab.swarm_nodes
        else [],
        "service": list(lab.services),
        "http_service": [s for s in lab.services if s.protocol == Protocol.tcp],
        "udp_service": [s for s in lab.services if s.protocol == Protocol.udp],
        "udp_real_server": [n for n in lab.real_servers if state.udp_ports(lab, n)],
        # the director whose keepalived checks the real servers' UDP responders
        "udp_checker": [lab.active_director]
        if lab.ha and any(s.protocol == Protocol.udp and s.check == Check.udp for s in lab.services)
        else [],
        # TUN: the directors list each tunnel type; the client's requests to each TUN web service
        # are seen wrapped on the real servers' network
        "tun_director": lab.directors if any(s.forwarding == Forwarding.tun for s in lab.services) else [],
        "tunnel_service": [
            s
            for s in lab.services
            if s.forwarding == Forwarding.tun and s.protocol == Protocol.tcp and s.fwmark is None
        ],
        # the scheduler checks (test_schedulers.py): HTTP services whose scheduler they know
        "held_service": [s for s in http if s.scheduler.value in HELD and not s.persistence],
        "fo_service": [s for s in http if s.scheduler.value == "fo" and not s.persistence],
        "hash_service": [s for s in http if s.scheduler.value in ("sh", "mh", "dh") and not s.persistence],
        "persistent_service": [s for s in http if s.persistence and s.scheduler.value == "rr"],
    }


def once_per_service(compute: Callable[[VirtualService], object]) -> Callable[[VirtualService], object]:
    """compute(svc) run once for each service, then remembered: for checks that read the same
    traffic from different sides."""
    done: dict[str, object] = {}

    def get(svc: VirtualService) -> object:
        if svc.key not in done:
            done[svc.key] = compute(svc)
        return done[svc.key]

    return get


NOT_HERE = object()
FIGURES = pytest.StashKey[list]()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for name, values in parameters(_lab(metafunc.config)).items():
        if name in metafunc.fixturenames:
            ids = [v.key.replace(" ", "-") if isinstance(v, VirtualService) else v for v in values]
            metafunc.parametrize(name, values or [NOT_HERE], ids=ids or ["none"])


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "failover: breaks the lab and heals it; runs after the other checks")
    config.addinivalue_line("markers", "vips: a check of the lab's VIPs, left out where there are none (a mesh)")
    config.stash[FIGURES] = []


@pytest.hookimpl(trylast=True)  # after -k and -m have chosen: only the chosen checks' nodes are asked
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("failover") is not None)
    keep, drop = [], []
    vipless = not _lab(config).vips
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        here = not any(v is NOT_HERE for v in params.values()) and not (vipless and item.get_closest_marker("vips"))
        (keep if here else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    if config.option.collectonly:
        return
    # A node that is not there fails its own check (test_node_is_there) with the reason; the
    # checks that need it are not run, rather than each timing out on it.
    lab = _lab(config)
    config.stash[HOSTS] = hosts = connect(config.getoption("ssh_config"), list(lab.nodes))
    # `verify -k rs0` logs in to rs0 and reads its state, not every node's. A check that asks
    # another node connects on its way.
    config.stash[NEEDED] = needed(items, lab)
    running = RunningLab(Path(config.getoption("--lab-dir")))
    absent = config.stash[ABSENT] = nodes_absent(running, hosts, config.stash[NEEDED])
    for item in items:
        if item.originalname == "test_node_is_there":
            continue
        missing = sorted(needs(item, lab) & absent.keys())
        if missing:
            why = "; ".join(f"{node} {absent[node]}" for node in missing)
            item.add_marker(pytest.mark.skip(reason=f"not run: {why}"))


ABSENT = pytest.StashKey[dict]()
HOSTS = pytest.StashKey[dict]()
NEEDED = pytest.StashKey[list]()


def needs(item: pytest.Item, lab: Lab) -> set[str]:
    """The nodes a check needs: those it is run for, the client, the active director and the real
    servers of the service it is run for, or, for a check of the whole lab or a failure scenario,
    every node."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    nodes = {v for v in params.values() if isinstance(v, str) and v in lab.nodes}
    for svc in (v for v in params.values() if isinstance(v, VirtualService)):
        nodes |= {*lab.clients, lab.active_director, *(lab.node_at(rs.address) for rs in svc.real_servers)} - {None}
    if not nodes or item.get_closest_marker("failover"):
        return set(lab.nodes)
    return nodes


def needed(items: list[pytest.Item], lab: Lab) -> list[str]:
    """The nodes the checks need, in the lab file's order."""
    wanted = set().union(*(needs(item, lab) for item in items))
    return [node for node in lab.nodes if node in wanted]


def connect(ssh_config: str, nodes: list[str]) -> dict:
    """node -> a testinfra host for it, over one SSH connection per node. The connections are not
    opened here: nodes_absent opens them, all at once, and they serve every check after."""
    # The wait is long: an emulated guest under load can take seconds to greet (sshd starts itself
    # anew for each connection), while one that is gone is refused or unreachable at once.
    return {node: testinfra.get_host(f"paramiko://{node}", ssh_config=ssh_config, timeout=30) for node in nodes}


def nodes_absent(running: RunningLab, hosts: dict, nodes: list[str]) -> dict[str, str]:
    """Node -> why it cannot take part now ("is shutoff: labkit up nat repairs it"): its VM not
    running or cut off from a network (libvirt labs), or, of `nodes`, no SSH connection to it.
    The connections to the others of `nodes` are opened on the way, all at once."""
    absent = {}
    if running.on_libvirt:
        health = running.health()
        for node, why in health.down().items():
            absent[node] = f"is not there: {why}. {health.repair(node)}"

    def answers(node: str) -> bool:
        try:
            hosts[node].run("true")
        except UNREACHABLE:
            return False
        return True

    there = [node for node in nodes if node not in absent]
    if there:
        with ThreadPoolExecutor(len(there)) as pool:
            for node, ok in zip(there, pool.map(answers, there)):
                if not ok:
                    absent[node] = f"does not answer SSH: labkit up {running.name} repairs it"
    return absent


@pytest.fixture(scope="session")
def absent(pytestconfig: pytest.Config) -> dict[str, str]:
    """Node -> why it is not there, as found before the checks ran."""
    return pytestconfig.stash.get(ABSENT, {})


@pytest.fixture(scope="session")
def lab(pytestconfig: pytest.Config) -> Lab:
    return _lab(pytestconfig)


@pytest.fixture(scope="session")
def hosts(pytestconfig: pytest.Config):
    """hosts("lb0") -> a testinfra host for lb0, over the node's one SSH connection, opened before
    the checks ran (or on first use, for a node the chosen checks were not known to need).
    Commands run as the SSH user: the few that need root say sudo, because under software
    emulation each sudo costs a noticeable fraction of a second."""
    return pytestconfig.stash[HOSTS].__getitem__


@pytest.fixture(scope="session")
def node_state(pytestconfig: pytest.Config, hosts, lab: Lab, absent) -> dict[str, dict[str, str]]:
    """node -> name -> what the standing-state checks read of it (state.py), asked of each node the
    chosen checks need and that is there, all at once, one command each; of another node when a
    check first asks for it."""

    def read(node: str) -> dict[str, str]:
        out = hosts(node).run(state.script(state.commands(lab, node)))
        read = state.parse(out.stdout)
        assert read, f"{node}: reading its state failed (exit status {out.rc}): {out.stderr.strip()}"
        return read

    class States(dict):
        def __missing__(self, node: str) -> dict[str, str]:
            self[node] = read(node)
            return self[node]

    there = [node for node in pytestconfig.stash.get(NEEDED, list(lab.nodes)) if node not in absent]
    if not there:
        return States()
    with ThreadPoolExecutor(len(there)) as pool:
        return States(zip(there, pool.map(read, there)))


@pytest.fixture(scope="session")
def running(pytestconfig: pytest.Config):
    """The lab as labkit runs it: what the failure scenarios break and heal."""
    with RunningLab(Path(pytestconfig.getoption("--lab-dir"))) as running:
        yield running


@pytest.fixture
def figure(request: pytest.FixtureRequest, record_property) -> Callable[[str, object], None]:
    """figure(name, value): a measurement, shown in the summary and kept in the JUnit report."""

    def note(name: str, value: object) -> None:
        record_property(name, value)
        request.config.stash[FIGURES].append((request.node.name, name, value))

    return note


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    figures = config.stash.get(FIGURES, [])
    if figures:
        terminalreporter.section("measured")
        for test, name, value in figures:
            terminalreporter.write_line(f"{test}: {name} = {value}")
