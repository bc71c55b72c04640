"""The raw socket's kernel filter, for real on loopback (root, as the agent runs): it passes
the server's probe answers (source port 3478/3479) and nothing else."""

from __future__ import annotations

import os
import socket

from shoal.agent.endpoints import PROBE_PORTS, attach_filter, source_port_filter, udp_datagram


def test_only_datagrams_from_the_probe_ports_reach_the_raw_socket() -> None:
    assert os.geteuid() == 0, "needs root for a raw socket (the agent runs as root)"
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    attach_filter(raw, source_port_filter(PROBE_PORTS))
    raw.settimeout(2)
    target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target.bind(("127.0.0.1", 0))
    # Sent as the agent sends its probes: hand-built UDP headers on a raw socket (no port is
    # bound, so a server on this machine holding 3478 does not matter).
    sender = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    try:
        dst = target.getsockname()[1]
        for port in (40000, PROBE_PORTS[1], 40001, PROBE_PORTS[0]):
            sender.sendto(udp_datagram(port, dst, b"x"), ("127.0.0.1", 0))
        got = []
        for _ in range(2):
            packet = raw.recv(2048)
            got.append(int.from_bytes(packet[20:22], "big"))
        assert got == [PROBE_PORTS[1], PROBE_PORTS[0]]
        raw.setblocking(False)
        try:
            extra = raw.recv(2048)
        except BlockingIOError:
            extra = b""
        assert extra == b""
    finally:
        for s in (raw, target, sender):
            s.close()
