"""Which checks run for a lab: the verify suite's parameters come from the lab's own parts."""

import yaml

from labkit.labfile import LABS, load_lab, parse_lab
from labkit.verify.checks.plugin import parameters


def test_udp_checks_run_where_the_lab_has_udp_services():
    nat = parameters(load_lab(LABS / "nat" / "lab.yaml"))
    assert [s.key for s in nat["udp_service"]] == ["udp 192.168.55.100:9000", "udp 192.168.55.100:9001"]
    assert [s.key for s in nat["http_service"]] == ["tcp 192.168.55.100:80", "tcp 192.168.55.100:8080"]
    assert nat["udp_real_server"] == ["rs0", "rs1"] and nat["udp_checker"] == ["lb0"]
    tun = parameters(load_lab(LABS / "tun" / "lab.yaml"))
    assert tun["udp_service"] == [] and tun["udp_real_server"] == [] and tun["udp_checker"] == []
    # unchecked UDP services: nothing for the UDP check's scenario to take out
    data = yaml.safe_load((LABS / "nat" / "lab.yaml").read_text())
    for svc in data["services"][2:]:
        svc["check"] = "none"
    assert parameters(parse_lab(yaml.safe_dump(data), "nat"))["udp_checker"] == []
