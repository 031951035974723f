"""UDP services, checked from the client: the responder on each real server answers with its
name, new client ports split as rr/wrr say, one client port stays with one real server unless
the service schedules every datagram on its own (one-packet scheduling, ipvsadm -o), and
keepalived's UDP check takes a silent real server out.

The datagrams go from one small program on the client: one SSH round trip serves both a
service's split and its one-port check.
"""

from __future__ import annotations

import json
import shlex
import time
from collections import Counter

import pytest

from labkit.labfile import Check, Forwarding, Lab, Protocol, VirtualService
from labkit.plan import ipvs
from labkit.plan.steps import RESPONDER_UNIT
from labkit.verify.checks import promise, scheduling, state
from labkit.verify.checks.plugin import once_per_service

# Runs on the client with the box's python3; prints one JSON: for each datagram, the name that
# answered (None if nothing did) and the address:port the answer came from (or the error).
ASK = r"""
import json, socket, sys
a = json.loads(sys.argv[1])

def fresh_ports(n):
    # The director keeps a UDP client port's entry for 5 minutes and sends that port's datagrams
    # to the same real server meanwhile. Ports the kernel picks could repeat one from an
    # earlier run; these come in turn from a range below the kernel's (32768-60999).
    path, first, last = "/var/tmp/labkit-udp-next-port", 20000, 32000
    try:
        start = int(open(path).read())
    except (OSError, ValueError):
        start = first
    if start + n > last:
        start = first
    open(path, "w").write(str(start + n))
    return range(start, start + n)

def ask(sock):
    try:
        sock.sendto(b"labkit", (a["vip"], a["port"]))
        data, source = sock.recvfrom(2048)
        return [data.decode(), "%s:%d" % source]
    except OSError as e:
        return [None, type(e).__name__]

def new_socket(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.bind(("", port))
    return s

ports = fresh_ports(a["new"] + 1)
answers = []
for port in ports[:a["new"]]:  # a new client port for each datagram
    s = new_socket(port)
    answers.append(ask(s))
    s.close()
s = new_socket(ports[-1])
answers += [ask(s) for _ in range(a["same"])]  # then datagrams from one client port
print(json.dumps(answers))
"""


def ask(hosts, lab: Lab, svc: VirtualService, new: int = 0, same: int = 0) -> list[tuple[str | None, str]]:
    """Datagrams from the client to the service: `new` each from a new client port, then `same`
    from one port. For each, who answered and from where."""
    args = json.dumps({"vip": str(svc.addresses[0]), "port": svc.port, "new": new, "same": same})
    out = hosts(lab.clients[0]).check_output(f"python3 -c {shlex.quote(ASK)} {shlex.quote(args)}")
    return [tuple(answer) for answer in json.loads(out)]


def director_view(hosts, lab: Lab, svc: VirtualService) -> str:
    """What the active director schedules for the service and its entries for it: shown when a
    split is wrong."""
    host = hosts(lab.active_director)
    which = f"-f {svc.fwmark}" if svc.fwmark else f"-u {svc.vip}:{svc.port}"
    listing = host.run(f"sudo -n ipvsadm -L -n {which}").stdout.strip()
    entries = [
        e for e in host.run("sudo -n ipvsadm -L -n -c").stdout.splitlines() if f" {svc.addresses[0]}:{svc.port} " in e
    ]
    return "\n".join([f"{lab.active_director}:", listing, "its entries for the service:", *entries[-20:]])


def answered_from(lab: Lab, svc: VirtualService, answers) -> None:
    """Every answer comes from the VIP, as the client asked; but in NAT with one-packet
    scheduling from the real server's own address: the director drops a one-packet entry as
    soon as it has forwarded the datagram, so it has nothing to rewrite the answer with, and
    forwards it as the real server sent it (a connected socket, a DNS resolver's, would drop it)."""
    unrewritten = svc.one_packet and svc.forwarding == Forwarding.masq
    for name, source in answers:
        if name is None:
            continue
        rs = next(rs for rs in svc.real_servers if lab.node_at(rs.address) == name)
        want = f"{rs.address}:{svc.real_port(rs)}" if unrewritten else f"{svc.addresses[0]}:{svc.port}"
        assert source == want, (
            f"{svc.key}: {name}'s answer came from {source}, expected {want} "
            f"({'not rewritten: NAT with one-packet scheduling' if unrewritten else 'the VIP'})"
        )


def test_udp_responder(node_state, lab: Lab, udp_real_server):
    """The responder runs under systemd and answers a datagram on each UDP port with the name."""
    ports = state.udp_ports(lab, udp_real_server)
    unit, *answers = node_state[udp_real_server]["udp"].splitlines()
    assert unit == "active", f"expected {RESPONDER_UNIT} active on {udp_real_server}, systemctl says {unit}"
    assert answers == [f"{port} {udp_real_server}" for port in ports], (
        f"{udp_real_server}: expected each UDP port to answer its name, saw {answers}"
    )


@pytest.fixture(scope="session")
def udp_answers(hosts, lab: Lab):
    """udp_answers(svc) -> the answers to 2N datagrams from new client ports, then to 2N from one
    port: one run of the client's program per service serves both checks below."""

    def exchange(svc: VirtualService) -> list:
        count = scheduling.split_count(lab, svc)
        return ask(hosts, lab, svc, new=count, same=count)

    return once_per_service(exchange)


def test_udp_split(hosts, lab: Lab, udp_service: VirtualService, udp_answers):
    """A datagram from each new client port is scheduled anew: 2N of them split exactly as rr
    or wrr say, and every answer comes from the VIP (see answered_from)."""
    svc = udp_service
    want, live = scheduling.exact_split(lab, svc), scheduling.live(lab, svc)
    count = scheduling.split_count(lab, svc)
    answers = udp_answers(svc)[:count]
    seen = Counter(name or "no answer" for name, _ in answers)
    if want is not None:
        assert dict(seen) == want, (
            f"{svc.key} {svc.scheduler}: expected {want} from {count} client ports, "
            f"saw {dict(seen)}\n{director_view(hosts, lab, svc)}"
        )
    else:
        assert set(seen) <= live, f"{svc.key}: answers from {dict(seen)}, expected only {sorted(live)}"
    answered_from(lab, svc, answers)


def test_udp_one_client_port(hosts, lab: Lab, udp_service: VirtualService, udp_answers):
    """Datagrams from one client port: IPVS keeps that port's entry, so all reach one real server;
    with one-packet scheduling every datagram is scheduled on its own and they split as rr or
    wrr say, from a single port."""
    svc = udp_service
    want, live = scheduling.exact_split(lab, svc), scheduling.live(lab, svc)
    count = scheduling.split_count(lab, svc)
    answers = udp_answers(svc)[count:]
    seen = Counter(name or "no answer" for name, _ in answers)
    if not svc.one_packet:
        assert len(seen) == 1 and set(seen) <= live, (
            f"{svc.key}: {count} datagrams from one client port must reach one real server, saw {dict(seen)}\n"
            f"{director_view(hosts, lab, svc)}"
        )
    elif want is not None:
        assert dict(seen) == want, (
            f"{svc.key} {svc.scheduler} with one-packet scheduling: expected {want} from "
            f"{count} datagrams of one client port, saw {dict(seen)}\n{director_view(hosts, lab, svc)}"
        )
    else:
        assert set(seen) <= live, f"{svc.key}: answers from {dict(seen)}, expected only {sorted(live)}"
    answered_from(lab, svc, answers)


def members(hosts, director: str, services: list[VirtualService]) -> dict[str, set[str]]:
    listing = hosts(director).check_output("sudo -n ipvsadm -L -n")
    table = {s.key: s for s in ipvs.parse_list(listing)}
    return {
        svc.key: {d.address for d in table[svc.key].destinations} if svc.key in table else set() for svc in services
    }


def wait_until(what: str, condition, seconds: float = 20) -> float:
    """Poll until condition() holds; the seconds it took."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < seconds, f"{what} did not happen within {seconds} s"
        time.sleep(0.2)
    return round(time.monotonic() - start, 1)


@pytest.mark.failover
def test_udp_check_takes_a_silent_server_out(hosts, lab: Lab, udp_checker, figure):
    """The responder on a real server goes silent (SIGSTOP: its port stays open, so no ICMP
    port unreachable says anything is wrong): keepalived's UDP check, a datagram that must be
    answered with the server's name, takes it out of every UDP service, and the client's
    datagrams all reach the others. Answering again (SIGCONT), it is put back."""
    services = [s for s in lab.services if s.protocol == Protocol.udp and s.check == Check.udp]
    victim = lab.node_at(services[0].real_servers[0].address)
    address = str(services[0].real_servers[0].address)
    checked = [s for s in services if address in {str(rs.address) for rs in s.real_servers}]
    stop, start = (f"sudo -n systemctl kill -s {signal} {RESPONDER_UNIT}" for signal in ("STOP", "CONT"))
    try:
        hosts(victim).check_output(stop)
        out = wait_until(
            f"{udp_checker} taking {victim} out of {', '.join(s.key for s in checked)}",
            lambda: not any(address in m for m in members(hosts, udp_checker, checked).values()),
        )
        figure("udp_seconds_until_taken_out", out)
        bound = promise.takeout_bound(hosts(udp_checker).check_output("sudo -n cat /etc/keepalived/keepalived.conf"))
        assert out <= bound + promise.MARGIN_SECONDS, (
            f"{victim} was taken out after {out} s: the checker's settings promise {bound} s "
            f"(+ {promise.MARGIN_SECONDS} s for emulation)"
        )
        svc = checked[0]
        answers = ask(hosts, lab, svc, new=4)
        others = scheduling.live(lab, svc) - {victim}
        assert {name for name, _ in answers} <= others, (
            f"with {victim} out, {svc.key} must be answered by {sorted(others)} alone, saw {answers}"
        )
    finally:
        hosts(victim).check_output(start)
    back = wait_until(
        f"{udp_checker} putting {victim} back",
        lambda: all(address in m for m in members(hosts, udp_checker, checked).values()),
    )
    figure("udp_seconds_until_back", back)
