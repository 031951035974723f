"""The topology picture: DOT text of the shipped labs compared with golden files, the packet
paths it draws, and the real `dot` turning it into an SVG and a PNG.

After an intended change to graph.py, refresh the golden files with:
    LABKIT_UPDATE_GOLDEN=1 python -m pytest tests/test_graph.py
and look at the pictures again (docs/<lab>.png).
"""

import os
import re
import shutil
import xml.etree.ElementTree as ET
from html import unescape
from pathlib import Path

import pytest

from labkit.describe import graph
from labkit.errors import LabkitError
from labkit.labfile import LABS, load_lab, parse_lab

GOLDEN = Path(__file__).parent / "golden"
LAB_NAMES = ("nat", "tun", "dr")

# One edge statement: "tail"[:"port":compass] -> "head"[:"port":compass] [attributes];
EDGE = re.compile(r'^\s*"([^"]+)"(?::"[^"]+":\w+)? -> "([^"]+)"(?::"[^"]+":\w+)? \[(.*)\];$')


def lab(name):
    return load_lab(LABS / name / "lab.yaml")


def edges(text):
    """(from, to, attributes) of every edge, in the direction its arrow points."""
    out = []
    for line in text.splitlines():
        m = EDGE.match(line)
        if m:
            tail, head, attrs = m.groups()
            out.append((head, tail, attrs) if "dir=back" in attrs else (tail, head, attrs))
    return out


def hops(text, reply):
    """The node-to-node hops the arrows show: an arrow into a network's bar and one out of it
    make one hop over that network."""
    arrows = [(a, b) for a, b, attrs in edges(text) if "dir=none" not in attrs and ("style=dashed" in attrs) == reply]
    out = set()
    for a, b in arrows:
        if b.startswith("net_"):
            out |= {(a, c) for bar, c in arrows if bar == b}
        elif not a.startswith("net_"):
            out.add((a, b))
    return out


@pytest.mark.parametrize("name", LAB_NAMES)
def test_golden(name):
    text = graph.dot(lab(name))
    golden = GOLDEN / f"{name}.dot"
    if os.environ.get("LABKIT_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


@pytest.mark.parametrize("name", LAB_NAMES)
def test_requests_go_client_vip_director_real_servers(name):
    assert hops(graph.dot(lab(name)), reply=False) == {("cl0", "lb0"), ("lb0", "rs0"), ("lb0", "rs1")}


def test_nat_replies_go_back_through_the_director():
    text = graph.dot(lab("nat"))
    assert hops(text, reply=True) == {("rs0", "lb0"), ("rs1", "lb0"), ("lb0", "cl0")}
    # keepalived: the real servers' gateway is the floating address, held with the VIP on lb0
    assert "reply via 192.168.66.10" in cable_label(text, "lb0", "int")
    assert "gateway 192.168.66.10" in node_line(text, "lb0")
    assert "192.168.66.10" not in node_line(text, "lb1")


@pytest.mark.parametrize("name", ["tun", "dr"])
def test_tun_and_dr_replies_go_straight_to_the_client(name):
    text = graph.dot(lab(name))
    assert hops(text, reply=True) == {("rs0", "cl0"), ("rs1", "cl0")}
    touched = {n for a, b, attrs in edges(text) if "style=dashed" in attrs for n in (a, b)}
    assert not touched & {"lb0", "lb1"}


@pytest.mark.parametrize("name", LAB_NAMES)
def test_reply_is_drawn_unlike_the_request(name):
    arrows = [attrs for _, _, attrs in edges(graph.dot(lab(name))) if "dir=none" not in attrs]
    colours = {("style=dashed" in attrs): set(re.findall(r'color="(#\w+)"', attrs)) for attrs in arrows}
    assert colours[True] and colours[False] and not colours[True] & colours[False]


def words(dot_source):
    """Text as the picture shows it: without HTML-like tags and entities."""
    return " ".join(unescape(re.sub(r"<[^>]*>", " ", dot_source)).split())


def node_line(text, node):
    return next(words(line) for line in text.splitlines() if line.startswith(f'  "{node}" [label='))


def cable_label(text, node, net):
    """The words written beside node's cable to a network."""
    for a, b, attrs in edges(text):
        if "dir=none" in attrs and {a, b} == {node, f"net_{net}"}:
            return words(attrs)
    raise AssertionError(f"no cable {node} - {net}")


@pytest.mark.parametrize(
    "name, listed_as, hop",
    [
        ("nat", "Masq", "dst -> RIP"),
        ("tun", "Tunnel", "IP-in-IP"),
        ("dr", "Route", "MAC rewritten"),
    ],
)
def test_vip_and_forwarding_are_shown_on_the_active_director(name, listed_as, hop):
    text = graph.dot(lab(name))
    active, standby = node_line(text, "lb0"), node_line(text, "lb1")
    assert "192.168.55.100:80" in active and listed_as in active and "active" in active
    assert "192.168.55.100" not in standby and "standby" in standby
    # the director -> real server hop, on the director's cable to the real servers' network
    assert hop in cable_label(text, "lb0", "int")


def test_nat_shows_both_virtual_services_and_the_networks():
    text = graph.dot(lab("nat"))
    assert "VIP 192.168.55.100:8080 tcp wrr, Masq" in node_line(text, "lb0")
    assert "192.168.55.0/24" in node_line(text, "net_ext") and "192.168.66.0/24" in node_line(text, "net_int")
    assert "int 192.168.66.111" in node_line(text, "rs0") and "real server" in node_line(text, "rs0")


def test_tun_shows_both_vips_held_by_the_real_servers():
    text = graph.dot(lab("tun"))
    assert "VIP 192.168.55.101 on tunl0" in node_line(text, "rs1")
    assert "192.168.55.101:80" in node_line(text, "lb0")


def test_fwmark_service_shows_its_mark_and_every_vip():
    text = graph.dot(lab("fwmark"))
    active = node_line(text, "lb0")
    assert "FWM 1 tcp 192.168.55.100:80 192.168.55.101:80 rr, Masq" in active
    assert "to 192.168.55.101:80" in cable_label(text, "cl0", "ext")
    assert hops(text, reply=False) == {("cl0", "lb0"), ("lb0", "rs0"), ("lb0", "rs1")}
    assert hops(text, reply=True) == {("rs0", "lb0"), ("rs1", "lb0"), ("lb0", "cl0")}


def test_a_client_sharing_no_network_with_the_director_gets_one_arrow():
    text = (LABS / "nat" / "lab.yaml").read_text()
    text = text.replace("networks:\n", "networks:\n  far: 10.0.0.0/24\n")
    text = text.replace(
        "cl0: {role: client, addresses: {ext: 192.168.55.200}}", "cl0: {role: client, addresses: {far: 10.0.0.2}}"
    )
    picture = graph.dot(parse_lab(text, "far.yaml"))
    arrows = {(a, b) for a, b, attrs in edges(picture) if "dir=none" not in attrs}
    assert {("cl0", "lb0"), ("lb0", "cl0")} <= arrows
    assert hops(picture, reply=True) == {("rs0", "lb0"), ("rs1", "lb0"), ("lb0", "cl0")}


def test_same_lab_same_text():
    assert graph.dot(lab("tun")) == graph.dot(lab("tun"))


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs graphviz's dot (apt-get install graphviz)")
def test_draw_writes_svg_and_png(tmp_path):
    paths = graph.draw(lab("dr"), tmp_path / "pictures")
    assert paths == [tmp_path / "pictures" / "dr.svg", tmp_path / "pictures" / "dr.png"]
    svg = ET.parse(paths[0]).getroot()
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    assert "MAC rewritten" in "".join(svg.itertext())
    assert paths[1].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_draw_without_dot_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(graph.shutil, "which", lambda name: None)
    with pytest.raises(LabkitError, match="apt-get install graphviz"):
        graph.draw(lab("nat"), tmp_path)


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs graphviz's dot (apt-get install graphviz)")
def test_draw_reports_dots_own_error(monkeypatch, tmp_path):
    monkeypatch.setattr(graph, "dot", lambda lab: "digraph {")
    with pytest.raises(LabkitError, match="syntax error"):
        graph.draw(lab("nat"), tmp_path)
