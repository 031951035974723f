"""labkit bench: the ab command, its output read, and the split from IPVS counters."""

from pathlib import Path

import pytest

from labkit.errors import LabkitError
from labkit.labfile import LABS, load_lab
from labkit.operate.bench import command, mesh_target, parse_ab, split, vip_target

AB = (Path(__file__).parent / "samples" / "ab.txt").read_text()


def test_command_asks_the_vip_with_a_connection_per_request():
    lab = load_lab(LABS / "nat" / "lab.yaml")
    target = vip_target(lab, lab.services[1], "lb0")
    words = command(target.url, 500, 4)
    assert words[:5] == ["ab", "-n", "500", "-c", "4"]
    assert "-k" not in words and words[-1] == "http://192.168.55.100:8080/"
    assert (target.key, target.names) == (
        "tcp 192.168.55.100:8080",
        {"192.168.66.111:80": "rs0", "192.168.66.112:80": "rs1"},
    )


def test_a_mesh_is_loaded_on_a_node_s_published_port_and_split_in_its_ingress_namespace():
    lab = load_lab(LABS / "mesh" / "lab.yaml")
    target = mesh_target(lab, "n1")
    assert (target.url, target.director, target.key) == ("http://192.168.99.101:8080/", "n1", "fwm 256")
    assert target.stats[:6] == ["sudo", "-n", "ip", "netns", "exec", "ingress_sbox"]
    assert target.names == {f"10.255.0.{5 + i}:80": f"web{i}" for i in range(4)}
    listed = "\n".join(
        [
            "IP Virtual Server version 1.2.1 (size=4096)",
            "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes",
            "  -> RemoteAddress:Port",
            "FWM  256                                 8       48       32     3200     6400",
            "  -> 10.255.0.5:80                       2       12        8      800     1600",
            "  -> 10.255.0.6:80                       2       12        8      800     1600",
            "  -> 10.255.0.7:80                       2       12        8      800     1600",
            "  -> 10.255.0.8:80                       2       12        8      800     1600",
        ]
    )
    assert split(target.key, "", listed, target.names) == {"web0": 2, "web1": 2, "web2": 2, "web3": 2}


def test_ab_output():
    result = parse_ab(AB)
    assert (result.complete, result.failed, result.per_second, result.mean_ms) == (200, 0, 83.15, 48.107)
    assert result.percentiles[50] == 41 and result.percentiles[99] == 115 and result.percentiles[100] == 133


def test_truncated_ab_output_is_an_error():
    with pytest.raises(LabkitError, match="Requests per second"):
        parse_ab(AB.split("Requests per second")[0])


STATS = """IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  192.168.55.100:80                 {total}      100      100     6000     9000
  -> 192.168.66.111:80                 {a}       50       50     3000     4500
  -> 192.168.66.112:80                 {b}       50       50     3000     4500
"""


def test_split_counts_new_connections_per_real_server():
    names = {"192.168.66.111:80": "rs0", "192.168.66.112:80": "rs1"}
    before = STATS.format(total=10, a=5, b=5)
    after = STATS.format(total=410, a=205, b=205)
    assert split("tcp 192.168.55.100:80", before, after, names) == {"rs0": 200, "rs1": 200}
