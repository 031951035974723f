"""`labkit show`: what a user reads for the two directors of a lab, and the JSON for scripts."""

import json
from pathlib import Path

from rich.console import Console

from labkit.labfile import LABS, load_lab
from labkit.operate import show
from labkit.plan import ipvs

LAB = load_lab(LABS / "nat" / "lab.yaml")
# lb0 of a running nat lab: `ipvsadm -L -n`, with --stats --exact and --rate --exact
SAMPLES = Path(__file__).parent / "samples"

LISTING = (SAMPLES / "nat-lb0-list.txt").read_text()

STATS = (SAMPLES / "nat-lb0-stats.txt").read_text()

RATES = (SAMPLES / "nat-lb0-rate.txt").read_text()

# The standby has the same table and has seen no packet of it.
IDLE_STATS = """\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  192.168.55.100:80                   0        0        0        0        0
  -> 192.168.66.111:80                   0        0        0        0        0
  -> 192.168.66.112:80                   0        0        0        0        0
TCP  192.168.55.100:8080                 0        0        0        0        0
  -> 192.168.66.111:80                   0        0        0        0        0
  -> 192.168.66.112:80                   0        0        0        0        0
"""
IDLE_RATES = IDLE_STATS.replace(
    "Conns   InPkts  OutPkts  InBytes OutBytes", "  CPS    InPPS   OutPPS    InBPS   OutBPS"
)

ACTIVE_ADDRESSES = """\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
3: ext    inet 192.168.55.11/24 brd 192.168.55.255 scope global ext\\       valid_lft forever preferred_lft forever
3: ext    inet 192.168.55.100/32 scope global ext\\       valid_lft forever preferred_lft forever
4: int    inet 192.168.66.11/24 brd 192.168.66.255 scope global int\\       valid_lft forever preferred_lft forever
"""
STANDBY_ADDRESSES = """\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
3: ext    inet 192.168.55.12/24 brd 192.168.55.255 scope global ext\\       valid_lft forever preferred_lft forever
4: int    inet 192.168.66.12/24 brd 192.168.66.255 scope global int\\       valid_lft forever preferred_lft forever
"""

CONNECTIONS = """\
IPVS connection entries
pro expire state       source             virtual            destination
TCP 01:58  TIME_WAIT   192.168.55.200:43122 192.168.55.100:80  192.168.66.111:80
TCP 14:59  ESTABLISHED 192.168.55.200:43124 192.168.55.100:8080 192.168.66.112:80
"""


def directors(lb1_addresses=STANDBY_ADDRESSES, connections=False):
    lb0 = {
        "list": LISTING,
        "stats": STATS,
        "rate": RATES,
        "addresses": ACTIVE_ADDRESSES,
        "daemon": "master sync daemon (mcast=int, syncid=1, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n",
    }
    lb1 = {
        "list": LISTING,
        "stats": IDLE_STATS,
        "rate": IDLE_RATES,
        "addresses": lb1_addresses,
        "daemon": "backup sync daemon (mcast=int, syncid=1, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n",
    }
    if connections:
        lb0["connections"], lb1["connections"] = CONNECTIONS, "IPVS connection entries\npro expire state\n"
    return [show.director_state(LAB, "lb0", lb0), show.director_state(LAB, "lb1", lb1)]


def render(renderable, width=200) -> str:
    console = Console(record=True, width=width)
    console.print(renderable)
    return console.export_text()


def line_with(text: str, word: str) -> str:
    return next(line for line in text.splitlines() if word in line)


def test_both_directors_side_by_side_the_active_one_marked():
    text = render(show.view(LAB, directors()))
    titles = line_with(text, "lb0")
    assert "lb1" in titles, f"the two tables are not side by side:\n{text}"
    assert titles.index("lb0") < titles.index("active") < titles.index("lb1") < titles.index("standby")
    assert "holds 192.168.55.100" in titles
    assert "sync master on int" in text and "sync backup on int" in text


def test_counters_rates_and_real_servers_are_shown():
    text = render(show.view(LAB, directors()))
    row = line_with(text, "TCP 192.168.55.100:80 ")
    # lb0's totals: conns, packets in/out, bytes in/out, conn/s, pkt/s, B/s; then lb1's, all zero.
    assert row.split()[:9] == ["TCP", "192.168.55.100:80", "rr", "4", "24/16", "1516/1054312", "1", "6/4", "379/263578"]
    assert row.split()[9:] == ["TCP", "192.168.55.100:80", "rr", "0", "0/0", "0/0", "0", "0/0", "0/0"]
    real_server = line_with(text, "192.168.66.111:80 rs0")
    # forward, weight, ActiveConn/InActConn, conns, packets, bytes, conn/s, pkt/s, B/s
    assert real_server.split()[2:11] == ["Masq", "1", "0/2", "2", "12/8", "758/527156", "0", "3/2", "189/131789"]


def test_a_narrow_terminal_stacks_the_directors_and_cuts_no_number():
    text = render(show.view(LAB, directors()), width=110)
    assert "lb1" not in line_with(text, "lb0")
    assert "1516/1054312" in text
    # Narrower than one table: cells fold onto a second line, none ends in "…".
    assert "…" not in render(show.view(LAB, directors()), width=70)


def test_a_vip_on_both_directors_or_on_none_is_reported():
    both = render(show.view(LAB, directors(lb1_addresses=ACTIVE_ADDRESSES)))
    assert "warning: 192.168.55.100 is held by lb0 and lb1" in both
    none = directors()
    none[0].vips = []
    assert "warning: no director holds 192.168.55.100" in render(show.view(LAB, none))
    assert "warning" not in render(show.view(LAB, directors()))


def test_holds_vip_reads_addresses_not_substrings():
    assert ipvs.holds_vip(ACTIVE_ADDRESSES, "192.168.55.100")
    assert not ipvs.holds_vip(STANDBY_ADDRESSES, "192.168.55.100")
    # 192.168.55.1 is a prefix of .100 and of .11 but is not held.
    assert not ipvs.holds_vip(ACTIVE_ADDRESSES, "192.168.55.1")


def test_holds_vip_reads_ipv6_addresses():
    # as `ip -o addr show` lists them on the fwmark lab's lb0
    held = ACTIVE_ADDRESSES + (
        "3: ext    inet6 fd00:55::100/128 scope global nodad \\       valid_lft forever preferred_lft forever\n"
        "3: ext    inet6 fd00:55::11/64 scope global nodad \\       valid_lft forever preferred_lft forever\n"
    )
    assert ipvs.holds_vip(held, "fd00:55::100")
    assert ipvs.holds_vip(held, "192.168.55.100")
    assert not ipvs.holds_vip(ACTIVE_ADDRESSES, "fd00:55::100")
    assert not ipvs.holds_vip(held, "fd00:55::1")


def test_connections_view_per_director():
    text = render(show.connections_view(LAB, directors(connections=True)))
    titles = line_with(text, "lb0")
    assert "active" in titles and "lb1" in titles
    row = line_with(text, "43122")
    assert row.split()[:6] == [
        "TCP",
        "01:58",
        "TIME_WAIT",
        "192.168.55.200:43122",
        "192.168.55.100:80",
        "192.168.66.111:80",
    ]
    assert "2 entries" in text and "0 entries" in text


def test_json_round_trips_with_the_counters():
    data = show.as_json(LAB, directors(connections=True))
    assert json.loads(json.dumps(data)) == data
    lb0, lb1 = data["directors"]
    assert (lb0["name"], lb0["active"], lb0["vips"]) == ("lb0", True, ["192.168.55.100"])
    assert (lb1["name"], lb1["active"], lb1["vips"]) == ("lb1", False, [])
    http = lb0["services"][0]
    assert (http["key"], http["scheduler"], http["vip"], http["port"]) == (
        "tcp 192.168.55.100:80",
        "rr",
        "192.168.55.100",
        80,
    )
    assert http["stats"] == {"conns": 4, "in_packets": 24, "out_packets": 16, "in_bytes": 1516, "out_bytes": 1054312}
    assert http["rates"] == {"cps": 1, "in_pps": 6, "out_pps": 4, "in_bps": 379, "out_bps": 263578}
    rs = http["real_servers"][0]
    assert (rs["address"], rs["port"], rs["forward"], rs["weight"], rs["active_conns"], rs["inactive_conns"]) == (
        "192.168.66.111",
        80,
        "Masq",
        1,
        0,
        2,
    )
    assert rs["stats"]["out_bytes"] == 527156 and rs["rates"]["out_bps"] == 131789
    assert lb0["sync_daemons"][0]["role"] == "master"
    assert lb0["connections"][0]["state"] == "TIME_WAIT" and lb0["connections"][0]["expire"] == 118
    assert lb1["connections"] == []


def test_json_without_connections_says_they_were_not_fetched():
    data = show.as_json(LAB, directors())
    assert [d["connections"] for d in data["directors"]] == [None, None]


def test_an_ipv6_service_is_shown_with_its_brackets():
    """`[fd00:55::100]:80` is an address, not rich markup; its real servers are named."""
    fwmark = load_lab(LABS / "fwmark" / "lab.yaml")
    listing = (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        "TCP  [fd00:55::100]:80 rr\n"
        "  -> [fd00:66::111]:80            Masq    1      0          6\n"
        "  -> [fd00:66::112]:80            Masq    1      0          6\n"
    )
    stats = (
        "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n"
        "  -> RemoteAddress:Port\n"
        "TCP  [fd00:55::100]:80                  23      157      180    12430   106461\n"
        "  -> [fd00:66::111]:80                  11       41       29     3508     3624\n"
        "  -> [fd00:66::112]:80                  12      116      151     8922  1060994\n"
    )
    state = show.director_state(
        fwmark,
        "lb0",
        {
            "list": listing,
            "stats": stats,
            "rate": "",
            "addresses": "3: ext    inet6 fd00:55::100/128 scope global nodad\n",
        },
    )
    assert state.vips == ["fd00:55::100"]
    assert state.services[0].destinations[1].stats.conns == 12
    text = render(show.view(fwmark, [state]))
    assert "TCP [fd00:55::100]:80" in text and "[fd00:66::112]:80 rs1" in text, text
