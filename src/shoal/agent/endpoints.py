"""Endpoint discovery: which addresses this host's WireGuard port is reachable at.

WireGuard (kernel or wireguard-go) owns the UDP listen port, so the agent cannot bind it.
It sends its probes (`shoal.model.probe`) on a raw IPv4 socket instead, with a UDP header it
builds itself whose source port is WireGuard's: to a NAT the probe is one more packet of
WireGuard's flow and gets the same mapping (with endpoint-independent mapping, the mapping
peers will use). The answer comes back to WireGuard's port; a raw IPPROTO_UDP socket gets a
copy of every incoming UDP datagram, so it reads the answer there while WireGuard drops the
datagram it cannot parse. Nothing about WireGuard is stopped or reconfigured.

Probing both of the server's ports (3478, 3479) tells the NAT's kind: the same outside port
for both is endpoint-independent mapping, different ports a symmetric NAT, no answer at all
UDP blocked on the way (or a server without the responder).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import select
import socket
import struct
import time
from dataclasses import dataclass
from ipaddress import IPv4Address

from shoal.model.keys import PublicKey
from shoal.model.netmap import Endpoint, EndpointKind, NatKind
from shoal.model.probe import PROBE_PORT, BadProbe, encode_request, parse_reply

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 1.5  # seconds for both answers; the server is one round trip away
PROBE_PORTS = (PROBE_PORT, PROBE_PORT + 1)


def udp_datagram(src_port: int, dst_port: int, payload: bytes) -> bytes:
    """A UDP header + `payload`. Checksum 0 ("none", allowed over IPv4): the kernel picks
    the source address after we build the header, and NATs keep a zero checksum zero."""
    return struct.pack("!HHHH", src_port, dst_port, 8 + len(payload), 0) + payload


def parse_ipv4_udp(packet: bytes) -> tuple[IPv4Address, int, int, bytes] | None:
    """(source address, source port, destination port, payload) of an IPv4/UDP packet as a
    raw socket reads it (IP header included); None if it is not one."""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_UDP:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 8:
        return None
    src_port, dst_port, length, _sum = struct.unpack("!HHHH", packet[ihl : ihl + 8])
    return IPv4Address(packet[12:16]), src_port, dst_port, packet[ihl + 8 : ihl + length]


SO_ATTACH_FILTER = 26  # linux/socket.h; not in Python's socket module


def source_port_filter(ports: tuple[int, ...]) -> bytes:
    """A classic BPF program passing only IPv4/UDP datagrams from one of `ports`: the raw
    socket gets a copy of every UDP datagram the host receives (WireGuard's traffic
    included), and the kernel should drop those before they cost a copy into Python."""

    def insn(code: int, jt: int, jf: int, k: int) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)

    prog = [insn(0xB1, 0, 0, 0), insn(0x48, 0, 0, 0)]  # X = IP header length; A = source port
    for i, port in enumerate(ports):
        # Equal: jump over the comparisons left and the "ja" to "accept".
        prog.append(insn(0x15, len(ports) - i, 0, port))
    # No port matched: "ja +1" skips "accept" and lands on "drop".
    prog += [insn(0x05, 0, 0, 1), insn(0x06, 0, 0, 0xFFFF), insn(0x06, 0, 0, 0)]
    return b"".join(prog)


def attach_filter(sock: socket.socket, program: bytes) -> None:
    buffer = ctypes.create_string_buffer(program)
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


@dataclass(frozen=True, slots=True)
class Discovery:
    """What one round of probes saw: the mapping each server port reported (None: no answer)."""

    local: Endpoint | None  # this host's own address and WireGuard port, if it has one
    mapped: tuple[tuple[IPv4Address, int] | None, ...]

    @property
    def nat(self) -> NatKind:
        seen = [m for m in self.mapped if m is not None]
        if not seen:
            return "udp-blocked"
        if len(set(seen)) > 1:
            return "hard"
        if self.local is not None and seen[0] == (self.local.host, self.local.port):
            return "none"
        return "easy"

    def endpoints(self) -> tuple[Endpoint, ...]:
        """What this host reports: its own address, and what the server saw if different."""
        first = next((m for m in self.mapped if m is not None), None)
        if first is None:
            # Nothing came back: only the local address, unverified.
            return (self.local,) if self.local is not None else ()
        kind: EndpointKind = "symmetric" if self.nat == "hard" else "public"
        public = Endpoint(host=first[0], port=first[1], kind=kind)
        if self.nat == "none" or self.local is None:
            return (public,)
        return (self.local.model_copy(update={"kind": "lan"}), public)


def _probe_blocking(
    server: IPv4Address,
    listen_port: int,
    key: bytes,
    node: PublicKey,
    timeout: float,
) -> list[tuple[IPv4Address, int] | None]:
    nonces = {port: os.urandom(16) for port in PROBE_PORTS}
    found: dict[int, tuple[IPv4Address, int]] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP) as raw:
        attach_filter(raw, source_port_filter(PROBE_PORTS))
        raw.setblocking(False)
        now = int(time.time())
        for port, nonce in nonces.items():
            request = encode_request(key, node, now, nonce)
            raw.sendto(udp_datagram(listen_port, port, request), (str(server), 0))
        deadline = time.monotonic() + timeout
        while len(found) < len(nonces):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([raw], [], [], left)
            if not ready:
                break
            try:
                packet = raw.recv(65535)
            except BlockingIOError:
                continue
            parsed = parse_ipv4_udp(packet)
            if parsed is None:
                continue
            src, sport, dport, payload = parsed
            if src != server or dport != listen_port or sport not in nonces:
                continue
            try:
                found[sport] = parse_reply(payload, key, nonces[sport])
            except BadProbe as exc:
                log.debug("ignored a probe answer: %s", exc)
    return [found.get(port) for port in PROBE_PORTS]


async def discover(
    server: IPv4Address,
    listen_port: int,
    local: Endpoint | None,
    key: bytes,
    node: PublicKey,
    timeout: float = PROBE_TIMEOUT,
) -> Discovery:
    """Probe the server from WireGuard's port (see the module docstring); never raises for
    the network's sake: a failure is a Discovery without answers."""
    try:
        mapped = await asyncio.to_thread(_probe_blocking, server, listen_port, key, node, timeout)
    except OSError as exc:
        log.warning("endpoint probe to %s failed: %s", server, exc)
        mapped = [None for _ in PROBE_PORTS]
    return Discovery(local=local, mapped=tuple(mapped))
