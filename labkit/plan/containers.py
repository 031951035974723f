"""A node's containers (seed 000), wired as Docker wires them, without Docker. Pure.

Each container is a network namespace named after it: a veth pair joins it to the node's bridge
(`veth-NAME` on the bridge, `eth0` inside), its address and a default route via the bridge are
set inside, and nginx runs in it as the systemd unit `labkit-container@NAME`. The node forwards,
masquerades its containers' own traffic out (Docker's POSTROUTING rule) and rewrites each
published port to its container (Docker's DNAT rule).
"""

from __future__ import annotations

from labkit.labfile import Lab
from labkit.labfile.model import Node

UNIT = "labkit-container"
UNIT_FILE = f"/etc/systemd/system/{UNIT}@.service"
CONFIG_DIR = "/etc/labkit/containers"
WEB_ROOT = "/var/www/containers"


def veth(container: str) -> str:
    """The host's end of the container's veth pair (Docker calls it veth<random>)."""
    return f"veth-{container}"


def unit(container: str) -> str:
    return f"{UNIT}@{container}"


def config_path(container: str) -> str:
    return f"{CONFIG_DIR}/{container}/nginx.conf"


def web_root(container: str) -> str:
    return f"{WEB_ROOT}/{container}"


def nginx_config(container: str, ports: tuple[int, ...] = (80,)) -> str:
    # One nginx per namespace: each keeps its own pid file; the answer names the container.
    listen = "".join(f"        listen {port};\n" for port in ports)
    return (
        "# Written by labkit from the lab file; labkit provision rewrites it.\n"
        "user www-data;\n"
        f"pid /run/{UNIT}-{container}.pid;\n"
        "events {}\n"
        "http {\n"
        "    access_log off;\n"
        "    server {\n"
        f"{listen}"
        f"        root {web_root(container)};\n"
        f"        add_header X-Real-Server {container} always;\n"
        "        add_header X-Destination $server_addr:$server_port always;\n"
        "    }\n"
        "}\n"
    )


UNIT_TEXT = (
    "# Written by labkit: the web server of container %i, inside its network namespace.\n"
    "[Unit]\n"
    "Description=labkit container %i (nginx in network namespace %i)\n"
    "After=network.target\n"
    "\n"
    "[Service]\n"
    f"ExecStart=/usr/sbin/ip netns exec %i /usr/sbin/nginx -c {CONFIG_DIR}/%i/nginx.conf -g 'daemon off;'\n"
    "ExecReload=/bin/kill -HUP $MAINPID\n"
    "\n"
    "[Install]\n"
    "WantedBy=multi-user.target\n"
)


def masquerade_rule(node: Node) -> tuple[str, ...]:
    """Docker's rule for traffic the containers start: out of any other interface, from the
    node's address. Replies to the director's requests are not new connections: untouched."""
    net = str(node.bridge.address.network)
    return ("-t", "nat", "-A", "POSTROUTING", "-s", net, "!", "-o", node.bridge.name, "-j", "MASQUERADE")


def publish_rules(node: Node) -> list[tuple[str, tuple[str, ...]]]:
    """Why, and Docker's DNAT rule, for each published port: a request to any local address on
    the port goes to the container's port (conntrack rewrites the reply's source back)."""
    return [
        (
            f"published port {p.port} goes to {p.container} ({node.containers[p.container]}:{p.container_port}), "
            "as docker run -p does",
            (
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-p",
                p.protocol.value,
                "-m",
                "addrtype",
                "--dst-type",
                "LOCAL",
                "--dport",
                str(p.port),
                "-j",
                "DNAT",
                "--to-destination",
                f"{node.containers[p.container]}:{p.container_port}",
            ),
        )  # fmt: skip
        for p in node.publish
    ]


def is_container_node(lab: Lab, node: str) -> bool:
    return lab.nodes[node].bridge is not None
