"""Every table labkit prints reads at 80 columns: no line is wider, and no address, port or
node name is cut across two lines (narrower consoles get fewer columns instead)."""

import re

from rich.console import Console
from test_show import CONNECTIONS, directors

from labkit.boot.inventory import Listed
from labkit.box import Box
from labkit.cli.box import box_lines
from labkit.cli.lab import list_lines, status_view
from labkit.labfile import LABS, load_lab
from labkit.operate import bench, show

NAT, DR, FWMARK = (load_lab(LABS / name / "lab.yaml") for name in ("nat", "dr", "fwmark"))
# an IPv4 or bracketed IPv6 address with its port, or a bare address
ADDRESS = re.compile(r"\[[0-9a-f:]+\]:\d+|\d+\.\d+\.\d+\.\d+(?::\d+)?|\bfd00:[0-9a-f:]+")


def render(renderable, width: int) -> str:
    console = Console(record=True, width=width, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(renderable)
    return console.export_text()


def assert_whole_at_80(wide: str, narrow: str, names: list[str]) -> None:
    """What `wide` shows of addresses and names, `narrow` shows whole, each on one line."""
    lines = narrow.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80, narrow
    words = set(ADDRESS.findall(wide)) | {n for n in names if n in wide}
    assert words, "nothing to look for"
    for word in words:
        assert any(re.search(rf"(?<![\w.]){re.escape(word)}(?!\w)", line) for line in lines), (
            f"{word} is cut at 80 columns:\n{narrow}"
        )


def test_show_at_80_columns_drops_the_rates_not_the_addresses():
    wide, narrow = render(show.view(NAT, directors()), 200), render(show.view(NAT, directors()), 80)
    assert_whole_at_80(wide, narrow, list(NAT.nodes))
    assert "1516/1054312" in narrow and "379/263578" not in narrow
    assert "Left out at this width: conn/s, pkt/s, B/s" in narrow


def test_show_of_an_ipv6_service_at_80_columns():
    listing = (
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        "TCP  [fd00:55::100]:8080 wlc persistent 300\n"
        "  -> [fd00:66::111]:8080          Masq    100    1234       65000\n"
        "  -> [fd00:66::112]:8080          Masq    100    1234       65000\n"
    )
    outputs = {"list": listing, "stats": "", "rate": "", "addresses": ""}
    lb0 = show.director_state(FWMARK, "lb0", outputs)
    wide, narrow = render(show.view(FWMARK, [lb0, lb0]), 200), render(show.view(FWMARK, [lb0, lb0]), 80)
    assert "[fd00:55::100]:8080" in wide
    assert_whole_at_80(wide, narrow, ["rs0", "rs1", "lb0"])


def test_connections_at_80_columns_keep_every_address():
    states = directors(connections=True)
    states[1].connections = states[0].connections
    wide, narrow = render(show.connections_view(NAT, states), 200), render(show.connections_view(NAT, states), 80)
    assert "192.168.55.200:43122" in CONNECTIONS
    assert_whole_at_80(wide, narrow, ["lb0", "lb1", "TIME_WAIT", "ESTABLISHED"])


def test_status_at_80_columns_puts_a_nodes_addresses_one_under_the_other():
    states = dict.fromkeys(DR.nodes, "running")
    wide = render(status_view(DR, "alice", "qemu+ssh://teacher@big/system", states, 200), 200)
    narrow = render(status_view(DR, "alice", "qemu+ssh://teacher@big/system", states, 80), 80)
    assert_whole_at_80(wide, narrow, [*DR.nodes, "real_server", "running"])
    assert "ext 192.168.55.11, int 192.168.66.11" in wide
    assert re.search(r"\blb0\b.*\brunning\b", narrow)  # tests/lab read the state on the node's line


def test_status_of_a_lab_that_fits_is_as_before():
    text = render(status_view(NAT, "nat", "", dict.fromkeys(NAT.nodes, "running"), 80), 80)
    assert re.search(r"lb0 .* director .* running .* ext 192.168.55.11, int 192.168.66.11", text), text
    assert "tcp 192.168.55.100:80 rr masq -> 192.168.66.111:80 w1, 192.168.66.112:80 w1" in text


def test_list_at_80_columns_leaves_out_age_and_memory():
    rows = [
        Listed("qemu+ssh://teacher@big/system", "schedulers", "alice", "running",
               "6.12.9+deb13-amd64", 2560, 5400.0),
        Listed("qemu:///system", "nat", "nat", "paused", "6.1.0-28-amd64", 2560, None),
    ]  # fmt: skip
    wide, narrow = "\n".join(list_lines(rows, 200)), "\n".join(list_lines(rows, 80))
    assert "1.5 h" in wide and "not ours" in wide
    assert_whole_at_80(wide, narrow, ["alice", "schedulers", "running", "paused", "6.12.9+deb13-amd64"])
    assert "Left out at this width: age, memory." in narrow


def test_box_list_at_80_columns():
    boxes = [
        Box("labkit/bookworm", "20261201.1", "6.1.0-28-amd64", "bookworm", "1:1.31-1+b1", "1:2.2.7-1+b2", "2026-12-01"),
        Box("labkit/linux-6.12.9-deb13-amd64", "20261201.2", "6.12.9+deb13-amd64", "trixie", "1:1.31-1+b1",
            "1:2.3.1-1", "2026-12-01"),
    ]  # fmt: skip
    wide, narrow = "\n".join(box_lines(boxes, 200)), "\n".join(box_lines(boxes, 80))
    assert_whole_at_80(wide, narrow, ["labkit/linux-6.12.9-deb13-amd64", "6.12.9+deb13-amd64", "trixie"])
    assert "Left out at this width: built" in narrow


def test_bench_at_80_columns_keeps_each_real_server_with_its_count():
    svc = FWMARK.services[1]  # tcp [fd00:55::100]:80
    result = bench.Result(
        complete=20000,
        failed=0,
        per_second=1234.5,
        mean_ms=25.9,
        percentiles={50: 20, 66: 22, 90: 31, 99: 58, 100: 1003},
        split={f"rs{i}": 20000 // 7 for i in range(7)},
    )
    target = bench.vip_target(FWMARK, svc, "lb0")
    wide = "\n".join(bench.report(target, "cl0", 20000, 32, result, 200))
    narrow = "\n".join(bench.report(target, "cl0", 20000, 32, result, 80))
    assert_whole_at_80(wide, narrow, [svc.key, "lb0", "cl0", "completed 20000,"])
    for i in range(7):
        assert re.search(rf"^.*\brs{i} 2857 \(14%\)", narrow, re.M)  # tests/lab read "rsN count ("
    assert "completed 20000, failed 0" in narrow
