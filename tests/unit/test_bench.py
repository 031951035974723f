"""labkit bench: the ab command, its output read, and the split from IPVS counters."""

from pathlib import Path

import pytest

from labkit.errors import LabkitError
from labkit.labfile import LABS, load_lab
from labkit.operate.bench import command, parse_ab, split

AB = (Path(__file__).parent / "samples" / "ab.txt").read_text()


def test_command_asks_the_vip_with_a_connection_per_request():
    svc = load_lab(LABS / "nat" / "lab.yaml").services[1]
    words = command(svc, 500, 4)
    assert words[:5] == ["ab", "-n", "500", "-c", "4"]
    assert "-k" not in words and words[-1] == "http://192.168.55.100:8080/"


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
