"""The verify suite's word on a kernel that lacks a tunnel type: it names the type and the kernel."""

import pytest

from labkit.labfile import LABS, Tunnel, load_lab
from labkit.verify.checks.test_tunnels import missing_support, wire_filter


@pytest.mark.parametrize(
    "kind, release, said",
    [
        (Tunnel.gue, "4.19.0-27-amd64", "Kernel 4.19.0-27-amd64 predates IPVS gue tunnels (Linux 5.2+)"),
        (Tunnel.gre, "5.2.21", "Kernel 5.2.21 predates IPVS gre tunnels (Linux 5.3+)"),
        (Tunnel.gre, "5.3.0", ""),
        (Tunnel.gue, "6.1.0-50-amd64", ""),
        (Tunnel.ipip, "3.10.0-862.el7.x86_64", ""),
    ],
)
def test_a_kernel_too_old_for_a_tunnel_is_named(kind, release, said):
    assert (said in missing_support(kind, release)) if said else missing_support(kind, release) == ""


def test_the_capture_takes_every_tunnel_and_nothing_else():
    assert wire_filter(load_lab(LABS / "tun" / "lab.yaml")) == "ip proto 4 or ip proto 47 or udp dst port 6080"
