"""A UDP/TCP reflector for the lab's NAT tests, run on the lab's server host (the underlay).

UDP on ports 3478 and 3479: answers every datagram with "<source ip>:<source port>" as seen
here; a datagram starting with b"poke" is also answered from port 3480, a source the sender
never sent to (endpoint-independent filtering lets that in, anything stricter does not).
TCP on port 443: accepts and writes "ok". Prints "ready" once every socket is bound.
"""

from __future__ import annotations

import selectors
import socket
import sys


def main(address: str) -> None:
    sel = selectors.DefaultSelector()
    udp = {}
    for port in (3478, 3479, 3480):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((address, port))
        udp[port] = s
        sel.register(s, selectors.EVENT_READ, port)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((address, 443))
    tcp.listen(8)
    sel.register(tcp, selectors.EVENT_READ, "tcp")
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            if key.data == "tcp":
                conn, _peer = tcp.accept()
                conn.sendall(b"ok")
                conn.close()
                continue
            sock = udp[key.data]
            data, (ip, port) = sock.recvfrom(2048)
            sock.sendto(f"{ip}:{port}".encode(), (ip, port))
            if data.startswith(b"poke"):
                udp[3480].sendto(b"poked", (ip, port))


if __name__ == "__main__":
    main(sys.argv[1])
