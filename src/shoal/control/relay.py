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
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any, cast

log = logging.getLogger(__name__)

IDLE_SECONDS = 300.0
MAX_PAIRS = 10_000  # a bound on sockets held, two per pair


class _Side(asyncio.DatagramProtocol):
    def __init__(self, pair: RelayPair, index: int) -> None:
        self.pair = pair
        self.index = index
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.pair.received(self.index, data, (str(addr[0]), int(addr[1])))


@dataclass
class RelayPair:
    """One pair's two ports; side 0 is node `nodes[0]`'s, side 1 `nodes[1]`'s."""

    nodes: tuple[str, str]
    allowed: tuple[frozenset[IPv4Address], frozenset[IPv4Address]]
    now: Callable[[], float]
    sides: list[_Side] = field(default_factory=list)
    seen: list[tuple[str, int] | None] = field(default_factory=lambda: [None, None])
    ports: tuple[int, int] = (0, 0)
    last_active: float = 0.0
    forwarded: int = 0  # datagrams
    dropped: int = 0

    def received(self, index: int, data: bytes, addr: tuple[str, int]) -> None:
        if IPv4Address(addr[0]) not in self.allowed[index]:
            self.dropped += 1
            return
        self.seen[index] = addr
        self.last_active = self.now()
        other = self.seen[1 - index]
        out = self.sides[1 - index].transport
        if other is None or out is None:
            return  # the other side has not shown up yet; WireGuard retries
        out.sendto(data, other)
        self.forwarded += 1

    def close(self) -> None:
        for side in self.sides:
            if side.transport is not None:
                side.transport.close()


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
        allow = (allowed.get(nodes[0], frozenset()), allowed.get(nodes[1], frozenset()))
        pair = self._pairs.get(nodes)
        if pair is None:
            if len(self._pairs) >= MAX_PAIRS:
                raise OSError("relay full")
            pair = await self._open(nodes, allow)
            self._pairs[nodes] = pair
            log.info("relay: pair %s <-> %s on ports %d/%d", *nodes, *pair.ports)
        else:
            pair.allowed = allow  # endpoints move: follow what the nodes report now
        pair.last_active = self._now()
        return pair.ports[nodes.index(me)], pair

    async def _open(
        self, nodes: tuple[str, str], allowed: tuple[frozenset[IPv4Address], ...]
    ) -> RelayPair:
        loop = asyncio.get_running_loop()
        pair = RelayPair(nodes=nodes, allowed=(allowed[0], allowed[1]), now=self._now)
        ports: list[int] = []
        try:
            for index in (0, 1):
                side = _Side(pair, index)
                transport, _ = await loop.create_datagram_endpoint(
                    lambda side=side: side,  # type: ignore[misc]
                    local_addr=(self.host, 0),
                )
                pair.sides.append(side)
                ports.append(int(transport.get_extra_info("sockname")[1]))
        except OSError:
            pair.close()
            raise
        pair.ports = (ports[0], ports[1])
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
