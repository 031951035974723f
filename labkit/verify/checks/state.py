"""What the checks of a lab's standing state read of each node (names, addresses, routes,
sysctls, ipvsadm's and keepalived's views, nginx and the UDP responder), asked of every node at
once before the checks run, in one command per node: under emulation each command costs a tenth
of a second or more, and each sudo twice that. The checks themselves stay in test_*.py; only the
reading is shared. What changes the lab (traffic, failures) is asked when its check runs."""

from __future__ import annotations

import re
import shlex

from labkit.labfile import Lab, Protocol
from labkit.labfile.model import host_port
from labkit.plan.steps import RESPONDER_UNIT, own_ports

DIRECTOR_PACKAGES = ("ipvsadm", "keepalived")

# keepalived writes its VRRP instances' state to /tmp/keepalived.data on SIGUSR1.
KEEPALIVED_DUMP = (
    "rm -f /tmp/keepalived.data; kill -USR1 $(cat /run/keepalived.pid);"
    " for i in $(seq 20); do grep -q 'VRRP Instance' /tmp/keepalived.data 2>/dev/null && break; sleep 0.2; done;"
    " sleep 0.2; cat /tmp/keepalived.data"
)

# Sends a datagram to each local UDP port given and prints "port answer".
UDP_ASK = (
    "import socket, sys\nfor port in sys.argv[1:]:\n"
    "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)\n"
    "    s.sendto(b'labkit', ('127.0.0.1', int(port))); print(port, s.recv(2048).decode())\n"
)


def ask_pages(urls: list[str], seconds: int = 5) -> str:
    """One curl for every URL, in order (under emulation each process costs a tenth of a second
    or more), each on a new connection closed before the next opens, as one curl per URL would
    be; after each page it writes the HTTP status, 000 where no answer came. pages() reads it.
    curl goes on after a URL that fails, so its exit status says only how the last one went."""
    return shlex.join(
        ["curl", "-sS", "-g", "-m", str(seconds), "-H", "Connection: close", "-w", "\n<<%{http_code}>>\n", *urls]
    )


def tunnel_devices(lab: Lab, real_server: str) -> list[str]:
    """Where the real server's tunnels end: tunl0 (IP-in-IP, and GUE's once out of UDP), gre0."""
    return sorted({s.tunnel_type.device for s in lab.services_of(real_server) if s.tunnel_type})


def web_ports(lab: Lab, real_server: str) -> list[tuple[int, str]]:
    """(port, local address) the real server's nginx must answer on: an IPv6 service's on IPv6
    too, since nginx's `listen 80` is IPv4 only."""
    return sorted(
        {
            (svc.real_port(rs), local)
            for svc in lab.services_of(real_server)
            if svc.protocol == Protocol.tcp
            for rs in svc.real_servers
            for local in (["::1"] if svc.ipv6 else ["127.0.0.1"])
            if lab.node_at(rs.address) == real_server
        }
    )


def serves_web(lab: Lab, real_server: str) -> bool:
    """Whether the real server's own nginx serves: not every port it has is published to a container."""
    return bool(own_ports(lab, real_server)) or not lab.nodes[real_server].publish


def udp_ports(lab: Lab, real_server: str) -> list[int]:
    """The real server's UDP ports: its own, or the service's where the lab file gives none."""
    return sorted(
        {
            rs.port or svc.port
            for svc in lab.services
            if svc.protocol == Protocol.udp
            for rs in svc.real_servers
            if lab.node_at(rs.address) == real_server
        }
    )


def sysctl_keys(lab: Lab, node: str) -> list[str]:
    keys = ["kernel.hostname", "kernel.osrelease"]  # what hostname and uname -r print
    if node in lab.directors:
        keys += ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding", "net.ipv4.vs.conn_reuse_mode"]
    if node in lab.real_servers:
        keys += ["net.ipv4.conf.all.arp_ignore", "net.ipv4.conf.all.arp_announce", "net.ipv4.conf.all.rp_filter"]
        keys += [f"net.ipv4.conf.{dev}.rp_filter" for dev in tunnel_devices(lab, node)]
    return keys


def lines_of(listing: str, dev: str) -> str:
    """The lines of `ip -o addr show` or `ip -br link show` about one device (tunl0@NONE is tunl0)."""
    return "\n".join(line for line in listing.splitlines() if re.match(rf"(\d+: )?{re.escape(dev)}(@\S+)?\s", line))


def route_name(address) -> str:
    return f"route-{address}"


def commands(lab: Lab, node: str) -> dict[str, str]:
    """Name -> the command whose output the checks read as that name, for one node."""
    paths = [f"/proc/sys/{key.replace('.', '/')}" for key in sysctl_keys(lab, node)]
    read = {
        "sysctls": shlex.join(["grep", "-H", ".", *paths]) + " 2>&1",
        "addresses": "ip -o addr show",
        "links": "ip -br link show",
    }
    if node in lab.directors:
        read["packages"] = shlex.join(["dpkg-query", "-W", "-f", "${Package} ${Version}\n", *DIRECTOR_PACKAGES])
        read |= {"ipvs": "ipvsadm -L -n 2>&1", "daemons": "ipvsadm -L -n --daemon 2>&1"}
        if lab.ha:
            read["vrrp"] = KEEPALIVED_DUMP
    if node in lab.real_servers:
        for ipv6 in (False, True):
            if any(s.ipv6 == ipv6 for s in lab.services_of(node)):
                for client in lab.clients:
                    for address in (lab.nodes[client].addresses6 if ipv6 else lab.nodes[client].addresses).values():
                        get = ["ip", f"-{6 if ipv6 else 4}", "route", "get", str(address)]
                        read[route_name(address)] = shlex.join(get) + " 2>&1"
        if serves_web(lab, node):
            urls = [f"http://{host_port(local, port)}/" for port, local in web_ports(lab, node)]
            read["nginx"] = "systemctl is-active nginx"
            read["pages"] = ask_pages(urls) if urls else "true"
        ports = udp_ports(lab, node)
        if ports:
            read["udp"] = (
                f"systemctl is-active {RESPONDER_UNIT}; "
                + shlex.join(["python3", "-S", "-c", UDP_ASK, *map(str, ports)])
                + " 2>&1"
            )
    return read


def script(read: dict[str, str]) -> str:
    """One root shell script that runs each command, its output after a line '== name'."""
    body = "; ".join(f"echo '== {name}'; {command}" for name, command in read.items())
    return shlex.join(["sudo", "-n", "sh", "-c", body])


def parse(out: str) -> dict[str, str]:
    parts = re.split(r"^== (\S+)\n", out, flags=re.M)[1:]
    return {name: text.strip() for name, text in zip(parts[::2], parts[1::2])}


def pages(text: str) -> list[str]:
    """ask_pages' output -> each page on one line, FAILED where no answer came."""
    parts = re.split(r"\n?<<(\d{3})>>(?:\n|$)", text)
    return [" ".join(page.split()) if status != "000" else "FAILED" for page, status in zip(parts[::2], parts[1::2])]


def sysctls(text: str) -> dict[str, str]:
    """grep -H's "/proc/sys/net/ipv4/ip_forward:1" lines -> {"net.ipv4.ip_forward": "1"}; a key
    whose file could not be read keeps grep's complaint, so the check shows it."""
    found = {}
    for line in text.splitlines():
        m = re.match(r"(?:grep: )?/proc/sys/(\S+?):\s*(.*)", line)
        if m:
            found[m[1].replace("/", ".")] = m[2]
    return found


def packages(text: str) -> dict[str, str]:
    """dpkg-query's "name version" lines -> {name: version}; a package not installed is left out."""
    return dict(line.split(" ", 1) for line in text.splitlines() if re.fullmatch(r"[a-z0-9][a-z0-9+.-]* \S+", line))
