"""ipvsadm's formats: the rules labkit loads, and the listings it reads back."""

from pathlib import Path

import pytest

from labkit.errors import LabkitError
from labkit.labfile import LABS, Forwarding, load_lab
from labkit.plan import ipvs
from labkit.verify.checks import table

# Seed 002: the two-director NAT lab, as `ipvsadm -L -n` printed it on lb0.
SEED_LISTING = """\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  192.168.55.100:80 wrr
  -> 192.168.66.111:80            Masq    100    0          0         
  -> 192.168.66.112:80            Masq    100    0          0         
"""

PERSISTENT = """\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  192.168.56.185:80 wrr persistent 300
  -> 192.168.56.183:80            Tunnel  2      1          4
UDP  192.168.56.186:53 sh
  -> 192.168.56.184:53            Route   1      0          0
"""


def test_parse_seed_listing():
    (svc,) = ipvs.parse_list(SEED_LISTING)
    assert (svc.key, svc.scheduler, svc.persistence) == ("tcp 192.168.55.100:80", "wrr", None)
    assert [(d.address, d.port, d.forward, d.weight) for d in svc.destinations] == [
        ("192.168.66.111", 80, Forwarding.masq, 100),
        ("192.168.66.112", 80, Forwarding.masq, 100),
    ]


def test_parse_persistence_counters_and_udp():
    tcp, udp = ipvs.parse_list(PERSISTENT)
    assert tcp.persistence == 300 and tcp.destinations[0].active == 1 and tcp.destinations[0].inactive == 4
    assert (udp.key, udp.scheduler, udp.destinations[0].forward) == ("udp 192.168.56.186:53", "sh", Forwarding.route)


def test_parse_stats_keeps_services_only():
    stats = ipvs.parse_stats((Path(__file__).parent / "samples" / "nat-lb0-stats.txt").read_text())
    assert list(stats) == ["tcp 192.168.55.100:80", "tcp 192.168.55.100:8080"]
    assert stats["tcp 192.168.55.100:80"] == ipvs.Stats(4, 24, 16, 1516, 1054312)


def test_rules_in_ipvsadm_save_format():
    assert ipvs.rules(load_lab(LABS / "nat" / "lab.yaml")) == (
        "-A -t 192.168.55.100:80 -s rr\n"
        "-a -t 192.168.55.100:80 -r 192.168.66.111:80 -m -w 1\n"
        "-a -t 192.168.55.100:80 -r 192.168.66.112:80 -m -w 1\n"
        "-A -t 192.168.55.100:8080 -s wrr\n"
        "-a -t 192.168.55.100:8080 -r 192.168.66.111:80 -m -w 2\n"
        "-a -t 192.168.55.100:8080 -r 192.168.66.112:80 -m -w 1\n"
        "-A -u 192.168.55.100:9000 -s rr\n"
        "-a -u 192.168.55.100:9000 -r 192.168.66.111:9000 -m -w 1\n"
        "-a -u 192.168.55.100:9000 -r 192.168.66.112:9000 -m -w 1\n"
        "-A -u 192.168.55.100:9001 -s wrr -o\n"
        "-a -u 192.168.55.100:9001 -r 192.168.66.111:9001 -m -w 2\n"
        "-a -u 192.168.55.100:9001 -r 192.168.66.112:9001 -m -w 1\n"
    )


def test_expected_listing_says_one_packet():
    nat = load_lab(LABS / "nat" / "lab.yaml")
    assert [(s.key, s.ops) for s in map(ipvs.expected, nat.services)] == [
        ("tcp 192.168.55.100:80", False),
        ("tcp 192.168.55.100:8080", False),
        ("udp 192.168.55.100:9000", False),
        ("udp 192.168.55.100:9001", True),
    ]


def test_expected_listing_for_tun():
    lab = load_lab(LABS / "tun" / "lab.yaml")
    want = ipvs.expected(lab.services[0])
    assert want.key == "tcp 192.168.55.100:80"
    assert [(d.forward, d.weight) for d in want.destinations] == [(Forwarding.tun, 2), (Forwarding.tun, 1)]


def test_tunnel_rules_name_the_tunnel_type_as_ipvsadm_save_does():
    text = ipvs.rules(load_lab(LABS / "tun" / "lab.yaml"))
    assert "-a -t 192.168.55.100:80 -r 192.168.66.111:80 -i -w 2 --tun-type ipip\n" in text
    # print_tunnel_rule: GUE with its port, GUE and GRE with their checksum option
    assert "-a -t 192.168.55.102:80 -r 192.168.66.112:80 -i -w 1 --tun-type gue --tun-port 6080 --tun-nocsum\n" in text
    assert "-a -t 192.168.55.103:80 -r 192.168.66.111:80 -i -w 1 --tun-type gre --tun-nocsum\n" in text
    # seed 003's mapping: ipvsadm gives a TUN real server the VIP's port, and so does the file
    assert "-a -t 192.168.55.104:8099 -r 192.168.66.111:8099 -i -w 2 --tun-type ipip\n" in text


def test_expected_listing_keeps_the_vips_port_for_a_mapped_tun_service():
    mapped = ipvs.expected(load_lab(LABS / "tun" / "lab.yaml").services[4])
    assert [d.key for d in mapped.destinations] == ["192.168.66.111:8099", "192.168.66.112:8099"]


# `ipvsadm -L -n --tun-info` (ipvsadm 1.31): a TunnelInfo column after the forwarding method.
TUN_INFO = """\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn
TCP  192.168.55.100:80 wrr
  -> 192.168.66.111:80            Tunnel  ipip          2      0          3         
TCP  192.168.55.102:80 rr
  -> 192.168.66.111:80            Tunnel  gue:6080:-c   1      1          0         
TCP  192.168.55.103:80 rr
  -> 192.168.66.112:80            Tunnel  gre:-c        1      0          2         
TCP  192.168.55.105:80 rr
  -> 192.168.66.112:80            Route   n/a           3      0          0         
"""


def test_parse_tunnel_info():
    services = ipvs.parse_list(TUN_INFO)
    assert [(d.key, d.forward, d.tunnel, d.weight, d.active, d.inactive) for s in services for d in s.destinations] == [
        ("192.168.66.111:80", Forwarding.tun, "ipip", 2, 0, 3),
        ("192.168.66.111:80", Forwarding.tun, "gue:6080:-c", 1, 1, 0),
        ("192.168.66.112:80", Forwarding.tun, "gre:-c", 1, 0, 2),
        ("192.168.66.112:80", Forwarding.route, None, 3, 0, 0),
    ]
    tun = load_lab(LABS / "tun" / "lab.yaml")
    assert [ipvs.tunnel_info(s) for s in tun.services] == ["ipip", "ipip", "gue:6080:-c", "gre:-c", "ipip"]
    assert ipvs.tunnel_info(load_lab(LABS / "dr" / "lab.yaml").services[0]) is None


# The listings behind `labkit show`, as ipvsadm 1.31 prints them (print_service_entry, print_conn
# and list_daemon's formats): a NAT service and a firewall-mark service.
FLAGS_LISTING = """\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  192.168.55.100:80 wrr persistent 300
  -> 192.168.66.111:80            Masq    2      1          0         
FWM  262 rr
  -> 10.0.1.31:0                  Masq    1      0          0         
UDP  192.168.55.100:53 sh (sh-fallback,sh-port) persistent 60 mask 255.255.255.0 ops
  -> 192.168.66.112:53            Route   1      0          0         
"""

FULL_STATS = """\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  192.168.55.100:80                   6       36       24     2274  1054312
  -> 192.168.66.111:80                   3       18       12     1137   527156
  -> 192.168.66.112:80                   3       18       12     1137   527156
FWM  262                                 1        5        0      300 123456789012
  -> 10.0.1.31:0                         1        5        0      300 123456789012
"""

RATES = """\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS
  -> RemoteAddress:Port
TCP  192.168.55.100:80                   2       12        8      758   351437
  -> 192.168.66.111:80                   1        6        4      379   175718
  -> 192.168.66.112:80                   1        6        4      379   175719
FWM  262                                 0        0        0        0        0
  -> 10.0.1.31:0                         0        0        0        0        0
"""

CONNECTIONS = """\
IPVS connection entries
pro expire state       source             virtual            destination
TCP 01:58  TIME_WAIT   192.168.55.200:43122 192.168.55.100:80  192.168.66.111:80
TCP 14:59  ESTABLISHED 192.168.55.200:43124 192.168.55.100:80  192.168.66.112:80
TCP 04:58  NONE        192.168.55.200:0   192.168.55.100:80  192.168.66.111:80
UDP 120:00 UDP         192.168.55.200:5353 192.168.55.100:53  192.168.66.112:53
"""


def test_parse_firewall_mark_persistent_and_one_packet_services():
    tcp, fwm, udp = ipvs.parse_list(FLAGS_LISTING)
    assert (tcp.key, tcp.scheduler, tcp.persistence, tcp.ops) == ("tcp 192.168.55.100:80", "wrr", 300, False)
    assert (fwm.key, fwm.fwmark, fwm.scheduler, fwm.persistence) == ("fwm 262", 262, "rr", None)
    assert [(d.address, d.port, d.forward, d.weight) for d in fwm.destinations] == [
        ("10.0.1.31", 0, Forwarding.masq, 1)
    ]
    # Scheduler flags come before "persistent": the timeout is still read.
    assert (udp.key, udp.scheduler, udp.persistence, udp.ops) == ("udp 192.168.55.100:53", "sh", 60, True)
    assert udp.destinations[0].forward == Forwarding.route


def test_parse_counters_per_service_and_per_real_server():
    counters = ipvs.parse_counters(FULL_STATS)
    assert counters[("tcp 192.168.55.100:80", None)] == ipvs.Stats(6, 36, 24, 2274, 1054312)
    assert counters[("tcp 192.168.55.100:80", "192.168.66.112:80")] == ipvs.Stats(3, 18, 12, 1137, 527156)
    # --exact prints numbers past 8 digits in full, one space wide of the column.
    assert counters[("fwm 262", "10.0.1.31:0")].out_bytes == 123456789012
    assert len(counters) == 5


def test_parse_stats_keeps_services_and_knows_firewall_marks():
    assert list(ipvs.parse_stats(FULL_STATS)) == ["tcp 192.168.55.100:80", "fwm 262"]


def test_rounded_numbers_are_refused():
    rounded = FULL_STATS.replace("123456789012", "  123456M")
    with pytest.raises(LabkitError, match="--exact"):
        ipvs.parse_counters(rounded)


def test_parse_rates_per_service_and_per_real_server():
    rates = ipvs.parse_rates(RATES)
    assert rates[("tcp 192.168.55.100:80", None)] == ipvs.Rates(2, 12, 8, 758, 351437)
    assert rates[("tcp 192.168.55.100:80", "192.168.66.111:80")] == ipvs.Rates(1, 6, 4, 379, 175718)
    assert rates[("fwm 262", "10.0.1.31:0")] == ipvs.Rates(0, 0, 0, 0, 0)


TABLE_LISTING = """\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  192.168.55.100:80 wrr persistent 300
  -> 192.168.66.111:80            Masq    2      1          0         
  -> 192.168.66.112:80            Masq    1      0          3         
FWM  262 rr
  -> 10.0.1.31:0                  Masq    1      0          0         
UDP  192.168.55.100:53 rr
  -> 192.168.66.112:53            Masq    1      0          0         
"""


def test_table_merges_the_three_listings():
    tcp, fwm, udp = ipvs.table(TABLE_LISTING, FULL_STATS, RATES)
    assert tcp.stats == ipvs.Stats(6, 36, 24, 2274, 1054312) and tcp.rates.out_bps == 351437
    assert [(d.key, d.stats.out_bytes, d.rates.out_bps) for d in tcp.destinations] == [
        ("192.168.66.111:80", 527156, 175718),
        ("192.168.66.112:80", 527156, 175719),
    ]
    assert fwm.destinations[0].stats.conns == 1
    # Added between the listings: no numbers rather than someone else's.
    assert udp.stats is None and udp.destinations[0].rates is None


def test_parse_connections():
    conns = ipvs.parse_connections(CONNECTIONS)
    assert conns[0] == ipvs.Connection(
        "TCP", 118, "TIME_WAIT", "192.168.55.200:43122", "192.168.55.100:80", "192.168.66.111:80"
    )
    assert [(c.state, c.expire) for c in conns] == [
        ("TIME_WAIT", 118),
        ("ESTABLISHED", 899),
        ("NONE", 298),
        ("UDP", 7200),
    ]
    assert conns[2].source == "192.168.55.200:0"  # a persistence template


def test_connections_merges_two_listings_so_one_skipped_entry_is_still_seen():
    """A listing of /proc/net/ip_vs_conn can skip an entry while others expire: the template is
    missing from the first of the two listings, and still counts; the others appear once."""
    skipped = "".join(line + "\n" for line in CONNECTIONS.splitlines() if " NONE " not in line)

    class Director:
        def check_output(self, command):
            assert command.count("ipvsadm -L -n -c") == 2
            return skipped + CONNECTIONS

    conns = table.connections(Director())
    assert [c.state for c in conns] == ["TIME_WAIT", "ESTABLISHED", "UDP", "NONE"]
    assert any(c.source == "192.168.55.200:0" for c in conns)


def test_parse_sync_daemons():
    text = (
        "master sync daemon (mcast=int, syncid=1, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n"
        "backup sync daemon (mcast=int, syncid=2)\n"
    )
    master, backup = ipvs.parse_daemons(text)
    assert (master.role, master.interface, master.syncid) == ("master", "int", 1)
    assert master.options == {"maxlen": "1472", "group": "224.0.0.81", "port": "8848", "ttl": "1"}
    assert (backup.role, backup.syncid, backup.options) == ("backup", 2, {})
    assert ipvs.parse_daemons("") == []


def test_fwmark_rules_and_expected_listing():
    lab = load_lab(LABS / "fwmark" / "lab.yaml")
    assert ipvs.rules(lab) == (
        "-A -f 1 -s rr\n"
        "-a -f 1 -r 192.168.66.111:80 -m -w 1\n"
        "-a -f 1 -r 192.168.66.112:80 -m -w 1\n"
        "-A -t [fd00:55::100]:80 -s rr\n"
        "-a -t [fd00:55::100]:80 -r [fd00:66::111]:80 -m -w 1\n"
        "-a -t [fd00:55::100]:80 -r [fd00:66::112]:80 -m -w 1\n"
    )
    listed = ipvs.parse_list(
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        "FWM  1 rr\n"
        "  -> 192.168.66.111:80            Masq    1      0          0\n"
        "  -> 192.168.66.112:80            Masq    1      0          0\n"
        "TCP  [fd00:55::100]:80 rr\n"
        "  -> [fd00:66::111]:80            Masq    1      0          0\n"
        "  -> [fd00:66::112]:80            Masq    1      0          0\n"
    )
    assert listed == [ipvs.expected(svc) for svc in lab.services]
    assert [d.key for d in listed[1].destinations] == ["[fd00:66::111]:80", "[fd00:66::112]:80"]
