"""The server's endpoint-probe responder (UDP 3478 and 3479; wire format in
`shoal.model.probe`): tells a node the source address and port its probe arrived from.

Two ports on one address: a node probing both learns whether its NAT maps each destination to
its own outside port (symmetric, "hard") or not. A datagram that is not a valid request from a
key of this mesh gets no answer at all. Stateless: nothing is recorded, the node reports its
endpoints over its signed registration.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any, cast

from shoal.model.keys import InvalidKey, PrivateKey, PublicKey
from shoal.model.nodeauth import shared_key
from shoal.model.probe import PROBE_PORT, BadProbe, encode_reply, parse_request

log = logging.getLogger(__name__)

PORTS = (PROBE_PORT, PROBE_PORT + 1)
MAX_KEYS = 100_000  # derived keys cached; beyond, the cache starts over (a bound, not a goal)


class ProbeResponder(asyncio.DatagramProtocol):
    """Answers valid probes from nodes `is_node` accepts; drops everything else silently."""

    def __init__(
        self,
        auth_key: PrivateKey,
        is_node: Callable[[PublicKey], bool],
        now: Callable[[], float] = time.time,
    ) -> None:
        self._auth_key = auth_key
        self._server_public = auth_key.public_key()
        self._is_node = is_node
        self._now = now
        self._keys: dict[PublicKey, bytes] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self.answered = 0
        self.dropped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A datagram endpoint's transport (asyncio's selector class does not subclass it).
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        reply = self.answer(data, IPv4Address(addr[0]), addr[1])
        if reply is None:
            self.dropped += 1
            return
        if self._transport is not None:
            self._transport.sendto(reply, addr)
        self.answered += 1

    def answer(self, data: bytes, ip: IPv4Address, port: int) -> bytes | None:
        """The reply to `data` from `ip`:`port`, or None when it deserves none."""
        try:
            request = parse_request(data)
            if not self._is_node(request.public_key):
                return None
            key = self._key(request.public_key)
            request.verify(key, int(self._now()))
        except (BadProbe, InvalidKey) as exc:
            log.debug("probe from %s:%d dropped: %s", ip, port, exc)
            return None
        return encode_reply(key, request.nonce, ip, port)

    def _key(self, node: PublicKey) -> bytes:
        key = self._keys.get(node)
        if key is None:
            key = shared_key(self._auth_key, node, node, self._server_public)
            if len(self._keys) >= MAX_KEYS:
                self._keys.clear()
            self._keys[node] = key
        return key


async def start_responders(
    host: str, auth_key: PrivateKey, is_node: Callable[[PublicKey], bool]
) -> list[asyncio.DatagramTransport]:
    """Listen on `host`:3478 and 3479. A port that cannot be bound (in use: several servers
    on one machine) is logged and skipped: nodes behind it then only use their LAN endpoints."""
    loop = asyncio.get_running_loop()
    transports: list[asyncio.DatagramTransport] = []
    for port in PORTS:
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: ProbeResponder(auth_key, is_node), local_addr=(host, port)
            )
        except OSError as exc:
            log.warning(
                "endpoint probes: cannot listen on UDP %s:%d (%s); nodes behind NAT will not "
                "learn their public endpoint from this server",
                host,
                port,
                exc.strerror,
            )
            continue
        transports.append(transport)
    if transports:
        log.info("endpoint probes answered on UDP %s:%s", host, "+".join(map(str, PORTS)))
    return transports
