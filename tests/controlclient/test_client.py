"""The control client against a real server: CA pinning and typed errors."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from aiohttp import web

from shoal.control.app import RunningServer
from shoal.control.ca import load_or_create_ca
from shoal.controlclient import client as client_module
from shoal.controlclient.client import ControlClient
from shoal.controlclient.errors import (
    ControlProtocolError,
    ControlRejected,
    ControlUnreachable,
    FingerprintMismatch,
)
from shoal.controlclient.tls import fetch_pinned_ca
from shoal.model.api import ServerKey
from shoal.model.keys import PrivateKey
from shoal.model.netmap import MapUpdate, Node
from shoal.model.tokens import MalformedToken, parse_join_token
from tests.control.servers import join, new_token, running_server


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with running_server(tmp_path / "server") as running:
        yield running


@pytest.fixture
async def other_server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with running_server(tmp_path / "other") as running:
        yield running


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_join_the_way_the_agent_does(server: RunningServer) -> None:
    token = parse_join_token(await new_token(server))
    ca_pem = await fetch_pinned_ca(server.url, token.fingerprint)
    assert ca_pem == server.ca.ca_pem
    response = await join(server, "alpha", token=str(token))
    async with ControlClient(server.url, ca_pem, node_key=response.key) as client:
        assert (await client.poll(since=0, wait=0)).kind == "full"


async def test_fetch_pinned_ca_refuses_another_server(
    server: RunningServer, other_server: RunningServer
) -> None:
    token = parse_join_token(await new_token(server))
    with pytest.raises(FingerprintMismatch, match="wrong server URL, or a token from another"):
        await fetch_pinned_ca(other_server.url, token.fingerprint)


async def test_client_refuses_a_certificate_from_another_ca(
    server: RunningServer, other_server: RunningServer
) -> None:
    async with ControlClient(other_server.url, server.ca.ca_pem) as client:
        with pytest.raises(FingerprintMismatch, match="not signed by the pinned CA"):
            await client.poll(since=0, wait=0)


async def test_unreachable_server() -> None:
    url = f"https://127.0.0.1:{closed_port()}"
    with pytest.raises(ControlUnreachable, match=f"cannot reach server at {url}"):
        await fetch_pinned_ca(url, "00" * 32)


async def test_unreachable_is_not_rejected(server: RunningServer) -> None:
    url = f"https://127.0.0.1:{closed_port()}"
    async with ControlClient(url, server.ca.ca_pem, "x") as client:
        with pytest.raises(ControlUnreachable) as err:
            await client.poll(since=0, wait=0)
    assert not isinstance(err.value, ControlRejected)


def test_malformed_token_is_caught_before_any_io() -> None:
    with pytest.raises(MalformedToken) as err:
        parse_join_token("SWMTKN-1-abc")
    assert err.value.code == "token_malformed"


@pytest.fixture
async def garbled(tmp_path: Path) -> AsyncIterator[tuple[str, bytes]]:
    """A TLS server with a pinned CA that answers 200 with nonsense: JSON of the wrong shape
    for the netmap, a captive portal's HTML for everything else."""
    ca = load_or_create_ca(tmp_path, "127.0.0.1")

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/v1/netmap":
            return web.json_response({"kind": "sideways"})
        return web.Response(text="<html>a captive portal</html>", content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ca.server_ssl_context())
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://127.0.0.1:{port}", ca.ca_pem
    finally:
        await runner.cleanup()


Call = Callable[[ControlClient], Awaitable[object]]


@pytest.mark.parametrize(
    ("call", "what"),
    [
        (lambda c: c.poll(since=0, wait=0), "sent an unexpected /v1/netmap reply"),
        (lambda c: c.list_nodes(), "sent non-JSON for /v1/admin/nodes"),
    ],
    ids=["poll", "list_nodes"],
)
async def test_a_garbled_reply_is_a_protocol_error_not_unreachable(
    garbled: tuple[str, bytes], call: Call, what: str
) -> None:
    url, ca_pem = garbled
    async with ControlClient(url, ca_pem, "x") as client:
        with pytest.raises(ControlProtocolError, match=what) as err:
            await call(client)
    assert not isinstance(err.value, ControlUnreachable)


async def test_a_host_clock_off_by_an_hour_still_signs_in_the_servers_window(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signatures carry a timestamp: the client follows the server's Date, before its first
    signed call and again when its clock jumps between calls."""
    node = await join(server, "alpha")
    monkeypatch.setattr(client_module, "wall_clock", lambda: time.time() + 3600)
    async with ControlClient(server.url, server.ca.ca_pem, node_key=node.key) as client:
        assert (await client.poll(since=0, wait=0)).kind == "full"
        monkeypatch.setattr(client_module, "wall_clock", lambda: time.time() - 7200)
        assert (await client.poll(since=0, wait=0)).kind == "full"  # one 401, then corrected


Chunks = list[bytes]


@pytest.fixture
async def streaming(tmp_path: Path) -> AsyncIterator[tuple[str, bytes, Chunks]]:
    """A TLS server with a pinned CA whose /v1/netmap/stream writes the chunks of the list
    it yields (filled in by the test), each written and flushed alone, then ends the stream;
    a chunk b"RESET" drops the connection there instead."""
    ca = load_or_create_ca(tmp_path, "127.0.0.1")
    chunks: Chunks = []

    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for chunk in chunks:
            if chunk == b"RESET":
                assert request.transport is not None
                request.transport.abort()
                return response
            await response.write(chunk)
        return response

    async def key(request: web.Request) -> web.Response:
        server_key = ServerKey(public_key=PrivateKey.generate().public_key())
        return web.json_response(text=server_key.model_dump_json())

    app = web.Application()
    app.router.add_get("/v1/netmap/stream", handle)
    app.router.add_get("/v1/key", key)  # what the client signs with is derived from it
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ca.server_ssl_context())
    await site.start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}", ca.ca_pem, chunks
    finally:
        await runner.cleanup()


def frame(revision: int, peers: int = 0) -> bytes:
    """A delta of `peers` changed peers as the server encodes it, and its newline."""
    nodes = [
        Node(
            id=f"n{i:011d}",
            name=f"h{i}",
            public_key=PrivateKey.generate().public_key(),
            mesh_ip=IPv4Address("100.64.0.1") + i,
            subnet=None,
        )
        for i in range(peers)
    ]
    update = MapUpdate(kind="delta", revision=revision, peers_changed=tuple(nodes))
    return update.model_dump_json().encode() + b"\n"


async def test_a_stream_is_read_frame_by_frame_however_it_is_cut(
    streaming: tuple[str, bytes, Chunks],
) -> None:
    url, ca_pem, chunks = streaming
    big = frame(2, peers=1000)  # ~300 KB: beyond what aiohttp's readline takes
    data = frame(1) + big + frame(3)
    chunks += [data[:7], data[7 : len(data) - 100], data[len(data) - 100 :]]
    async with ControlClient(url, ca_pem, node_key=PrivateKey.generate()) as client:
        updates = [u async for u in client.watch(since=0, wait=30)]
    assert [u.revision for u in updates] == [1, 2, 3]
    assert len(updates[1].peers_changed) == 1000


async def test_a_stream_broken_mid_frame_is_unreachable(
    streaming: tuple[str, bytes, Chunks],
) -> None:
    url, ca_pem, chunks = streaming
    chunks += [frame(1), frame(2)[:10], b"RESET"]
    async with ControlClient(url, ca_pem, node_key=PrivateKey.generate()) as client:
        updates = client.watch(since=0, wait=30)
        assert (await anext(updates)).revision == 1
        with pytest.raises(ControlUnreachable, match=f"netmap stream from {url} broke"):
            await anext(updates)


async def test_a_frame_over_the_limit_is_a_protocol_error(
    streaming: tuple[str, bytes, Chunks], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ca_pem, chunks = streaming
    monkeypatch.setattr(client_module, "MAX_FRAME", 1000)
    chunks += [b"{" + b" " * 600, b" " * 600]
    async with ControlClient(url, ca_pem, node_key=PrivateKey.generate()) as client:
        with pytest.raises(ControlProtocolError, match="netmap frame over 1000 bytes"):
            await anext(client.watch(since=0, wait=30))


async def test_a_stream_opens_on_the_next_replica_when_the_first_is_gone(
    server: RunningServer,
) -> None:
    alpha = await join(server, "alpha")
    urls = f"https://127.0.0.1:{closed_port()},{server.url}"
    async with ControlClient(urls, server.ca.ca_pem, node_key=alpha.key) as client:
        updates = client.watch(since=0, wait=30)
        assert (await anext(updates)).kind == "full"
        assert client.server_url == server.url  # and stays there
        await updates.aclose()
