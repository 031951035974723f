"""Faults a real mistake causes in an LVS lab, one catalogue for the tests that prove verify
catches them and for exercises where students find them.

Each fault is injected by commands on one node, as a person with root there would type them, never
through labkit's own configuration, so only verify's view of the running lab can see it. Each
names the checks it must break (as `test_file.py::test_name[param]`) and what brings the lab back:
`labkit provision` where the plan re-applies what the fault changed, `labkit reset` where it does
not (a kernel table keepalived does not rewrite until it reloads, a daemon it started once).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from ipaddress import ip_address

from labkit.errors import LabkitError
from labkit.labfile import Forwarding, Lab


class Repair(str, Enum):
    provision = "provision"
    reset = "reset"


@dataclass(frozen=True)
class Fault:
    name: str
    node: str  # where it is injected: a node name every lab it applies to has
    commands: tuple[tuple[str, ...], ...]  # run with sudo, in order
    catches: tuple[str, ...]  # checks that must fail while it is in place
    repair: Repair
    applies: Callable[[Lab], bool]
    symptom: str  # what a user sees
    hint: str
    explanation: str


def _uses(forwarding: Forwarding) -> Callable[[Lab], bool]:
    return lambda lab: any(s.forwarding == forwarding for s in lab.services)


def _paired(lab: Lab) -> bool:
    return lab.ha and len(lab.directors) > 1


VIP = "192.168.55.100"
RIP = "192.168.66.111"

FAULTS = (
    Fault(
        "dr-arp",
        "rs0",
        (("sysctl", "-q", "-w", "net.ipv4.conf.all.arp_ignore=0", "net.ipv4.conf.all.arp_announce=0"),),
        ("test_lab.py::test_real_server_sysctls[rs0]",),
        Repair.provision,
        _uses(Forwarding.route),
        "some clients reach rs0 directly, bypassing the director, and the split is uneven",
        "who answers ARP for the VIP on the client's network? (ip neigh on the client)",
        "A DR real server holds the VIP too. With arp_ignore=0 it answers ARP requests for it, so a "
        "client may learn rs0's MAC for the VIP. arp_ignore=1 (only answer for addresses of the asking "
        "interface) and arp_announce=2 (never use the VIP as ARP source) leave the VIP to the director.",
    ),
    Fault(
        "dr-vip-on-ext",
        "rs0",
        (("ip", "addr", "del", f"{VIP}/32", "dev", "lo"), ("ip", "addr", "add", f"{VIP}/32", "dev", "ext")),
        ("test_lab.py::test_vip_on_real_server[rs0]",),
        Repair.reset,  # provision puts the VIP back on lo but leaves the one on ext
        _uses(Forwarding.route),
        "the VIP sometimes answers from rs0 alone, and the director's counters stop growing",
        "on which interface does rs0 hold the VIP? (ip -o addr on rs0)",
        "On lo the VIP lets rs0 accept the packets the director sends it; on ext, the client's network, "
        "rs0 owns it there and answers ARP for it even with arp_ignore=1, competing with the director.",
    ),
    Fault(
        "tun-rp-filter",
        "rs0",
        (("sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.tunl0.rp_filter=1"),),
        ("test_lab.py::test_real_server_sysctls[rs0]",),
        Repair.provision,
        _uses(Forwarding.tun),
        "every request the director sends to rs0 goes unanswered; rs1's are fine",
        "where does the unwrapped request arrive on rs0, and where would the route back leave?",
        "The request arrives on tunl0 from the client's address, but the route to the client leaves by "
        "ext: strict reverse-path filtering (rp_filter=1) drops it as spoofed. TUN real servers need it off.",
    ),
    Fault(
        "nat-route-around",
        "rs0",
        (("ip", "route", "del", "192.168.55.0/24"),),
        ("test_lab.py::test_route_to_client[rs0]",),
        Repair.provision,
        _uses(Forwarding.masq),
        "requests that the director sends to rs0 time out; rs1 answers its share",
        "from rs0, which way does a packet to the client go? (ip route get 192.168.55.200)",
        "In NAT the reply must pass the director, which rewrites its source back to the VIP. Without "
        "the route via the director (or the pair's floating gateway), rs0 answers by its default route, "
        "from its own address: the client drops an answer it never asked that address for.",
    ),
    Fault(
        "weight-behind-the-back",
        "lb0",
        (("ipvsadm", "-e", "-t", f"{VIP}:80", "-r", f"{RIP}:80", "-m", "-w", "7"),),
        ("test_lab.py::test_ipvs_table[lb0]",),
        Repair.reset,
        # the destination it edits must be there: RIP:80 in the service on VIP:80
        lambda lab: (
            _uses(Forwarding.masq)(lab)
            and lab.ha
            and any(
                str(rs.address) == RIP and s.real_port(rs) == 80
                for s in lab.services
                if s.key == f"tcp {VIP}:80"
                for rs in s.real_servers
            )
        ),
        "the split is no longer what the lab file says",
        "compare ipvsadm -L -n on lb0 with the lab file's weights",
        "keepalived set the table from its file once; an ipvsadm -e by hand changes the kernel's table "
        "until keepalived reloads, and nothing in the file says so.",
    ),
    Fault(
        "sync-stopped",
        "lb0",
        (("ipvsadm", "--stop-daemon", "master"),),
        ("test_lab.py::test_connection_sync_daemon[lb0]",),
        Repair.reset,
        _paired,
        "a failover breaks connections that were open, though new ones work",
        "which sync daemons run on each director? (ipvsadm -L --daemon)",
        "Without the master sync daemon on lb0, lb1 learns none of lb0's connections: when lb1 takes "
        "over, it has no entry for them, and their packets are scheduled anew or dropped.",
    ),
    Fault(
        "wrong-scheduler",
        "lb0",
        (("ipvsadm", "-E", "-t", f"{VIP}:80", "-s", "lc"),),
        ("test_lab.py::test_ipvs_table[lb0]",),
        Repair.reset,
        lambda lab: lab.ha and any(s.key == f"tcp {VIP}:80" for s in lab.services),
        "the split no longer alternates as rr or wrr would",
        "which scheduler does ipvsadm -L -n show for the service?",
        "The service was edited by hand to least-connection; the lab file says otherwise, and short "
        "requests under lc pile onto whichever server was idle.",
    ),
)


def _persistent(port: int) -> Callable[[Lab], bool]:
    return lambda lab: any(s.key == f"tcp {VIP}:{port}" and s.persistence for s in lab.services)


# Faults for a class's exercises (labkit exercise start): the same shape, the same catalogue.
FAULTS += (
    Fault(
        "weight-starves",
        "lb0",
        (("ipvsadm", "-e", "-t", f"{VIP}:80", "-r", f"{RIP}:80", "-m", "-w", "0"),),
        ("test_lab.py::test_ipvs_table[lb0]", "test_lab.py::test_split[tcp-192.168.55.100:80]"),
        Repair.reset,
        lambda lab: _uses(Forwarding.masq)(lab) and lab.ha,
        "every request to port 80 lands on rs1; rs0 is up and idle",
        "what weight does ipvsadm -L -n give rs0 for port 80?",
        "Weight 0 is how a real server is drained: IPVS keeps its established connections but sends "
        "it no new ones. Left at 0 by mistake, a healthy server starves while its peer takes all the load.",
    ),
    Fault(
        "persistence-lost",
        "lb0",
        (("ipvsadm", "-E", "-t", f"{VIP}:8013", "-s", "rr"),),
        ("test_lab.py::test_ipvs_table[lb0]",),
        Repair.reset,
        _persistent(8013),
        "a client's requests to port 8013 alternate between servers, and its session is lost",
        "does ipvsadm -L -n show 'persistent' on the service?",
        "Persistence (ipvsadm -p SECONDS) keeps a client on the real server it first reached, through a "
        "template connection that outlives each TCP connection. Edited without -p, the service forgets "
        "it: every new connection is scheduled anew.",
    ),
    Fault(
        "priority-never-fails-back",
        "lb1",
        (
            ("sed", "-i", "-E", r"s/^(\s*priority )[0-9]+/\1254/", "/etc/keepalived/keepalived.conf"),
            ("systemctl", "reload", "keepalived"),
        ),
        ("test_lab.py::test_vrrp_state[lb0]", "test_lab.py::test_vrrp_state[lb1]"),
        Repair.reset,
        _paired,
        "lb1 holds the VIP although lb0 is healthy, and lb0 never takes it back",
        "compare the priority lines of keepalived.conf on lb0 and lb1",
        "VRRP elects the director with the highest priority. With the standby's priority above the "
        "preferred director's, the standby takes the VIP and keeps it: the pair fails over the wrong way "
        "and never back.",
    ),
    Fault(
        "link-loss",
        "rs0",
        (("tc", "qdisc", "replace", "dev", "int", "root", "netem", "loss", "100%"),),
        ("test_lab.py::test_split[tcp-192.168.55.100:80]",),
        Repair.reset,
        lambda lab: _uses(Forwarding.masq)(lab) and lab.ha,
        "requests scheduled to rs0 hang until they time out, then rs0 leaves the table",
        "is anything queued on rs0's interfaces? (tc qdisc show on rs0, ping rs0 from lb0)",
        "netem on rs0's link to the directors drops the packets: the director's health check fails and "
        "keepalived takes rs0 out; until it does, the connections sent there hang.",
    ),
)


# Containers (seed 000): the director's first container, as in the containers lab.
CONTAINER = "web0"


def _has_container(lab: Lab) -> bool:
    return lab.directors != [] and CONTAINER in lab.nodes[lab.active_director].containers


FAULTS += (
    Fault(
        "container-no-route",
        "lb0",
        (("ip", "-n", CONTAINER, "route", "del", "default"),),
        (f"test_containers.py::test_container[{CONTAINER}]",),
        Repair.provision,
        _has_container,
        f"a third of the requests time out, though {CONTAINER} answers its own node",
        f"inside {CONTAINER}'s namespace, which way does a packet to the client go? (ip -n {CONTAINER} route)",
        "A container reaches anything beyond its bridge by its default route via the bridge's address "
        "(Docker's 172.17.0.1). Without it the container still answers its node, on the bridge's own "
        "range, but cannot send the client's reply back to the director to be rewritten to the VIP.",
    ),
)


def applying_to(lab: Lab) -> list[Fault]:
    return [f for f in FAULTS if f.applies(lab) and f.node in lab.nodes]


def by_name(name: str) -> Fault:
    return next(f for f in FAULTS if f.name == name)


def exercise(name: str, lab: Lab) -> Fault:
    """The fault `name` as an exercise on `lab`; one line when it is unknown or does not fit the lab."""
    known = [f.name for f in FAULTS]
    if name not in known:
        raise LabkitError(f"no exercise {name!r}. The exercises: {', '.join(known)} (labkit exercise list)")
    fault = by_name(name)
    if fault not in applying_to(lab):
        fits = [f.name for f in applying_to(lab)]
        raise LabkitError(
            f"the exercise {name} does not apply to the lab {lab.name}. Those that do: {', '.join(fits) or 'none'}"
        )
    return fault


# The routing mesh (seed 001): n0's overlay loses its way to the other nodes.
SWARM_PEERS = ("192.168.99.101", "192.168.99.102")


def _is_mesh(lab: Lab) -> bool:
    return "n0" in lab.swarm_nodes and all(lab.node_at(ip_address(a)) in lab.swarm_nodes for a in SWARM_PEERS)


FAULTS += (
    Fault(
        "mesh-no-flood",
        "n0",
        (
            *(
                ("bridge", "-n", "1-ingress", "fdb", "del", "00:00:00:00:00:00", "dev", "vxlan0", "dst", peer)
                for peer in SWARM_PEERS
            ),
            ("ip", "-n", "ingress_sbox", "neigh", "flush", "all"),
        ),
        (
            "test_mesh.py::test_overlay[n0]",
            "test_mesh.py::test_every_node_answers_for_every_task[n0]",
            "test_mesh.py::test_vxlan_on_the_wire[n0]",
        ),
        Repair.provision,
        _is_mesh,
        "n0 still answers on its published port, but only ever from its own tasks; n1 and n2 answer from all",
        "what does n0's overlay do with a frame for a MAC it has not learnt? (bridge -n 1-ingress fdb show dev vxlan0)",
        "The VXLAN device floods ARP and unknown frames to every address of its all-zero FDB entries: the other "
        "nodes. Without them n0's ingress namespace cannot find a remote task's MAC, its health checks of those "
        "tasks fail, and keepalived takes them out, so n0 quietly balances over its local tasks only.",
    ),
)
