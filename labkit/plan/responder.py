#!/usr/bin/python3
"""The lab's UDP service on a real server: every datagram on the given ports is answered with
the real server's name, so the client can tell which real server each datagram reached.

    udp-responder NAME PORT...

labkit installs this file on the real servers as it is (python3 is in the box); it uses only
the standard library.
"""

import selectors
import socket
import struct
import sys

# Linux's IP_PKTINFO, which Python's socket module does not name before 3.13.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
PKTINFO = struct.Struct("=i4s4s")  # struct in_pktinfo: ifindex, local address, header's destination


def serve(name: bytes, ports: list[int]) -> None:
    selector = selectors.DefaultSelector()
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # Each datagram says which address it was sent to, and the answer leaves from that one:
        # in TUN and DR the client asked the VIP, which this server holds besides its own address.
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.bind(("0.0.0.0", port))
        selector.register(sock, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            try:
                _, ancillary, _, peer = sock.recvmsg(2048, socket.CMSG_SPACE(PKTINFO.size))
                sent_to = next(
                    (
                        PKTINFO.unpack(data[: PKTINFO.size])[2]
                        for level, kind, data in ancillary
                        if (level, kind) == (socket.IPPROTO_IP, IP_PKTINFO)
                    ),
                    bytes(4),
                )
                sock.sendmsg([name], [(socket.IPPROTO_IP, IP_PKTINFO, PKTINFO.pack(0, sent_to, bytes(4)))], 0, peer)
            except OSError:  # a client gone away (ICMP unreachable) must not stop the service
                continue


if __name__ == "__main__":
    serve(sys.argv[1].encode(), [int(port) for port in sys.argv[2:]])
