import http.server
import os
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from labkit.labfile import LABS, LabError, parse_lab

PINNED = Path(__file__).resolve().parent / "pinned"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--labs",
        help="run the tests of tests/lab/test_labs.py for these labs only (comma-separated): scripts/test "
        "shares them between its two runs",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Unit tests take seconds, labs take minutes: run the labs last.
    items.sort(key=lambda item: item.get_closest_marker("lab") is not None)
    chosen = config.getoption("labs")
    if chosen:
        labs = chosen.split(",")
        shipped = sorted(path.parent.name for path in LABS.glob("*/lab.yaml"))
        unknown = sorted(set(labs) - set(shipped))
        if unknown:
            raise pytest.UsageError(f"--labs: no lab {', '.join(unknown)}; the labs are {', '.join(shipped)}")
        dropped = {i for i in items if i.module.__name__ == "test_labs" and lab_of(i) not in labs}
        if dropped:
            config.hook.pytest_deselected(items=list(dropped))
            items[:] = [i for i in items if i not in dropped]


def lab_of(item: pytest.Item) -> str | None:
    """The lab a test of test_labs.py runs on (its `lab` fixture's parameter)."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    return params.get("lab")


def pinned(lab: str) -> dict[str, bool]:
    """Check id -> whether it is a failure scenario, as tests/pinned/LAB.txt lists the checks
    labkit verify must run on a shipped lab."""
    checks = {}
    for line in (PINNED / f"{lab}.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            failover, _, check = line.rpartition(" ")
            checks[check] = failover == "failover"
    return checks


def edited(text: str, change) -> str:
    """A lab file's text with change(data) applied to what it says."""
    data = yaml.safe_load(text)
    change(data)
    return yaml.safe_dump(data)


def problems(text: str) -> list[str]:
    """The lines of the error a lab file that cannot be used gets, read as labs/x/lab.yaml."""
    with pytest.raises(LabError) as caught:
        parse_lab(text, "labs/x/lab.yaml")
    return str(caught.value).splitlines()


@pytest.fixture
def browser():
    """A real browser (Debian's chromium, driven by playwright) and the list of every request a
    page made to anything but a file: a page labkit writes must load nothing from outside."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium")
        page = chromium.new_page()
        outside: list[str] = []
        page.on("request", lambda request: None if request.url.startswith("file:") else outside.append(request.url))
        yield page, outside
        chromium.close()


class Page(http.server.BaseHTTPRequestHandler):
    """A real server's nginx on loopback: "rs0" at /, a 404 page anywhere else."""

    def do_GET(self):
        found = self.path == "/"
        body = b"rs0\n" if found else b"<h1>404 Not Found</h1>\n<hr>\n"
        self.send_response(200 if found else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def remote(tmp_path_factory) -> str:
    """This host's libvirt as another host: an sshd on 127.0.0.1 that trusts a key made for the
    test, and that host key in the user's known_hosts (taken out again afterwards). The URI."""
    work = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / key)], check=True)
    (work / "authorized_keys").write_text((work / "client_key.pub").read_text())
    port = free_port()
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    subprocess.run(
        [
            "/usr/sbin/sshd",
            "-f",
            "/dev/null",
            "-o",
            "ListenAddress=127.0.0.1",
            "-o",
            f"Port={port}",
            "-o",
            f"HostKey={work / 'host_key'}",
            "-o",
            f"AuthorizedKeysFile={work / 'authorized_keys'}",
            "-o",
            "StrictModes=no",
            "-o",
            "PermitRootLogin=prohibit-password",
            "-o",
            "UsePAM=no",
            "-o",
            f"PidFile={work / 'sshd.pid'}",
        ],
        check=True,
    )
    known_hosts = Path.home() / ".ssh" / "known_hosts"
    known_hosts.parent.mkdir(mode=0o700, exist_ok=True)
    before = known_hosts.read_text() if known_hosts.exists() else ""
    host_key = " ".join((work / "host_key.pub").read_text().split()[:2])
    known_hosts.write_text(before + f"[127.0.0.1]:{port} {host_key}\n")
    user = os.environ.get("USER") or "root"
    yield f"qemu+ssh://{user}@127.0.0.1:{port}/system?keyfile={work / 'client_key'}"
    known_hosts.write_text(before)
    subprocess.run(["kill", (work / "sshd.pid").read_text().strip()])
