"""Endpoint discovery's guard: a server that answers neither UDP nor TCP is down, not this
host's UDP blocked (the rest of traversal runs end to end in tests/e2e/test_nat.py)."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address

from shoal.agent.traversal import tcp_reachable

LOOPBACK = IPv4Address("127.0.0.1")


async def test_a_listening_server_is_reachable_a_closed_port_is_not() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        assert await tcp_reachable(f"https://127.0.0.1:{port}", LOOPBACK)
    assert not await tcp_reachable(f"https://127.0.0.1:{port}", LOOPBACK, timeout=1)


async def test_the_first_server_of_a_list_is_tried() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        urls = f"https://127.0.0.1:{port},https://127.0.0.2:{port}"
        assert await tcp_reachable(urls, LOOPBACK)
