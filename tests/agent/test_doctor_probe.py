"""The TCP probe behind `shoal doctor IP:PORT`, on loopback."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address

from shoal.agent.doctor import Target, check_target
from shoal.agent.doctor_probe import tcp_connect
from shoal.model.doctor import Verdict

LOOPBACK = IPv4Address("127.0.0.1")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_port_nothing_listens_on_is_named_refused_not_dropped() -> None:
    # It read "Connect call failed ('10.42.2.2', 80)" and doctor blamed the path or a firewall.
    port = closed_port()
    error = await tcp_connect(LOOPBACK, port, timeout=3)
    assert error == "Connection refused"
    check = check_target(
        Target(label=f"127.0.0.1:{port}", nodes=(), ip=LOOPBACK, port=port), None, error
    )
    assert check.verdict is Verdict.FAIL
    assert check.cause == "the host answers but nothing accepts on that port"


async def test_a_listening_port_opens() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert await tcp_connect(LOOPBACK, server.getsockname()[1], timeout=3) is None
