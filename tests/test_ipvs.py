"""ipvsadm's formats: the rules labkit loads, and the listings it reads back."""

from labkit import ipvs
from labkit.model import load_lab
from labkit.paths import LABS

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

STATS = """\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  192.168.55.100:80                   6       36        0     2274        0
  -> 192.168.66.111:80                   3       18        0     1137        0
  -> 192.168.66.112:80                   3       18        0     1137        0
"""


def test_parse_seed_listing():
    (svc,) = ipvs.parse_list(SEED_LISTING)
    assert (svc.key, svc.scheduler, svc.persistence) == ("tcp 192.168.55.100:80", "wrr", None)
    assert [(d.address, d.port, d.forward, d.weight) for d in svc.destinations] == [
        ("192.168.66.111", 80, "Masq", 100), ("192.168.66.112", 80, "Masq", 100)]


def test_parse_persistence_counters_and_udp():
    tcp, udp = ipvs.parse_list(PERSISTENT)
    assert tcp.persistence == 300 and tcp.destinations[0].active == 1 and tcp.destinations[0].inactive == 4
    assert (udp.key, udp.scheduler, udp.destinations[0].forward) == ("udp 192.168.56.186:53", "sh", "Route")


def test_parse_stats_keeps_services_only():
    stats = ipvs.parse_stats(STATS)
    assert list(stats) == ["tcp 192.168.55.100:80"]
    assert stats["tcp 192.168.55.100:80"] == ipvs.Stats(6, 36, 0, 2274, 0)


def test_rules_in_ipvsadm_save_format():
    assert ipvs.rules(load_lab(LABS / "nat" / "lab.yaml")) == (
        "-A -t 192.168.55.100:80 -s rr\n"
        "-a -t 192.168.55.100:80 -r 192.168.66.111:80 -m -w 1\n"
        "-a -t 192.168.55.100:80 -r 192.168.66.112:80 -m -w 1\n"
        "-A -t 192.168.55.100:8080 -s wrr\n"
        "-a -t 192.168.55.100:8080 -r 192.168.66.111:80 -m -w 2\n"
        "-a -t 192.168.55.100:8080 -r 192.168.66.112:80 -m -w 1\n"
    )


def test_expected_listing_for_tun():
    lab = load_lab(LABS / "tun" / "lab.yaml")
    want = ipvs.expected(lab.services[0])
    assert want.key == "tcp 192.168.55.100:80"
    assert [(d.forward, d.weight) for d in want.destinations] == [("Tunnel", 2), ("Tunnel", 1)]


def test_tunnel_rules_name_the_tunnel_type_as_ipvsadm_save_does():
    text = ipvs.rules(load_lab(LABS / "tun" / "lab.yaml"))
    assert "-a -t 192.168.55.100:80 -r 192.168.66.111:80 -i -w 2 --tun-type ipip\n" in text
