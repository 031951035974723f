"""labkit trace: tcpdump lines read, and the hops put in path order with what changed."""

from labkit.labfile import LABS, load_lab
from labkit.operate.trace import capture_command, capture_points, describe, hops, parse

PORT = 45678
SYN = "Flags [S], seq 2337919013, win 64240, options [mss 1460,sackOK,TS val 1 ecr 0,nop,wscale 6], length 0"
SYNACK = "Flags [S.], seq 1247995967, ack 2337919014, win 65160, options [mss 1460], length 0"
ACK = "Flags [.], ack 1, win 1004, length 0"
CL0, LB0_EXT, LB0_INT, RS0_INT = "52:54:00:4c:01:05", "52:54:00:4c:01:01", "52:54:00:4c:02:01", "52:54:00:4c:02:03"


def line(src_mac, dst_mac, src, dst, flags, outer=""):
    return (f"{src_mac} > {dst_mac}, ethertype IPv4 (0x0800), length 74: {outer}"
            f"{src} > {dst}: {flags}")


NAT_LB0 = "\n".join([
    "== ext",
    line(CL0, LB0_EXT, f"192.168.55.200.{PORT}", "192.168.55.100.80", SYN),
    line(LB0_EXT, CL0, "192.168.55.100.80", f"192.168.55.200.{PORT}", SYNACK),
    line(CL0, LB0_EXT, f"192.168.55.200.{PORT}", "192.168.55.100.80", ACK),
    "== int",
    line(LB0_INT, RS0_INT, f"192.168.55.200.{PORT}", "192.168.66.111.80", SYN),
    line(RS0_INT, LB0_INT, "192.168.66.111.80", f"192.168.55.200.{PORT}", SYNACK),
])
NAT_RS0 = "\n".join([
    "== int",
    line(LB0_INT, RS0_INT, f"192.168.55.200.{PORT}", "192.168.66.111.80", SYN),
    line(RS0_INT, LB0_INT, "192.168.66.111.80", f"192.168.55.200.{PORT}", SYNACK),
])


def test_capture_points_and_command():
    tun = load_lab(LABS / "tun" / "lab.yaml")
    assert capture_points(tun, tun.services[0]) == {
        "lb0": ["ext", "int"], "rs0": ["ext", "int", "tunl0"], "rs1": ["ext", "int", "tunl0"]}
    words = capture_command(["ext", "tunl0"], PORT)
    assert words[:4] == ["sudo", "-n", "sh", "-c"]
    assert f"tcpdump -i ext -e -n -l --immediate-mode 'tcp port {PORT} or ip proto 4'" in words[4]


def test_parse_reads_macs_addresses_and_flags():
    packets = parse(NAT_LB0)
    assert len(packets["ext"]) == 3 and len(packets["int"]) == 2
    first = packets["ext"][0]
    assert (first.src_mac, first.dst_mac, first.src, first.dst, first.flags, first.outer) == (
        CL0, LB0_EXT, f"192.168.55.200.{PORT}", "192.168.55.100.80", "S", None)


def test_parse_ipip_and_tunl0():
    packets = parse("== int\n" + line("52:54:00:4c:02:01", "52:54:00:4c:02:03", f"192.168.55.200.{PORT}",
                                      "192.168.55.100.80", SYN, outer="192.168.66.11 > 192.168.66.111: ")
                    + f"\n== tunl0\nIP 192.168.55.200.{PORT} > 192.168.55.100.80: {SYN}")
    assert packets["int"][0].outer == ("192.168.66.11", "192.168.66.111")
    assert packets["int"][0].dst == "192.168.55.100.80"
    assert packets["tunl0"][0].outer is None and packets["tunl0"][0].src_mac == ""


def test_nat_hops():
    nat = load_lab(LABS / "nat" / "lab.yaml")
    request, reply = hops(nat, nat.services[0], {"lb0": parse(NAT_LB0), "rs0": parse(NAT_RS0)}, PORT)
    assert [(h.node, h.interface) for h in request] == [("lb0", "ext"), ("lb0", "int"), ("rs0", "int")]
    assert request[1].note == "destination rewritten 192.168.55.100.80 -> 192.168.66.111.80; the client's port kept"
    assert request[2].note == "arrives as sent"
    assert [(h.node, h.interface) for h in reply] == [("rs0", "int"), ("lb0", "int"), ("lb0", "ext")]
    assert reply[-1].note.startswith("source rewritten 192.168.66.111.80 -> 192.168.55.100.80")
    assert describe(nat, request[0].packet) == (
        f"cl0:ext > lb0:ext  192.168.55.200.{PORT} > 192.168.55.100.80 [S]")


TUN_LB0 = "\n".join([
    "== ext",
    line(CL0, LB0_EXT, f"192.168.55.200.{PORT}", "192.168.55.100.80", SYN),
    "== int",
    line(LB0_INT, RS0_INT, f"192.168.55.200.{PORT}", "192.168.55.100.80", SYN,
         outer="192.168.66.11 > 192.168.66.111: "),
])
TUN_RS0 = "\n".join([
    "== ext",
    line("52:54:00:4c:01:03", CL0, "192.168.55.100.80", f"192.168.55.200.{PORT}", SYNACK),
    "== int",
    line(LB0_INT, RS0_INT, f"192.168.55.200.{PORT}", "192.168.55.100.80", SYN,
         outer="192.168.66.11 > 192.168.66.111: "),
    "== tunl0",  # tcpdump on tunl0 (raw IP) prints "ip: " where Ethernet would be
    f"08:34:08.091164 ip: 192.168.55.200.{PORT} > 192.168.55.100.80: {SYN}",
])


def test_tun_hops():
    tun = load_lab(LABS / "tun" / "lab.yaml")
    request, reply = hops(tun, tun.services[0], {"lb0": parse(TUN_LB0), "rs0": parse(TUN_RS0)}, PORT)
    assert [(h.node, h.interface) for h in request] == [("lb0", "ext"), ("lb0", "int"), ("rs0", "int"), ("rs0", "tunl0")]
    assert request[1].note.startswith("wrapped in IP-in-IP 192.168.66.11 > 192.168.66.111")
    assert request[3].note.startswith("unwrapped on tunl0")
    assert [(h.node, h.interface) for h in reply] == [("rs0", "ext")]
    assert "bypassing the director" in reply[0].note


def udp(src_mac, dst_mac, src, dst):
    return f"{src_mac} > {dst_mac}, ethertype IPv4 (0x0800), length 48: {src} > {dst}: UDP, length 6"


NAT_UDP_LB0 = "\n".join([
    "== ext",
    udp(CL0, LB0_EXT, f"192.168.55.200.{PORT}", "192.168.55.100.9000"),
    udp(LB0_EXT, CL0, "192.168.55.100.9000", f"192.168.55.200.{PORT}"),
    "== int",
    udp(LB0_INT, RS0_INT, f"192.168.55.200.{PORT}", "192.168.66.111.9000"),
    udp(RS0_INT, LB0_INT, "192.168.66.111.9000", f"192.168.55.200.{PORT}"),
])
NAT_UDP_RS0 = "\n".join([
    "== int",
    udp(LB0_INT, RS0_INT, f"192.168.55.200.{PORT}", "192.168.66.111.9000"),
    udp(RS0_INT, LB0_INT, "192.168.66.111.9000", f"192.168.55.200.{PORT}"),
])


def test_udp_capture_and_hops():
    nat = load_lab(LABS / "nat" / "lab.yaml")
    svc = next(s for s in nat.services if s.key == "udp 192.168.55.100:9000")
    assert f"'udp port {PORT} or ip proto 4'" in capture_command(["ext"], PORT, svc.protocol)[4]
    first = parse(NAT_UDP_LB0)["ext"][0]
    assert (first.src, first.dst, first.flags) == (f"192.168.55.200.{PORT}", "192.168.55.100.9000", "UDP")
    request, reply = hops(nat, svc, {"lb0": parse(NAT_UDP_LB0), "rs0": parse(NAT_UDP_RS0)}, PORT)
    # the datagram and its answer told apart by direction: from the client's port, then to it
    assert [(h.node, h.interface) for h in request] == [("lb0", "ext"), ("lb0", "int"), ("rs0", "int")]
    assert request[1].note == "destination rewritten 192.168.55.100.9000 -> 192.168.66.111.9000; the client's port kept"
    assert [(h.node, h.interface) for h in reply] == [("rs0", "int"), ("lb0", "int"), ("lb0", "ext")]
    assert reply[-1].note.startswith("source rewritten 192.168.66.111.9000 -> 192.168.55.100.9000")
    assert describe(nat, request[0].packet) == f"cl0:ext > lb0:ext  192.168.55.200.{PORT} > 192.168.55.100.9000 [UDP]"


def test_udp_one_packet_reply_is_not_rewritten_in_nat():
    nat = load_lab(LABS / "nat" / "lab.yaml")
    svc = next(s for s in nat.services if s.key == "udp 192.168.55.100:9001")
    rs0 = NAT_UDP_RS0.replace(".9000", ".9001")
    lb0 = "\n".join([
        "== ext",
        udp(CL0, LB0_EXT, f"192.168.55.200.{PORT}", "192.168.55.100.9001"),
        udp(LB0_EXT, CL0, "192.168.66.111.9001", f"192.168.55.200.{PORT}"),  # as the real server sent it
        "== int",
        udp(LB0_INT, RS0_INT, f"192.168.55.200.{PORT}", "192.168.66.111.9001"),
        udp(RS0_INT, LB0_INT, "192.168.66.111.9001", f"192.168.55.200.{PORT}"),
    ])
    _, reply = hops(nat, svc, {"lb0": parse(lb0), "rs0": parse(rs0)}, PORT)
    assert [(h.node, h.interface) for h in reply] == [("rs0", "int"), ("lb0", "int"), ("lb0", "ext")]
    assert reply[1].note == "arrives as sent"
    assert reply[2].note.startswith("not rewritten: one-packet scheduling dropped the director's entry")


def test_the_capture_window_opens_once_every_tcpdump_listens(tmp_path, monkeypatch):
    """Run the capture script here with a tcpdump that is slow to listen: what it captures
    after saying it listens is printed, and the script ends SECONDS after that."""
    import os
    import subprocess
    import time
    from labkit.operate import trace
    monkeypatch.setattr(trace, "SECONDS", 1)
    fake = tmp_path / "tcpdump"
    fake.write_text("#!/bin/sh\nsleep 1.5; echo 'listening on x' >&2\n"
                    "trap 'echo captured-after-listening; exit 0' TERM\nwhile :; do sleep 0.1; done\n")
    fake.chmod(0o755)
    script = capture_command(["ext", "int"], PORT)[4].replace("/tmp/labkit-trace.", f"{tmp_path}/cap.")
    start = time.monotonic()
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=20,
                         env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}).stdout
    took = time.monotonic() - start
    assert out.splitlines() == ["labkit-capturing", "== ext", "captured-after-listening",
                                "== int", "captured-after-listening"]
    assert 2.4 < took < 6, took  # 1.5 s to listen, then the 1 s window


def line6(src_mac, dst_mac, src, dst, flags):
    return f"{src_mac} > {dst_mac}, ethertype IPv6 (0x86dd), length 94: {src} > {dst}: {flags}"


def test_ipv6_nat_hops():
    """tcpdump writes IPv6 endpoints as fd00:55::200.53118 (as seen on the fwmark lab)."""
    fwmark = load_lab(LABS / "fwmark" / "lab.yaml")
    lb0 = "\n".join([
        "== ext",
        line6(CL0, LB0_EXT, f"fd00:55::200.{PORT}", "fd00:55::100.80", SYN),
        line6(LB0_EXT, CL0, "fd00:55::100.80", f"fd00:55::200.{PORT}", SYNACK),
        "== int",
        line6(LB0_INT, RS0_INT, f"fd00:55::200.{PORT}", "fd00:66::111.80", SYN),
        line6(RS0_INT, LB0_INT, "fd00:66::111.80", f"fd00:55::200.{PORT}", SYNACK),
    ])
    rs0 = "\n".join([
        "== int",
        line6(LB0_INT, RS0_INT, f"fd00:55::200.{PORT}", "fd00:66::111.80", SYN),
        line6(RS0_INT, LB0_INT, "fd00:66::111.80", f"fd00:55::200.{PORT}", SYNACK),
    ])
    request, reply = hops(fwmark, fwmark.services[1], {"lb0": parse(lb0), "rs0": parse(rs0)}, PORT)
    assert [(h.node, h.interface) for h in request] == [("lb0", "ext"), ("lb0", "int"), ("rs0", "int")]
    assert request[1].note == "destination rewritten fd00:55::100.80 -> fd00:66::111.80; the client's port kept"
    assert reply[-1].note.startswith("source rewritten fd00:66::111.80 -> fd00:55::100.80")
    assert describe(fwmark, request[0].packet) == f"cl0:ext > lb0:ext  fd00:55::200.{PORT} > fd00:55::100.80 [S]"
