"""`shoal server`'s process set-up."""

from __future__ import annotations

import asyncio.sslproto
import gc
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.cli.server_cmds import SERVER_GC_FULL_EVERY, TLS_READ_BUFFER, tune_server_process
from shoal.control.ca import load_or_create_ca
from shoal.controlclient.tls import ssl_context

PAYLOAD = 200_000  # bytes each connection sends and gets back: many reads of the buffer
CONNECTIONS = 8


@pytest.fixture
def restored() -> Iterator[None]:
    """The tuning is process-wide: put the interpreter's settings back for the other tests."""
    protocol, thresholds = asyncio.sslproto.SSLProtocol, gc.get_threshold()
    buffer = protocol.max_size
    yield
    asyncio.sslproto.SSLProtocol = protocol  # type: ignore[misc]
    protocol.max_size = buffer
    gc.set_threshold(*thresholds)


def test_tuning_sets_tls_buffer_and_gc_thresholds(restored: None) -> None:
    tune_server_process()
    assert asyncio.sslproto.SSLProtocol.max_size == TLS_READ_BUFFER
    assert gc.get_threshold()[2] == SERVER_GC_FULL_EVERY


async def test_tls_connections_share_one_read_buffer_and_keep_their_bytes(
    restored: None, tmp_path: Path
) -> None:
    """Connections reading at the same time through the one shared buffer each get exactly
    their own bytes back, and hold no read buffer of their own."""
    tune_server_process()
    ca = load_or_create_ca(tmp_path, "127.0.0.1")
    protocols: list[asyncio.BaseProtocol] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        protocols.append(writer.transport._ssl_protocol)  # type: ignore[attr-defined]
        writer.write(await reader.readexactly(PAYLOAD))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(
        echo, "127.0.0.1", 0, ssl=ca.server_ssl_context(), limit=PAYLOAD
    )
    port = server.sockets[0].getsockname()[1]

    async def exchange() -> bool:
        payload = os.urandom(PAYLOAD)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ssl_context(ca.ca_pem), server_hostname="127.0.0.1"
        )
        writer.write(payload)
        await writer.drain()
        back = await reader.readexactly(PAYLOAD)
        writer.close()
        return back == payload

    async with server:
        assert await asyncio.gather(*(exchange() for _ in range(CONNECTIONS))) == [True] * 8
    buffers = {id(p._ssl_buffer) for p in protocols}  # type: ignore[attr-defined]
    assert len(protocols) == CONNECTIONS and len(buffers) == 1


async def test_each_thread_reads_through_a_buffer_of_its_own(restored: None) -> None:
    """An event loop in another thread never shares the buffer with this one's."""
    tune_server_process()
    loop = asyncio.get_running_loop()

    def buffer_of_a_new_protocol() -> int:
        protocol = asyncio.sslproto.SSLProtocol(
            loop, asyncio.Protocol(), ssl.create_default_context(), None
        )
        return id(protocol._ssl_buffer)  # type: ignore[attr-defined]

    here, again = buffer_of_a_new_protocol(), buffer_of_a_new_protocol()
    there = await asyncio.to_thread(buffer_of_a_new_protocol)
    assert here == again != there
