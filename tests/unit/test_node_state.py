"""What verify reads of each node before its checks run (state.py): which commands each node is
asked, and how their output is read back."""

import subprocess
import threading
from http.server import HTTPServer

from conftest import Page, free_port

from labkit.labfile import LABS, load_lab
from labkit.verify.checks import state


def test_each_node_is_asked_what_its_checks_read():
    lab = load_lab(LABS / "nat" / "lab.yaml")
    director, real_server, client = (set(state.commands(lab, n)) for n in ("lb0", "rs0", "cl0"))
    assert {"ipvs", "daemons", "vrrp", "packages"} <= director
    assert {"nginx", "pages", "udp", f"route-{lab.nodes['cl0'].addresses['ext']}"} <= real_server
    assert client == {"sysctls", "addresses", "links"}


def test_one_script_gives_back_each_output_under_its_name():
    read = {"one": "echo 1", "two": "printf 'a\\nb\\n'", "none": "true"}
    body = state.script(read).removeprefix("sudo -n ")
    out = subprocess.run(body, shell=True, capture_output=True, text=True, check=True).stdout
    assert state.parse(out) == {"one": "1", "two": "a\nb", "none": ""}


def test_a_sysctl_that_cannot_be_read_keeps_the_reason():
    out = subprocess.run(
        "grep -H . /proc/sys/kernel/osrelease /proc/sys/net/ipv4/no_such_key 2>&1",
        shell=True,
        capture_output=True,
        text=True,
    ).stdout
    found = state.sysctls(out)
    assert found["kernel.osrelease"] == subprocess.run(["uname", "-r"], capture_output=True, text=True).stdout.strip()
    assert "No such file" in found["net.ipv4.no_such_key"]


def test_packages_not_installed_are_left_out():
    out = "ipvsadm 1:1.31-1+b1\ndpkg-query: no packages found matching keepalived\n"
    assert state.packages(out) == {"ipvsadm": "1:1.31-1+b1"}


def test_a_device_is_found_by_its_own_name():
    links = "lo               UNKNOWN        00:00:00:00:00:00\ntunl0@NONE       UNKNOWN        0.0.0.0\ntunl01 DOWN\n"
    assert state.lines_of(links, "tunl0") == "tunl0@NONE       UNKNOWN        0.0.0.0"
    addresses = "1: lo    inet 127.0.0.1/8 scope host lo\n5: tunl0    inet 10.0.0.1/32 scope global tunl0\n"
    assert state.lines_of(addresses, "tunl0") == "5: tunl0    inet 10.0.0.1/32 scope global tunl0"


def test_one_curl_reads_every_page_and_says_which_did_not_answer():
    server = HTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        here, gone = server.server_address[1], free_port()
        urls = [f"http://127.0.0.1:{here}/", f"http://127.0.0.1:{gone}/", f"http://127.0.0.1:{here}/missing"]
        out = subprocess.run(state.ask_pages(urls), shell=True, capture_output=True, text=True).stdout
    finally:
        server.shutdown()
        server.server_close()
    assert state.pages(out.strip()) == ["rs0", "FAILED", "<h1>404 Not Found</h1> <hr>"]
