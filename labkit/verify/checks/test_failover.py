"""Failure scenarios on the running lab, measured from the client. Each breaks one part of
the lab under a bounded load from the client, checks what the client saw, then heals the lab
and checks that it is whole again. They run after every other check.

The figures (seconds without an answer, failed requests, bytes of the long transfer) go to
the terminal summary and, as properties, to the JUnit report.
"""

from __future__ import annotations

import pytest

from labkit.labfile import Lab
from labkit.operate import failover
from labkit.plan import keepalived
from labkit.plan.steps import BIG_FILE
from labkit.verify.checks import promise

KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
# The load of a scenario ends this long after the client's last failed request (and the long
# transfer's end), rather than running its 16 s: long enough to see it answered throughout.
SETTLED_SECONDS = 3

pytestmark = pytest.mark.failover


@pytest.fixture
def whole_again(running, figure):
    """Heal the lab after a scenario, and check that it is whole: the preferred director holds
    the VIPs, every real server is back, and the client is answered by all of them. Given the
    node the scenario broke, only that node is provisioned again (the checks show the rest)."""
    healed = []

    def heal(node: str | None = None) -> failover.Load:
        seconds, load = failover.heal(running, nodes=[node] if node else None)
        figure("heal_seconds", round(seconds, 1))
        healed.append(load)
        # healed means every request of the load after it answered, by every real server in use
        lab = running.lab
        svc = next(s for s in lab.services if s.protocol.value == "tcp")
        serving = {lab.node_at(rs.address) for rs in svc.real_servers if rs.weight > 0}
        assert load.failed == 0 and set(load.served()) == serving, (
            f"after healing, {load.failed} of {len(load.requests)} requests failed and {load.served()} answered; "
            f"expected every request answered, by {sorted(serving)}"
        )
        return load

    yield heal
    if not healed:  # the scenario failed before healing: leave the lab whole for the next one
        heal()


def original_sha256(hosts, server: str) -> str:
    return hosts(server).check_output(f"sha256sum {BIG_FILE}").split()[0]


def check_transfer(hosts, report: failover.Report, figure) -> None:
    t = report.load.transfer
    assert t is not None and "error" not in t, f"the long transfer broke: {t}"
    figure("transfer_bytes_lost", t["length"] - t["bytes"])
    assert t["bytes"] == t["length"], f"the long transfer got {t['bytes']} of {t['length']} bytes"
    assert t["sha256"] == original_sha256(hosts, t["server"]), f"the long transfer from {t['server']} arrived changed"


def test_real_server_dies(lab: Lab, running, hosts, master, figure, whole_again):
    """nginx stops on a real server: requests fail only until the checker takes it out; then
    every request is served by the others. Healed, it serves again. (Only where keepalived
    checks the real servers: `master` exists in a pair.)"""
    victim = lab.real_servers[0]
    report = failover.fail(running, failover.StopService(victim, "nginx"), settled=SETTLED_SECONDS)
    print("\n".join(report.lines()))
    figure("failed_requests_until_checked", report.load.failed)
    figure("seconds_until_checked", report.noticed)
    bound = promise.takeout_bound(hosts(master).check_output(f"sudo -n cat {KEEPALIVED_CONF}"))
    assert report.noticed is not None and report.noticed <= bound + promise.MARGIN_SECONDS, (
        f"requests failed for {report.noticed} s: the checker's settings promise {bound} s "
        f"(+ {promise.MARGIN_SECONDS} s for the client and emulation)"
    )
    survivors = {
        lab.node_at(rs.address) for rs in failover.service_for(lab, report.target).real_servers if rs.weight > 0
    } - {victim}
    assert report.after.failed == 0, f"{report.after.failed} requests failed after the checker took {victim} out"
    assert set(report.after.served()) == survivors, (
        f"expected answers only from {survivors}, saw {report.after.served()}"
    )
    load = whole_again(victim)
    assert load.failed == 0 and victim in load.served(), (
        f"{victim} did not rejoin: {load.served()}, {load.failed} failed"
    )


def test_director_stops(lab: Lab, running, hosts, master, figure, whole_again):
    """keepalived stops on the active director (it says goodbye with priority 0): the standby
    answers for the VIP within 3 s, and a long transfer survives."""
    report = failover.fail(running, failover.StopService(master, "keepalived"), settled=SETTLED_SECONDS)
    print("\n".join(report.lines()))
    figure("outage_seconds", report.load.outage)
    figure("failed_requests", report.load.failed)
    assert report.holder == lab.directors[1], f"expected {lab.directors[1]} to hold the VIP, saw {report.holder}"
    assert report.load.outage <= 3.0, f"the VIP did not answer for {report.load.outage} s (limit 3 s)"
    check_transfer(hosts, report, figure)
    whole_again(master)


def test_director_dies(lab: Lab, running, hosts, master, figure, whole_again):
    """The active director's VM freezes (no goodbye): the standby takes over when three VRRP
    adverts are missed, and the synced connection table keeps a long transfer going."""
    report = failover.fail(running, failover.Freeze(master), settled=SETTLED_SECONDS)
    print("\n".join(report.lines()))
    # VRRP's bound, + the client's 1 s request timeout (a request sent just before the takeover
    # waits it out), + 0.5 s for the gratuitous ARP to land and the guests' scheduling under emulation
    bound = keepalived.takeover_bound(lab) + 1.0 + 0.5
    figure("outage_seconds", report.load.outage)
    figure("failed_requests", report.load.failed)
    assert report.holder == lab.directors[1], f"expected {lab.directors[1]} to hold the VIP, saw {report.holder}"
    assert report.load.outage <= bound, f"the VIP did not answer for {report.load.outage} s (limit {bound:.1f} s)"
    check_transfer(hosts, report, figure)
    whole_again(master)
