"""The control client against a real server: CA pinning and typed errors."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
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
