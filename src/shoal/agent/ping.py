"""ICMP echo over the mesh for `shoal ping` and `shoal doctor`'s path-MTU probes (the host may
have no ping binary)."""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from dataclasses import dataclass
from ipaddress import IPv4Address

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0
HEADERS = 28  # IPv4 (20) + ICMP (8): an echo of `size` bytes carries size - 28 of payload
# Linux's <linux/in.h>; Python's socket module does not export them.
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DO = 2  # set DF, never fragment locally: EMSGSIZE above the route's MTU


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def echo_request(ident: int, seq: int, payload: bytes) -> bytes:
    """An ICMP echo request (type, code, checksum, identifier, sequence, payload)."""
    header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    return (
        struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, _checksum(header + payload), ident, seq)
        + payload
    )


def echo_reply(packet: bytes) -> tuple[int, int] | None:
    """(identifier, sequence) of an ICMP echo reply as a raw socket receives it (with its IPv4
    header); None for anything else."""
    ihl = (packet[0] & 0x0F) * 4 if packet else 0
    if len(packet) < ihl + 8:
        return None
    kind, _, _, ident, seq = struct.unpack("!BBHHH", packet[ihl : ihl + 8])
    return (ident, seq) if kind == ICMP_ECHO_REPLY else None


@dataclass(frozen=True, slots=True)
class PingResult:
    seq: int
    rtt_ms: float | None  # None: no reply within the timeout


class TooBigForRoute(Exception):
    """The packet exceeds the MTU of this host's own route to the destination (EMSGSIZE)."""


def ping_once(
    dst: IPv4Address,
    seq: int,
    timeout: float = 1.0,
    size: int | None = None,
    dont_fragment: bool = False,
) -> PingResult:
    """One echo to `dst`. `size`: the whole IP packet in bytes (at least 46); `dont_fragment`
    sets DF, so a packet too big for some hop is lost (or refused here: TooBigForRoute)
    instead of fragmented."""
    ident = os.getpid() & 0xFFFF
    payload = b"shoal-ping" + struct.pack("!d", time.monotonic())
    if size is not None:
        payload = payload.ljust(max(size - HEADERS, len(payload)), b"\0")
    packet = echo_request(ident, seq, payload)
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        sock.settimeout(timeout)
        if dont_fragment:
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        start = time.monotonic()
        try:
            sock.sendto(packet, (str(dst), 0))
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                raise TooBigForRoute(str(exc)) from exc
            raise
        deadline = start + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            try:
                reply, addr = sock.recvfrom(2048)
            except TimeoutError:
                break
            if addr[0] == str(dst) and echo_reply(reply) == (ident, seq):
                return PingResult(seq, (time.monotonic() - start) * 1000)
    return PingResult(seq, None)
