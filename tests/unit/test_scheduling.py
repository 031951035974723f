"""The scheduler model the checks predict with, against choices worked out by hand from the
kernel's sources (net/netfilter/ipvs/ip_vs_*.c)."""

import pytest

from labkit.checks.scheduling import Dest, fo, hold, rr

A, B = "192.168.66.111:80", "192.168.66.112:80"


def two(wa, wb, inactive=(0, 0), active=(0, 0)):
    return [Dest(A, wa, active[0], inactive[0]), Dest(B, wb, active[1], inactive[1])]


@pytest.mark.parametrize("scheduler, dests, want", [
    # lc: fewest connections (active*256 + inactive), ties to the first listed
    ("lc", two(1, 1), [A, B, A, B, A, B]),
    ("lc", two(1, 1, inactive=(5, 3)), [B, A, B, A, B, A]),
    ("lc", two(5, 1), [A, B, A, B, A, B]),  # weights do not count, only 0 does
    # wlc 3:1: overhead/weight; rs1 gets the 2nd and the 6th
    ("wlc", two(3, 1), [A, B, A, A, A, B]),
    # sed 3:1: (active+1)/weight: one connection on rs0 still leaves rs0 cheaper than idle rs1
    ("sed", two(3, 1), [A, A, A, B, A, A]),
    # nq 3:1: the idle rs1 first, then as sed
    ("nq", two(3, 1), [A, B, A, A, A, A]),
    ("nq", two(3, 1, active=(0, 2)), [A, A, A, A, A, A]),
    # ovf 2:1: rs0 takes connections while its active ones do not exceed 2, then rs1 up to 1,
    # then nothing is left
    ("ovf", two(2, 1), [A, A, A, B, B, None]),
    # lblc: the VIP stays on rs0 until it has more than its weight and rs1 is under half of its
    # own; then it stays on rs1, which is never "overloaded" while no server is under half
    ("lblc", two(1, 1), [A, A, B, B, B, B]),
    # lblcr: rs1 joins the VIP's set; the least loaded of the set serves, rs0 again at the 6th
    ("lblcr", two(1, 1), [A, A, B, B, B, A]),
    # fo: the highest weight whatever its load; drained, the next
    ("fo", two(2, 1), [A] * 6),
    ("fo", two(0, 1), [B] * 6),
    ("wlc", two(0, 1), [B] * 6),  # weight 0: no new connection
    ("lc", two(0, 0), [None] * 2),
])
def test_held_connections(scheduler, dests, want):
    assert hold(scheduler, dests, len(want)).chosen == want


def test_hold_counts_each_connection_and_leaves_the_input_alone():
    start = two(3, 1)
    placed = hold("wlc", start, 6)
    assert [(d.active, d.inactive) for d in placed.dests] == [(4, 0), (2, 0)]
    assert [d.active for d in start] == [0, 0]


def test_lblc_keeps_a_server_it_was_given():
    state = {"server": B}
    assert hold("lblc", two(1, 1), 2, state).chosen == [B, B]


def test_rr_takes_the_next_after_the_last():
    assert rr(two(1, 1), {}).key == A
    assert rr(two(1, 1), {"last": A}).key == B
    assert rr(two(1, 1), {"last": B}).key == A
    assert rr(two(1, 0), {"last": A}).key == A


def test_fo_first_of_equal_weights():
    assert fo(two(1, 1), {}).key == A
    assert fo(two(0, 0), {}) is None
