"""Connections against a real server on loopback with short deadlines (issue 7, finding 4):
slowloris, idle TLS, stalled handshakes, caps per source and server-wide, a quiet accept path.
Each test waits for the server to close the connection, bounded by a generous timeout."""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from shoal.control import listener
from shoal.control.api import CONNECTIONS
from shoal.control.app import RunningServer
from shoal.control.limits import Rate
from shoal.control.listener import ConnectionLimits, quiet_accept_errors
from shoal.controlclient.tls import ssl_context
from tests.control.servers import FakeClock, join, node_client, running_server

SHORT = ConnectionLimits(
    max_connections=8,
    max_per_source=3,
    handshake_timeout=0.4,
    header_timeout=0.4,
    idle_timeout=0.8,
)


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with running_server(tmp_path / "server", FakeClock(), connections=SHORT) as server:
        yield server


async def connect(
    server: RunningServer, *, tls: bool = True, source: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        "127.0.0.1",
        server.port,
        ssl=ssl_context(server.ca.ca_pem) if tls else None,
        server_hostname="127.0.0.1" if tls else None,
        local_addr=(source, 0),
    )


async def closed_after(reader: asyncio.StreamReader, started: float) -> float:
    """Seconds from `started` until the server closed the connection (EOF or reset)."""
    try:
        async with asyncio.timeout(5):
            while await reader.read(1024):
                pass
    except (ConnectionResetError, ssl.SSLError):
        pass
    return time.monotonic() - started


async def test_an_idle_tls_connection_is_closed_after_the_idle_timeout(
    guarded: RunningServer,
) -> None:
    started = time.monotonic()
    reader, writer = await connect(guarded)
    took = await closed_after(reader, started)
    writer.close()
    assert 0.7 <= took < 2.0


async def test_a_slowloris_is_closed_after_the_header_timeout_however_it_trickles(
    guarded: RunningServer,
) -> None:
    reader, writer = await connect(guarded)
    started = time.monotonic()

    async def trickle() -> None:
        for byte in b"GET /v1/ca HTTP/1.1\r\nHost: x\r\n":
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    sending = asyncio.create_task(trickle())
    took = await closed_after(reader, started)
    sending.cancel()
    writer.close()
    assert 0.3 <= took < 1.5


async def test_a_stalled_tls_handshake_is_closed(guarded: RunningServer) -> None:
    reader, writer = await connect(guarded, tls=False)
    took = await closed_after(reader, time.monotonic())
    writer.close()
    assert took < 1.5


async def test_requests_on_a_kept_alive_connection_and_long_polls_outlive_the_deadlines(
    guarded: RunningServer,
) -> None:
    node = await join(guarded, "alpha")
    async with node_client(guarded, node.key) as client:
        rev = node.netmap.revision
        # A poll held longer than the idle and header timeouts is a request in progress.
        assert (await client.poll(since=rev, wait=1.2)).kind == "none"
        assert (await client.poll(since=rev, wait=0)).kind == "none"


async def test_connections_per_source_are_capped_and_freed_on_close(
    guarded: RunningServer,
) -> None:
    held = [await connect(guarded, tls=False) for _ in range(3)]
    reader, writer = await connect(guarded, tls=False)
    took = await closed_after(reader, time.monotonic())  # refused at once, before TLS
    writer.close()
    assert took < 0.3
    other = await connect(guarded, source="127.0.0.2")  # another source is served
    other[1].write(b"GET /v1/ca HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await other[0].readline()).startswith(b"HTTP/1.1 200")
    other[1].close()
    for _, w in held:
        w.close()
    # Its slots come back once the server has seen the closes.
    async with asyncio.timeout(2):
        while listener_open(guarded) > 0:
            await asyncio.sleep(0.01)
    again = await connect(guarded)
    again[1].write(b"GET /v1/ca HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await again[0].readline()).startswith(b"HTTP/1.1 200")
    again[1].close()


def listener_open(server: RunningServer) -> int:
    app = server.runner.app
    assert app is not None
    return app[CONNECTIONS].open


async def test_at_the_cap_the_longest_idle_connection_makes_room(guarded: RunningServer) -> None:
    """Idle connections from many addresses cannot lock an agent out: the oldest goes."""
    idle = [await connect(guarded, source=f"127.0.0.{i}") for i in range(10, 18)]  # the cap
    reader, writer = await connect(guarded, source="127.0.0.30")
    writer.write(b"GET /v1/ca HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    assert await closed_after(idle[0][0], time.monotonic()) < 0.3  # the oldest was closed
    writer.close()
    for _, w in idle:
        w.close()


async def test_at_the_cap_a_stalled_handshake_makes_room_and_busy_ones_stay(
    tmp_path: Path,
) -> None:
    """Connections stalled in their TLS handshake make room too (oldest first); only when
    every connection is busy with a request is a new one refused."""
    limits = replace(SHORT, max_per_source=100)  # the nodes below all come from 127.0.0.1
    async with running_server(tmp_path / "server", FakeClock(), connections=limits) as server:
        await _cap_with_stalled_and_busy(server)


async def _cap_with_stalled_and_busy(guarded: RunningServer) -> None:
    stalled = [await connect(guarded, tls=False, source=f"127.0.0.{i}") for i in range(10, 18)]
    reader, writer = await connect(guarded, source="127.0.0.30")
    writer.write(b"GET /v1/ca HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    assert await closed_after(stalled[0][0], time.monotonic()) < 0.3
    writer.close()
    for _, w in stalled:
        w.close()
    async with asyncio.timeout(2):
        while listener_open(guarded) > 0:
            await asyncio.sleep(0.01)

    # Requests in progress: long-polls of 8 nodes fill the cap.
    nodes = [await join(guarded, f"n{i}") for i in range(8)]
    rev = guarded.service.registry.revision
    clients = [node_client(guarded, n.key) for n in nodes]
    for c in clients:
        await c.__aenter__()
    polls = [asyncio.create_task(c.poll(since=rev, wait=3)) for c in clients]
    connections = guarded.runner.app[CONNECTIONS]  # type: ignore[index]
    async with asyncio.timeout(5):  # every slot holds a long-poll in progress, none idle
        while connections.open != 8 or connections._idle or connections._handshaking:
            await asyncio.sleep(0.01)
    reader, writer = await connect(guarded, tls=False, source="127.0.0.31")
    assert await closed_after(reader, time.monotonic()) < 0.3  # refused: nobody to close
    writer.close()
    for p in polls:
        p.cancel()
    for c in clients:
        await c.__aexit__(None, None, None)


def test_running_out_of_fds_logs_one_line_not_a_traceback_per_accept(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the fd limit asyncio reports every failed accept with a traceback (123k of them in
    the review); the server logs one line every OUT_OF_FDS_LOG_EVERY seconds instead."""
    loop = asyncio.new_event_loop()
    try:
        quiet_accept_errors(loop)
        monkeypatch.setattr(listener, "_out_of_fds_logged", 0.0)
        caplog.set_level(logging.DEBUG)
        for _ in range(1000):
            exc = OSError(errno.EMFILE, "Too many open files")
            listener._log_out_of_fds(exc)
            loop.call_exception_handler(
                {"message": "socket.accept() out of system resource", "exception": exc}
            )
        assert [r.getMessage() for r in caplog.records] == [
            "cannot accept connections: Too many open files (raise the fd limit: LimitNOFILE)"
        ]
        assert all(r.exc_info is None for r in caplog.records)
    finally:
        loop.close()


async def test_new_connections_per_source_are_rate_limited(tmp_path: Path) -> None:
    """Each connection costs a TLS handshake: a source opening them in a loop is refused
    before any TLS work once past its burst; another source is not affected."""
    limits = ConnectionLimits(new_per_source=Rate(burst=2, per_second=0.001))
    async with running_server(tmp_path / "server", FakeClock(), connections=limits) as server:
        first = [await connect(server, tls=False) for _ in range(2)]
        reader, writer = await connect(server, tls=False)
        assert await closed_after(reader, time.monotonic()) < 0.3
        writer.close()
        other = await connect(server, source="127.0.0.2")
        other[1].write(b"GET /v1/ca HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await other[0].readline()).startswith(b"HTTP/1.1 200")
        other[1].close()
        for _, w in first:
            w.close()


async def test_a_request_aiohttp_cannot_parse_is_one_info_line(
    guarded: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Anyone could write an ERROR with aiohttp's parser traceback into the server's log.
    caplog.set_level(logging.INFO)
    reader, writer = await connect(guarded)
    writer.write(b"GET /v1/ca HTTP/1.1\r\nX-Junk: " + b"a" * 100_000 + b"\r\n\r\n")
    assert (await reader.readline()).split()[1] == b"400"
    writer.close()
    (record,) = [r for r in caplog.records if "bad HTTP request" in r.getMessage()]
    assert record.levelno == logging.INFO and record.exc_info is None
    assert record.getMessage().startswith("bad HTTP request from 127.0.0.1: 400 Got more than")
    assert len(record.getMessage()) < 250
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
