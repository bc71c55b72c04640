"""The inside half of the lab's NAT tests, run on a lab host: what does the outside see?

From one local UDP port, sends to the reflector's ports 3478 and then 3479 ("poke": the
reflector also answers from 3480) and prints JSON: the source each port saw (null if no answer
came back) and whether the answer from the never-contacted port 3480 got in; then tries TCP 443.
"""

from __future__ import annotations

import json
import socket
import sys
import time


def main(server: str, local_port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", local_port))
    s.settimeout(1.0)
    seen: dict[str, str | None] = {}
    poked = False
    for port, payload in ((3478, b"probe"), (3479, b"poke")):
        seen[str(port)] = None
        s.sendto(payload, (server, port))
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                data, (_ip, src_port) = s.recvfrom(2048)
            except TimeoutError:
                continue
            if src_port == 3480:
                poked = True
            elif src_port == port:
                seen[str(port)] = data.decode()
            if seen[str(port)] is not None and (port != 3479 or poked):
                break
    try:
        with socket.create_connection((server, 443), timeout=1.5) as tcp:
            tcp443 = tcp.recv(2) == b"ok"
    except OSError:
        tcp443 = False
    print(json.dumps({"seen": seen, "poked": poked, "tcp443": tcp443}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
