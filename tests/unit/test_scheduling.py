"""The scheduler model the checks predict with, against choices worked out by hand from the
kernel's sources (net/netfilter/ipvs/ip_vs_*.c)."""

import pytest

from labkit.verify.checks.scheduling import Dest, buckets, dh, fo, hash_32, hold, in_a_row, rr, sh

A, B = "192.168.66.111:80", "192.168.66.112:80"


def two(wa, wb, inactive=(0, 0), active=(0, 0)):
    return [Dest(A, wa, active[0], inactive[0]), Dest(B, wb, active[1], inactive[1])]


@pytest.mark.parametrize(
    "scheduler, dests, want",
    [
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
    ],
)
def test_held_connections(scheduler, dests, want):
    assert hold(scheduler, dests, len(want)).chosen == want


def test_hold_counts_each_connection_and_leaves_the_input_alone():
    start = two(3, 1)
    placed = hold("wlc", start, 6)
    assert [(d.active, d.inactive) for d in placed.dests] == [(4, 0), (2, 0)]
    assert [d.active for d in start] == [0, 0]


@pytest.mark.parametrize(
    "scheduler, dests, want",
    [
        # each closed connection is one more inactive one: lc alternates from the fewest
        ("lc", two(1, 1, inactive=(3, 1)), [B, B, A, B]),
        # wlc 3:1 counts inactive ones per weight: rs1's turn comes when rs0 has three
        ("wlc", two(3, 1), [A, B, A, A]),
        # sed, nq, fo and ovf count active connections only: one server takes every request
        ("sed", two(1, 3, inactive=(0, 9)), [B] * 4),
        ("nq", two(3, 1, inactive=(9, 0)), [A] * 4),
        ("fo", two(1, 2), [B] * 4),
        ("ovf", two(2, 1), [A] * 4),
        # lblc and lblcr made anew: the VIP keeps the server wlc first gives it
        ("lblc", two(1, 1, inactive=(2, 0)), [B] * 4),
        ("lblcr", two(1, 1), [A] * 4),
    ],
)
def test_requests_in_a_row(scheduler, dests, want):
    assert in_a_row(scheduler, dests, len(want), "192.168.55.200", "192.168.55.100") == want


def test_requests_in_a_row_hash_one_address():
    dests = two(1, 1)
    assert in_a_row("sh", dests, 3, "192.168.55.200", "192.168.55.100") == [sh(dests, "192.168.55.200").key] * 3
    assert in_a_row("dh", dests, 2, "192.168.55.200", "192.168.55.100") == [dh(dests, "192.168.55.100").key] * 2
    assert [in_a_row(s, dests, 2, "a", "b") for s in ("mh", "rr")] == [None] * 2


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


def test_hash_32_is_the_kernels():
    # hash_32(1, 8): the top byte of 0x61C88647
    assert hash_32(1, 8) == 0x61
    assert hash_32(2, 8) == (2 * 0x61C88647 & 0xFFFFFFFF) >> 24 == 0xC3


def test_sh_fills_buckets_by_weight_and_dh_one_each():
    a, b = two(2, 1)
    assert [d.key for d in buckets([a, b], weighted=True)[:6]] == [A, A, B, A, A, B]
    assert [d.key for d in buckets([a, b], weighted=False)[:4]] == [A, B, A, B]
    assert len(buckets([a, b], weighted=True)) == 256


def test_sh_and_dh_pick_the_bucket_of_the_address():
    dests = two(1, 1)
    # 0.0.0.1 hashes to bucket 0x61 = 97 (odd: the second server); 0.0.0.2 to 0xC3 = 195 (odd too)
    assert sh(dests, "0.0.0.1").key == B
    assert dh(dests, "0.0.0.1").key == B
    assert sh(two(2, 1), "0.0.0.1").key == A  # bucket 97 of A A B A A B ...: 97 % 3 == 1
    assert sh(two(1, 0), "0.0.0.1") is None  # its bucket's server is drained
