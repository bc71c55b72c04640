"""The UDP relay served by `shoal server`: forwards still-encrypted WireGuard datagrams between
two nodes that have no direct path (symmetric NAT on both sides).

Per pair of nodes (A, B) it binds two UDP ports on the server's address: A uses `server:a_port`
as B's WireGuard endpoint and B uses `server:b_port` as A's. What arrives on a_port (from A)
leaves from b_port towards B's last seen source, and the other way round, so each side sees
its peer's packets come from the very endpoint it configured (WireGuard keeps it) and its own
NAT sees replies from the address it sent to (its mapping stays open). The relay holds no key:
it moves opaque WireGuard ciphertext. A side's source is learned only from datagrams whose
address is that node's public one (from its reported endpoints), so a stranger cannot divert
the pair's traffic. Idle pairs are released after IDLE_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

log = logging.getLogger(__name__)

IDLE_SECONDS = 300.0
MAX_PAIRS = 10_000  # a bound on sockets held, two per pair
# Datagrams moved per wakeup of one side. Python pays per datagram here, so the loop is
# kept to a receive into one reused buffer and a send, and the event loop's own cost (a
# selector round and a transport callback per datagram with asyncio's datagram transport)
# is paid once per batch instead.
BATCH = 256
MAX_DATAGRAM = 65535
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # linux/socket.h; not in Python's socket module
# WireGuard sends a TCP window's worth at once; with the default ~200 KB (about 90 datagrams
# of kernel accounting) the bursts overflowed and TCP through the relay backed off.
SOCKET_BUFFER = 4 << 20


def grow_buffers(sock: socket.socket) -> None:
    """Receive and send buffers of SOCKET_BUFFER bytes (beyond net.core.*mem_max as root)."""
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:  # without CAP_NET_ADMIN: as much as the sysctl allows
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)


@dataclass
class RelayPair:
    """One pair's two ports; side 0 is node `nodes[0]`'s, side 1 `nodes[1]`'s."""

    nodes: tuple[str, str]
    allowed: tuple[frozenset[str], frozenset[str]]  # source addresses, as text
    now: Callable[[], float]
    socks: list[socket.socket] = field(default_factory=list)
    seen: list[tuple[str, int] | None] = field(default_factory=lambda: [None, None])
    ports: tuple[int, int] = (0, 0)
    last_active: float = 0.0
    forwarded: int = 0  # datagrams
    dropped: int = 0
    closed: bool = False
    _buf: bytearray = field(default_factory=lambda: bytearray(MAX_DATAGRAM))

    def drain(self, index: int) -> None:
        """Side `index` is readable: move what it received to the other side's node."""
        sock, out = self.socks[index], self.socks[1 - index]
        allowed, seen = self.allowed[index], self.seen[index]
        buf = self._buf
        view = memoryview(buf)
        moved = dropped = 0
        for _ in range(BATCH):
            try:
                size, addr = sock.recvfrom_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # an ICMP error for an earlier send, queued on the socket
            if addr != seen:
                if addr[0] not in allowed:
                    dropped += 1
                    continue
                seen = self.seen[index] = (addr[0], addr[1])
            other = self.seen[1 - index]
            if other is None:
                continue  # the other side has not shown up yet; WireGuard retries
            try:
                out.sendto(view[:size], other)
            except OSError:  # its send buffer is full, or the network says no: a loss
                dropped += 1
                continue
            moved += 1
        view.release()
        if moved:
            self.forwarded += moved
            self.last_active = self.now()
        self.dropped += dropped

    def close(self) -> None:
        self.closed = True
        for sock in self.socks:
            # No loop left (shutdown): closing the socket is all there is to do.
            with contextlib.suppress(RuntimeError, ValueError, OSError):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()


class Relay:
    """The pairs of one server; `grant` is what the API calls."""

    def __init__(self, host: str, now: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self._now = now
        self._pairs: dict[tuple[str, str], RelayPair] = {}

    async def grant(
        self, me: str, peer: str, allowed: dict[str, frozenset[IPv4Address]]
    ) -> tuple[int, RelayPair]:
        """The port `me` sends to for `peer` (the pair made on first ask, by either side)."""
        self._expire()
        nodes = (me, peer) if me < peer else (peer, me)
        allow = tuple(frozenset(map(str, allowed.get(n, frozenset()))) for n in nodes)
        pair = self._pairs.get(nodes)
        if pair is None:
            if len(self._pairs) >= MAX_PAIRS:
                raise OSError("relay full")
            pair = self._open(nodes, (allow[0], allow[1]))
            self._pairs[nodes] = pair
            log.info("relay: pair %s <-> %s on ports %d/%d", *nodes, *pair.ports)
        else:
            pair.allowed = (allow[0], allow[1])  # endpoints move: follow what nodes report now
        pair.last_active = self._now()
        return pair.ports[nodes.index(me)], pair

    def _open(self, nodes: tuple[str, str], allowed: tuple[frozenset[str], ...]) -> RelayPair:
        loop = asyncio.get_running_loop()
        pair = RelayPair(nodes=nodes, allowed=(allowed[0], allowed[1]), now=self._now)
        try:
            for _side in (0, 1):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                pair.socks.append(sock)
                grow_buffers(sock)
                sock.bind((self.host, 0))
                sock.setblocking(False)
            for index, sock in enumerate(pair.socks):
                loop.add_reader(sock.fileno(), pair.drain, index)
        except OSError:
            pair.close()
            raise
        pair.ports = (pair.socks[0].getsockname()[1], pair.socks[1].getsockname()[1])
        return pair

    def _expire(self) -> None:
        now = self._now()
        for key, pair in list(self._pairs.items()):
            if now - pair.last_active > IDLE_SECONDS:
                pair.close()
                del self._pairs[key]
                log.info("relay: pair %s <-> %s idle, released", *key)

    def pairs(self) -> list[tuple[str, str]]:
        """The node-id pairs relayed now, sorted (idle ones released first)."""
        self._expire()
        return sorted(self._pairs)

    def close(self) -> None:
        for pair in self._pairs.values():
            pair.close()
        self._pairs.clear()
