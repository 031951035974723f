"""labkit trace: tcpdump lines read, and the hops put in path order with what changed."""

import subprocess
import time

from labkit.labfile import LABS, load_lab
from labkit.operate.trace import (
    capture_filter,
    capture_points,
    describe,
    free_port,
    hops,
    parse,
    read_capture,
    start_capture,
)

PORT = 45678
SYN = "Flags [S], seq 2337919013, win 64240, options [mss 1460,sackOK,TS val 1 ecr 0,nop,wscale 6], length 0"
SYNACK = "Flags [S.], seq 1247995967, ack 2337919014, win 65160, options [mss 1460], length 0"
ACK = "Flags [.], ack 1, win 1004, length 0"
CL0, LB0_EXT, LB0_INT, RS0_INT = "52:54:00:4c:01:05", "52:54:00:4c:01:01", "52:54:00:4c:02:01", "52:54:00:4c:02:03"


def line(src_mac, dst_mac, src, dst, flags, outer=""):
    return f"{src_mac} > {dst_mac}, ethertype IPv4 (0x0800), length 74: {outer}{src} > {dst}: {flags}"


NAT_LB0 = "\n".join(
    [
        "== ext",
        line(CL0, LB0_EXT, f"192.168.55.200.{PORT}", "192.168.55.100.80", SYN),
        line(LB0_EXT, CL0, "192.168.55.100.80", f"192.168.55.200.{PORT}", SYNACK),
        line(CL0, LB0_EXT, f"192.168.55.200.{PORT}", "192.168.55.100.80", ACK),
        "== int",
        line(LB0_INT, RS0_INT, f"192.168.55.200.{PORT}", "192.168.66.111.80", SYN),
        line(RS0_INT, LB0_INT, "192.168.66.111.80", f"192.168.55.200.{PORT}", SYNACK),
    ]
)
NAT_RS0 = "\n".join(
    [
        "== int",
        line(LB0_INT, RS0_INT, f"192.168.55.200.{PORT}", "192.168.66.111.80", SYN),
        line(RS0_INT, LB0_INT, "192.168.66.111.80", f"192.168.55.200.{PORT}", SYNACK),
    ]
)


def test_capture_points_and_command():
    tun = load_lab(LABS / "tun" / "lab.yaml")
    assert capture_points(tun, tun.services[0]) == {
        "lb0": ["ext", "int"],
        "rs0": ["ext", "int", "tunl0"],
        "rs1": ["ext", "int", "tunl0"],
    }
    assert capture_filter(PORT) == f"tcp port {PORT} or ip proto 4 or ip proto 47"
    assert capture_filter(PORT, gue_port=6080) == f"tcp port {PORT} or ip proto 4 or ip proto 47 or udp dst port 6080"
    script = start_capture(["ext", "tunl0"], capture_filter(PORT), "trace-1")
    assert f"tcpdump -i ext -t -e -n -l --immediate-mode 'tcp port {PORT} or ip proto 4 or ip proto 47'" in script
    gre = load_lab(LABS / "tun" / "lab.yaml").services[3]
    assert capture_points(tun, gre)["rs1"] == ["ext", "int", "gre0"]
    assert "tcpdump -i int -t -e -n -l -x --immediate-mode" in start_capture(["int"], "udp", "t", hex_too=True)


def test_captures_listen_until_stopped(tmp_path):
    """The capture scripts, run with a tcpdump that only says it listens: starting returns once
    every tcpdump listens and leaves them running; reading prints each device's capture and ends
    them."""
    (tmp_path / "tcpdump").write_text("#!/bin/sh\necho 'listening on x' >&2\necho packet\nexec sleep 30\n")
    (tmp_path / "tcpdump").chmod(0o755)
    tag = f"unit-{PORT}"
    path = f"PATH={tmp_path}:$PATH"
    subprocess.run(["sh", "-c", f"{path}; {start_capture(['ext', 'int'], 'tcp', tag)}"], check=True, timeout=10)
    pids = open(f"/tmp/labkit-{tag}.pids").read().split()
    assert len(pids) == 2 and subprocess.run(["kill", "-0", *pids]).returncode == 0  # still listening
    out = subprocess.run(
        ["sh", "-c", read_capture(["ext", "int"], tag)], capture_output=True, text=True, timeout=10
    ).stdout
    assert out.splitlines() == ["== ext", "packet", "== int", "packet"]
    deadline = time.monotonic() + 5
    while subprocess.run(["kill", "-0", *pids], capture_output=True).returncode == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert subprocess.run(["kill", "-0", *pids], capture_output=True).returncode != 0  # ended


def test_a_capture_that_never_listens_fails_with_its_errors(tmp_path):
    (tmp_path / "tcpdump").write_text("#!/bin/sh\necho 'ext: No such device exists' >&2\n")
    (tmp_path / "tcpdump").chmod(0o755)
    (tmp_path / "seq").write_text("#!/bin/sh\necho 1\n")  # one try, not 30 s of them
    (tmp_path / "seq").chmod(0o755)
    run = subprocess.run(
        ["sh", "-c", f"PATH={tmp_path}:$PATH; {start_capture(['ext'], 'tcp', f'unit-{PORT}')}"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert run.returncode != 0 and "No such device" in run.stderr


def test_parse_reads_macs_addresses_and_flags():
    packets = parse(NAT_LB0)
    assert len(packets["ext"]) == 3 and len(packets["int"]) == 2
    first = packets["ext"][0]
    assert (first.src_mac, first.dst_mac, first.src, first.dst, first.flags, first.outer) == (
        CL0,
        LB0_EXT,
        f"192.168.55.200.{PORT}",
        "192.168.55.100.80",
        "S",
        None,
    )


def test_parse_ipip_and_tunl0():
    packets = parse(
        "== int\n"
        + line(
            "52:54:00:4c:02:01",
            "52:54:00:4c:02:03",
            f"192.168.55.200.{PORT}",
            "192.168.55.100.80",
            SYN,
            outer="192.168.66.11 > 192.168.66.111: ",
        )
        + f"\n== tunl0\nIP 192.168.55.200.{PORT} > 192.168.55.100.80: {SYN}"
    )
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
    assert describe(nat, request[0].packet) == (f"cl0:ext > lb0:ext  192.168.55.200.{PORT} > 192.168.55.100.80 [S]")


TUN_LB0 = "\n".join(
    [
        "== ext",
        line(CL0, LB0_EXT, f"192.168.55.200.{PORT}", "192.168.55.100.80", SYN),
        "== int",
        line(
            LB0_INT,
            RS0_INT,
            f"192.168.55.200.{PORT}",
            "192.168.55.100.80",
            SYN,
            outer="192.168.66.11 > 192.168.66.111: ",
        ),
    ]
)
TUN_RS0 = "\n".join(
    [
        "== ext",
        line("52:54:00:4c:01:03", CL0, "192.168.55.100.80", f"192.168.55.200.{PORT}", SYNACK),
        "== int",
        line(
            LB0_INT,
            RS0_INT,
            f"192.168.55.200.{PORT}",
            "192.168.55.100.80",
            SYN,
            outer="192.168.66.11 > 192.168.66.111: ",
        ),
        "== tunl0",  # tcpdump on tunl0 (raw IP) prints "ip: " where Ethernet would be
        f"08:34:08.091164 ip: 192.168.55.200.{PORT} > 192.168.55.100.80: {SYN}",
    ]
)


def test_tun_hops():
    tun = load_lab(LABS / "tun" / "lab.yaml")
    request, reply = hops(tun, tun.services[0], {"lb0": parse(TUN_LB0), "rs0": parse(TUN_RS0)}, PORT)
    assert [(h.node, h.interface) for h in request] == [
        ("lb0", "ext"),
        ("lb0", "int"),
        ("rs0", "int"),
        ("rs0", "tunl0"),
    ]
    assert request[1].note.startswith("wrapped in IP-in-IP 192.168.66.11 > 192.168.66.111")
    assert request[3].note.startswith("unwrapped on tunl0")
    assert [(h.node, h.interface) for h in reply] == [("rs0", "ext")]
    assert "bypassing the director" in reply[0].note


def test_a_health_check_from_the_clients_port_number_is_not_the_reply():
    # Seen in a run of the dr lab: lb0's health check of rs0 over IPv6 happened to leave from
    # the client's port number. Its SYN-ACK is not the reply to the client.
    dr = load_lab(LABS / "dr" / "lab.yaml")
    check = f"RS0_INT > LB0_INT, ethertype IPv6 (0x86dd), length 94: fd00:66::111.80 > fd00:66::11.{PORT}: {SYNACK}"
    lb0 = "\n".join(
        [
            "== ext",
            line(CL0, LB0_EXT, f"192.168.55.200.{PORT}", "192.168.55.100.80", SYN),
            "== int",
            line(LB0_INT, RS0_INT, f"192.168.55.200.{PORT}", "192.168.55.100.80", SYN),
            check.replace("RS0_INT", RS0_INT).replace("LB0_INT", LB0_INT),
        ]
    )
    rs0 = "\n".join(
        [
            "== ext",
            line("52:54:00:4c:01:03", CL0, "192.168.55.100.80", f"192.168.55.200.{PORT}", SYNACK),
            "== int",
            line(LB0_INT, RS0_INT, f"192.168.55.200.{PORT}", "192.168.55.100.80", SYN),
            check.replace("RS0_INT", RS0_INT).replace("LB0_INT", LB0_INT),
        ]
    )
    request, reply = hops(dr, dr.services[0], {"lb0": parse(lb0), "rs0": parse(rs0)}, PORT)
    assert [(h.node, h.interface) for h in request] == [("lb0", "ext"), ("lb0", "int"), ("rs0", "int")]
    assert [(h.node, h.interface) for h in reply] == [("rs0", "ext")]
    assert "bypassing the director" in reply[0].note


def udp(src_mac, dst_mac, src, dst):
    return f"{src_mac} > {dst_mac}, ethertype IPv4 (0x0800), length 48: {src} > {dst}: UDP, length 6"


NAT_UDP_LB0 = "\n".join(
    [
        "== ext",
        udp(CL0, LB0_EXT, f"192.168.55.200.{PORT}", "192.168.55.100.9000"),
        udp(LB0_EXT, CL0, "192.168.55.100.9000", f"192.168.55.200.{PORT}"),
        "== int",
        udp(LB0_INT, RS0_INT, f"192.168.55.200.{PORT}", "192.168.66.111.9000"),
        udp(RS0_INT, LB0_INT, "192.168.66.111.9000", f"192.168.55.200.{PORT}"),
    ]
)
NAT_UDP_RS0 = "\n".join(
    [
        "== int",
        udp(LB0_INT, RS0_INT, f"192.168.55.200.{PORT}", "192.168.66.111.9000"),
        udp(RS0_INT, LB0_INT, "192.168.66.111.9000", f"192.168.55.200.{PORT}"),
    ]
)


def test_udp_capture_and_hops():
    nat = load_lab(LABS / "nat" / "lab.yaml")
    svc = next(s for s in nat.services if s.key == "udp 192.168.55.100:9000")
    assert capture_filter(PORT, svc.protocol) == f"udp port {PORT} or ip proto 4 or ip proto 47"
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
    lb0 = "\n".join(
        [
            "== ext",
            udp(CL0, LB0_EXT, f"192.168.55.200.{PORT}", "192.168.55.100.9001"),
            udp(LB0_EXT, CL0, "192.168.66.111.9001", f"192.168.55.200.{PORT}"),  # as the real server sent it
            "== int",
            udp(LB0_INT, RS0_INT, f"192.168.55.200.{PORT}", "192.168.66.111.9001"),
            udp(RS0_INT, LB0_INT, "192.168.66.111.9001", f"192.168.55.200.{PORT}"),
        ]
    )
    _, reply = hops(nat, svc, {"lb0": parse(lb0), "rs0": parse(rs0)}, PORT)
    assert [(h.node, h.interface) for h in reply] == [("rs0", "int"), ("lb0", "int"), ("lb0", "ext")]
    assert reply[1].note == "arrives as sent"
    assert reply[2].note.startswith("not rewritten: one-packet scheduling dropped the director's entry")


def line6(src_mac, dst_mac, src, dst, flags):
    return f"{src_mac} > {dst_mac}, ethertype IPv6 (0x86dd), length 94: {src} > {dst}: {flags}"


def test_ipv6_nat_hops():
    """tcpdump writes IPv6 endpoints as fd00:55::200.53118 (as seen on the fwmark lab)."""
    fwmark = load_lab(LABS / "fwmark" / "lab.yaml")
    lb0 = "\n".join(
        [
            "== ext",
            line6(CL0, LB0_EXT, f"fd00:55::200.{PORT}", "fd00:55::100.80", SYN),
            line6(LB0_EXT, CL0, "fd00:55::100.80", f"fd00:55::200.{PORT}", SYNACK),
            "== int",
            line6(LB0_INT, RS0_INT, f"fd00:55::200.{PORT}", "fd00:66::111.80", SYN),
            line6(RS0_INT, LB0_INT, "fd00:66::111.80", f"fd00:55::200.{PORT}", SYNACK),
        ]
    )
    rs0 = "\n".join(
        [
            "== int",
            line6(LB0_INT, RS0_INT, f"fd00:55::200.{PORT}", "fd00:66::111.80", SYN),
            line6(RS0_INT, LB0_INT, "fd00:66::111.80", f"fd00:55::200.{PORT}", SYNACK),
        ]
    )
    request, reply = hops(fwmark, fwmark.services[1], {"lb0": parse(lb0), "rs0": parse(rs0)}, PORT)
    assert [(h.node, h.interface) for h in request] == [("lb0", "ext"), ("lb0", "int"), ("rs0", "int")]
    assert request[1].note == "destination rewritten fd00:55::100.80 -> fd00:66::111.80; the client's port kept"
    assert reply[-1].note.startswith("source rewritten fd00:66::111.80 -> fd00:55::100.80")
    assert describe(fwmark, request[0].packet) == f"cl0:ext > lb0:ext  fd00:55::200.{PORT} > fd00:55::100.80 [S]"


def hexdump(data: bytes) -> list[str]:
    """tcpdump -x's lines: 16 bytes a line, in groups of two."""
    lines = []
    for at in range(0, len(data), 16):
        chunk = data[at : at + 16].hex()
        lines.append(f"\t0x{at:04x}:  " + " ".join(chunk[i : i + 4] for i in range(0, len(chunk), 4)))
    return lines


def ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    return (
        bytes([0x45, 0, 0, 20 + len(payload), 0, 0, 0x40, 0, 64, proto, 0, 0])
        + bytes(int(b) for b in src.split("."))
        + bytes(int(b) for b in dst.split("."))
        + payload
    )


def gue_packet(flags: int) -> bytes:
    tcp = PORT.to_bytes(2, "big") + (80).to_bytes(2, "big") + bytes(9) + bytes([flags]) + bytes(6)
    inner = ipv4("192.168.55.200", "192.168.55.100", 6, tcp)
    gue = bytes([0, 4, 0, 0])  # version 0, no extra header words, carrying protocol 4 (IP-in-IP)
    udp = (40123).to_bytes(2, "big") + (6080).to_bytes(2, "big") + (8 + len(gue + inner)).to_bytes(2, "big") + bytes(2)
    return ipv4("192.168.66.11", "192.168.66.111", 17, udp + gue + inner)


GUE_LB0 = "\n".join(
    [
        "== int",
        f"{LB0_INT} > {RS0_INT}, ethertype IPv4 (0x0800), length 98: 192.168.66.11.40123 > 192.168.66.111.6080: UDP, length 64",
        *hexdump(gue_packet(0x02)),
        f"{LB0_INT} > {RS0_INT}, ethertype IPv4 (0x0800), length 98: 192.168.66.11.40123 > 192.168.66.111.6080: UDP, length 64",
        *hexdump(gue_packet(0x10)),
    ]
)


def test_parse_gue_reads_the_packet_inside():
    first, second = parse(GUE_LB0)["int"]
    assert (first.src, first.dst, first.flags, first.wrap) == (
        f"192.168.55.200.{PORT}",
        "192.168.55.100.80",
        "S",
        "gue",
    )
    assert first.outer == ("192.168.66.11.40123", "192.168.66.111.6080") and first.src_mac == LB0_INT
    assert second.flags == "."


def test_parse_gre():
    (packet,) = parse(
        "== int\n"
        + line(
            LB0_INT,
            RS0_INT,
            f"192.168.55.200.{PORT}",
            "192.168.55.100.80",
            SYN,
            outer="192.168.66.11 > 192.168.66.111: GREv0, length 64: IP ",
        )
    )["int"]
    assert (packet.outer, packet.wrap, packet.dst) == (("192.168.66.11", "192.168.66.111"), "gre", "192.168.55.100.80")


def test_gue_and_gre_hops_name_the_wrapping():
    tun = load_lab(LABS / "tun" / "lab.yaml")
    gue, gre = tun.services[2], tun.services[3]
    lb0 = {
        **parse(TUN_LB0.replace("192.168.55.100", "192.168.55.102")),
        **parse(GUE_LB0.replace("192.168.55.100", "192.168.55.102")),
    }
    request, _ = hops(tun, gue, {"lb0": lb0}, PORT)
    assert request[1].note.startswith("wrapped in GUE (UDP 6080) 192.168.66.11.40123 > 192.168.66.111.6080; inside")
    assert describe(tun, request[1].packet) == (
        f"lb0:int > rs0:int  [192.168.66.11.40123 > 192.168.66.111.6080 gue] 192.168.55.200.{PORT} > 192.168.55.100.80 [S]"
    )
    rs0 = TUN_RS0.replace("== tunl0", "== gre0").replace("192.168.66.111: ", "192.168.66.111: GREv0, length 64: IP ")
    request, _ = hops(
        tun,
        gre,
        {"lb0": parse(TUN_LB0.replace("192.168.66.111: ", "192.168.66.111: GREv0, length 64: IP ")), "rs0": parse(rs0)},
        PORT,
    )
    assert [(h.node, h.interface) for h in request][-1] == ("rs0", "gre0")
    assert request[1].note.startswith("wrapped in GRE 192.168.66.11 > 192.168.66.111")
    assert request[-1].note.startswith("unwrapped on gre0")


def test_the_client_port_is_one_no_socket_holds():
    # what `ss -Htanu` printed on a client after a bench: every port but one of the range is held,
    # most in TIME_WAIT, one by an IPv6 connection; the trace must take the one left
    held = [f"tcp TIME-WAIT 0      0       192.168.55.10:{p} 192.168.55.100:80" for p in range(40000, 60000, 2)] + [
        f"tcp ESTAB     0      0      [fd00:55::10]:{p}  [fd00:55::100]:80" for p in range(40001, 60000, 2)
    ]
    free = 51235
    sockets = "\n".join(line for line in held if not line.split()[4].endswith(f":{free}"))
    sockets += "\nudp UNCONN    0      0             0.0.0.0:68            0.0.0.0:*\n"
    assert free_port(sockets) == free
    assert 40000 <= free_port("") < 60000
