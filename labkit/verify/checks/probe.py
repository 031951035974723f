"""The client's side of the scheduler checks, run on the client with python3 (the box has it, not
labkit): one batch per SSH command, its answer as JSON on stdout. Standard library only.

    python3 -c PROGRAM '{"mode": "hold", "vip": V, "port": P, "count": N}'
        open N connections one after the other and hold them (each is ESTABLISHED, an active
        connection at the director, before the next is opened; nginx waits for the request),
        then send a request on each: the destination (address:port) that answered each, or
        null where the connection was refused or timed out
    python3 -c PROGRAM '{"mode": "ask", "targets": [[V, P], ...], "source": A, "dev": D}'
        one request per target in turn, each on a new connection from address A: who answered
        each
    python3 -c PROGRAM '{"mode": "sources", "vip": V, "port": P, "dev": D, "sources": [A, ...], "rounds": R}'
        R requests from each source address in turn, each on a new connection: who answered each

The source addresses are added to device D as /32 for the batch and removed after it (the caller
runs the program as root).

Every connection ends with a reset (SO_LINGER 0): the director keeps its entry 10 s (CLOSE),
not 2 minutes (TIME_WAIT), so the next check counts fewer inactive connections.
"""

import json
import socket
import struct
import subprocess
import sys

TIMEOUT = 3.0


def connect(vip, port, source=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.settimeout(TIMEOUT)
    if source:
        s.bind((source, 0))
    try:
        s.connect((vip, port))
    except OSError:
        s.close()
        return None
    return s


def request(s, vip):
    """GET / on an open connection: the X-Destination header of the answer, or None."""
    try:
        s.sendall(f"GET / HTTP/1.0\r\nHost: {vip}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        return None
    finally:
        s.close()
    for line in data.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.lower() == "x-destination":
            return value.strip()
    return None


def once(vip, port, source=None):
    s = connect(vip, port, source)
    return request(s, vip) if s else None


def addresses(action, sources, dev):
    """Add (replace: one left by an interrupted batch is no error) or delete the source
    addresses, all in one `ip` (a process each is slow in a VM)."""
    batch = "".join(f"addr {action} {source}/32 dev {dev}\n" for source in sources)
    subprocess.run(["ip", "-batch", "-"], input=batch.encode(), check=action == "replace")


def main(args):
    mode = args["mode"]
    if mode == "hold":
        held = [connect(args["vip"], args["port"]) for _ in range(args["count"])]
        return [request(s, args["vip"]) if s else None for s in held]
    sources = [args["source"]] if mode == "ask" else args["sources"]
    try:
        addresses("replace", sources, args["dev"])
        if mode == "ask":
            return [once(vip, port, args["source"]) for vip, port in args["targets"]]
        return {
            source: [once(args["vip"], args["port"], source) for _ in range(args.get("rounds", 1))]
            for source in sources
        }
    finally:
        addresses("del", sources, args["dev"])


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
