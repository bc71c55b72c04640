"""The relay over real UDP sockets on loopback: a pair's datagrams cross unchanged, each side
sees them come from the port it sends to, and strangers divert nothing."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from ipaddress import IPv4Address

from shoal.control.relay import IDLE_SECONDS, Relay

LOCAL = frozenset({IPv4Address("127.0.0.1")})


def udp(addr: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, 0))
    s.setblocking(False)
    return s


async def recv(s: socket.socket) -> tuple[bytes, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    data, addr = await asyncio.wait_for(loop.sock_recvfrom(s, 2048), 5)
    return data, (str(addr[0]), int(addr[1]))


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until the relay has handled what the kernel already delivered."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the relay never handled the datagram")


async def test_a_pair_is_relayed_both_ways_and_strangers_are_dropped() -> None:
    now = [0.0]
    relay = Relay("127.0.0.1", now=lambda: now[0])
    a, b, stranger = udp(), udp(), udp("127.0.0.2")
    try:
        allowed = {"n1": LOCAL, "n2": LOCAL}
        port_a, pair = await relay.grant("n1", "n2", allowed)
        port_b, same = await relay.grant("n2", "n1", allowed)
        assert same is pair and port_a != port_b
        a.sendto(b"hello from a", ("127.0.0.1", port_a))  # b not seen yet: held back
        await until(lambda: pair.seen[0] is not None)
        b.sendto(b"hello from b", ("127.0.0.1", port_b))
        assert await recv(a) == (b"hello from b", ("127.0.0.1", port_a))
        a.sendto(b"again from a", ("127.0.0.1", port_a))
        assert await recv(b) == (b"again from a", ("127.0.0.1", port_b))
        # A stranger's datagram does not move b's side elsewhere.
        stranger.sendto(b"divert", ("127.0.0.1", port_b))
        await until(lambda: pair.dropped == 1)
        a.sendto(b"still to b", ("127.0.0.1", port_a))
        assert (await recv(b))[0] == b"still to b"
        assert pair.dropped == 1 and pair.forwarded == 3
        # Idle pairs are released at the next grant.
        now[0] += IDLE_SECONDS + 1
        _port, fresh = await relay.grant("n1", "n3", {"n1": LOCAL, "n3": LOCAL})
        assert fresh is not pair and pair.closed
    finally:
        relay.close()
        for s in (a, b, stranger):
            s.close()
