"""The pure parts of the failure scenarios: what may be broken, and what the client saw."""

import http.server
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import Page, free_port

from labkit.errors import LabkitError
from labkit.labfile import LABS, load_lab
from labkit.operate.failover import LOAD, Freeze, LinkDown, Load, Request, StopService, parse_target

NAT = load_lab(LABS / "nat" / "lab.yaml")


def test_targets():
    assert parse_target(NAT, "lb0") == Freeze("lb0")
    assert parse_target(NAT, "lb0:keepalived") == StopService("lb0", "keepalived")
    assert parse_target(NAT, "rs1:nginx") == StopService("rs1", "nginx")
    assert parse_target(NAT, "rs1:int") == LinkDown("rs1", "int")
    assert "frozen" in Freeze("lb0").what and "link to network int down" in LinkDown("rs1", "int").what
    assert [str(parse_target(NAT, t)) for t in ("lb0", "rs1:nginx", "rs1:int")] == ["lb0", "rs1:nginx", "rs1:int"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("lb9", "has no node 'lb9'. Nodes: lb0, lb1, rs0, rs1, cl0"),
        ("cl0", "cl0 is the client that measures the failure"),
        ("rs0:keepalived", "Use rs0:nginx or rs0:<int>"),
        ("lb0:ext2", "Use lb0:keepalived or lb0:<ext|int>"),
    ],
)
def test_bad_targets(text, message):
    with pytest.raises(LabkitError, match=message.replace("|", r"\|")):
        parse_target(NAT, text)


def request(start, server, took=0.05, error="TimeoutError"):
    return Request(start, start + took, server, None if server else error)


def test_outage_is_measured_from_the_last_answer_to_the_next():
    load = Load(
        [
            request(0.0, "rs0"),
            request(0.1, "rs1"),
            request(0.2, None, 1.0),
            request(1.2, None, 1.0),
            request(2.2, "rs0"),
            request(2.3, "rs1"),
        ]
    )
    assert load.failed == 2
    assert load.outage == round(2.2 - 0.15, 2)
    assert load.failing_for == round(2.2 - 0.2, 2)
    assert load.served() == {"rs0": 2, "rs1": 2}
    assert load.served(since=2.0) == {"rs0": 1, "rs1": 1}


def test_alternating_failures_are_short_outages():
    # a dead real server under rr: every other request fails, but the VIP keeps answering
    load = Load([request(0.1 * i, None if i % 2 else "rs1", 0.02) for i in range(10)])
    assert load.failed == 5
    assert load.outage == round(0.2 - 0.02, 2)
    assert load.failing_for == round(0.9 + 0.02 - 0.1, 2)


def test_failing_to_the_end():
    load = Load([request(0.0, "rs0"), request(0.1, None, 1.0), request(1.1, None, 1.0)])
    assert load.outage == round(2.1 - 0.05, 2)


def test_no_failure_no_outage():
    load = Load([request(0.0, "rs0"), request(0.1, "rs1")])
    assert (load.failed, load.outage, load.failing_for) == (0, 0.0, 0.0)


def test_a_stray_timeout_does_not_stretch_the_refused_span():
    # nginx stopped on rs0: refusals until the checker takes it out; a timeout 6 s later is the
    # client's hiccup, not the checker's delay (seen once in CI: 9.2 s for a 1.3 s span)
    refused = [request(0.1 * i, None if i % 2 else "rs1", 0.01, "ConnectionRefusedError") for i in range(14)]
    late = request(7.0, None, 1.0, "TimeoutError")
    load = Load([*refused, request(1.5, "rs1"), late, request(8.1, "rs1")])
    assert load.failing_for == round(8.0 - 0.1, 2)
    assert load.failing_with("ConnectionRefusedError") == round(1.3 + 0.01 - 0.1, 2)
    assert load.failing_with("TimeoutError") == 1.0


def run_load(port: int, seconds: float, mark: Path, settled: float = 1.0, after: float = 0) -> list[Request]:
    """The client's load program (the one labkit runs on cl0) run here with this Python, settled
    after 1 s unless told otherwise."""
    args = {"vip": "127.0.0.1", "port": port, "seconds": seconds, "interval": 0.1, "timeout": 1.0, "path": "",
            "rate": 0, "settled": settled, "mark": str(mark), "after": after}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", LOAD, json.dumps(args)], capture_output=True, text=True, check=True)
    return [Request(*row) for row in json.loads(out.stdout.splitlines()[-1])["requests"]]


@pytest.mark.parametrize("broken, seconds", [(True, 20), (False, 3)])
def test_a_settled_load_ends_a_second_after_the_break_and_the_failures_not_before(tmp_path, broken, seconds):
    """Against a server on loopback that starts listening 1 s into the load: refused until
    then, answered after. Told of the break (the mark made 0.5 s in), the load stops 1 s after
    the last refusal instead of running its 20 s; never told, it runs all its seconds."""
    port, mark = free_port(), tmp_path / "broken"
    servers = []

    def serve_late():
        time.sleep(0.5)
        if broken:
            mark.touch()
        time.sleep(0.5)
        servers.append(http.server.ThreadingHTTPServer(("127.0.0.1", port), Page))
        servers[0].serve_forever()

    threading.Thread(target=serve_late, daemon=True).start()
    try:
        requests = run_load(port, seconds, mark)
    finally:
        servers[0].shutdown()
    load = Load(requests)
    assert load.errors().keys() == {"ConnectionRefusedError"} and load.served().keys() == {"rs0"}
    last_failed = max(r.done for r in requests if r.server is None)
    if broken:
        assert 1.0 <= requests[-1].done - last_failed < 1.5
        assert not mark.exists(), "the load removes its mark"
    else:
        assert requests[-1].done >= seconds - 0.2


@pytest.mark.parametrize("broken", [True, False])
def test_a_load_goes_on_after_a_break_slow_to_make(tmp_path, broken):
    """A 2 s load whose break is made 2.5 s in (after the load would have ended) goes on 1 s after
    it; never told of a break, it waits for one its seconds again, and 1 s more (5 s in all)."""
    port, mark = free_port(), tmp_path / "broken"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    if broken:
        threading.Timer(2.5, mark.touch).start()
    try:
        requests = run_load(port, 2.0, mark, settled=0, after=1.0)
    finally:
        server.shutdown()
    assert Load(requests).served().keys() == {"rs0"}
    if broken:
        assert 3.4 <= requests[-1].done < 4.7
        assert not mark.exists(), "the load removes its mark"
    else:
        assert requests[-1].done >= 4.9
