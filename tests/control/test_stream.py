"""The netmap stream (`GET /v1/netmap/stream`): the real server over TLS on 127.0.0.1 and the
real client's `watch`. One held response per node carries its catch-up, every change and the
heartbeats; each change is encoded once for every node it is the same for; the stream is the
node's heartbeat; a newer watch, a removal or a shutdown ends it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import aclosing
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import aiohttp
import pytest
from aiohttp import web

from shoal.control import api as api_module
from shoal.control import service as service_module
from shoal.control.api import METRICS
from shoal.control.app import RunningServer
from shoal.control.encoding import MapEncoder
from shoal.control.service import Send
from shoal.controlclient.client import STREAM_PATH
from shoal.controlclient.errors import ControlProtocolError, CredentialRejected
from shoal.controlclient.tls import ssl_context
from shoal.model.api import ContainerReport, ContainersReport
from shoal.model.keys import PrivateKey
from shoal.model.netmap import MapUpdate
from tests.control.servers import FakeClock, admin_client, join, node_client, running_server


async def _until(probe: Callable[[], bool], what: str) -> None:
    """Let the server's loopback I/O happen until `probe` holds (bounded)."""
    for _ in range(500):
        if probe():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


@pytest.fixture(autouse=True)
def short_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    """Heartbeats every 50 ms instead of every second at least: tests wait on frames."""
    monkeypatch.setattr(service_module, "MIN_STREAM_WAIT", 0.05)


async def test_the_stream_carries_the_catch_up_then_each_change(server: RunningServer) -> None:
    alpha = await join(server, "alpha")
    async with (
        node_client(server, alpha.key) as client,
        aclosing(client.watch(since=0, wait=30)) as updates,
    ):
        first = await anext(updates)
        assert first.kind == "full" and first.full is not None
        netmap = first.full
        beta = await join(server, "beta")
        update = await anext(updates)
        assert update.kind == "delta" and [p.name for p in update.peers_changed] == ["beta"]
        netmap = netmap.apply(update)
        async with node_client(server, beta.key) as b:
            assert beta.netmap.self_node.subnet is not None
            ip = beta.netmap.self_node.subnet.network_address + 2
            await b.report_containers(
                ContainersReport(containers=(ContainerReport(id="c" * 64, name="web", ip=ip),))
            )
        update = await anext(updates)
        netmap = netmap.apply(update)
    assert [c.name for c in netmap.containers] == ["web"]
    assert netmap.peer(beta.node_id) is not None


async def test_a_stream_resumes_from_its_revision(server: RunningServer) -> None:
    alpha = await join(server, "alpha")
    await join(server, "beta")
    async with node_client(server, alpha.key) as client:
        async with aclosing(client.watch(since=alpha.netmap.revision, wait=30)) as updates:
            update = await anext(updates)
        assert update.kind == "delta" and [p.name for p in update.peers_changed] == ["beta"]
        async with aclosing(client.watch(since=update.revision, wait=30)) as updates:
            assert (await anext(updates)).kind == "none"  # up to date: nothing re-sent


async def test_a_quiet_stream_sends_heartbeats_that_keep_its_node_online(
    tmp_path: Path, clock: FakeClock
) -> None:
    async with running_server(tmp_path / "server", clock, heartbeat_timeout=15) as server:
        alpha = await join(server, "alpha")
        async with (
            node_client(server, alpha.key) as client,
            aclosing(client.watch(since=alpha.netmap.revision, wait=0)) as updates,
        ):
            await anext(updates)
            clock.advance(20)  # past the heartbeat timeout, with no request but the stream
            assert (await anext(updates)).kind == "none"
            await server.service.sweep()
            assert server.service.registry.online(alpha.node_id)
        await _until(lambda: server.runner.app[METRICS].long_polls_open == 0, "stream ended")
        clock.advance(20)  # the stream is gone: the node falls silent
        await server.service.sweep()
        assert not server.service.registry.online(alpha.node_id)


async def test_every_node_gets_the_same_update_for_a_change(server: RunningServer) -> None:
    """Encoded once: the encoder hands every stream the cached bytes of one shared update."""
    alpha, beta = await join(server, "alpha"), await join(server, "beta")
    service = server.service
    since = service.registry.revision
    async with (
        aclosing(service.watch(alpha.node_id, since, 30)) as a,
        aclosing(service.watch(beta.node_id, since, 30)) as b,
    ):
        assert (await anext(a)).kind == (await anext(b)).kind == "none"
        await join(server, "gamma")
        seen_by_a, seen_by_b = await anext(a), await anext(b)
    assert seen_by_a is seen_by_b


async def test_a_newer_watch_of_the_node_ends_the_older_stream(server: RunningServer) -> None:
    alpha = await join(server, "alpha")
    async with node_client(server, alpha.key) as one, node_client(server, alpha.key) as two:
        older = one.watch(since=alpha.netmap.revision, wait=30)
        assert (await anext(older)).kind == "none"
        async with aclosing(two.watch(since=alpha.netmap.revision, wait=30)) as newer:
            assert (await anext(newer)).kind == "none"
            with pytest.raises(StopAsyncIteration):
                await anext(older)  # ended by the server, cleanly


async def test_a_removed_node_is_told_when_it_opens_the_next_stream(
    server: RunningServer,
) -> None:
    alpha = await join(server, "alpha")
    async with node_client(server, alpha.key) as client:
        updates = client.watch(since=alpha.netmap.revision, wait=30)
        await anext(updates)
        async with admin_client(server) as admin:
            await admin.remove_node("alpha")
        with pytest.raises(StopAsyncIteration):
            await anext(updates)
        with pytest.raises(CredentialRejected):
            await anext(client.watch(since=alpha.netmap.revision, wait=30))


async def test_a_server_shutting_down_ends_its_streams(tmp_path: Path) -> None:
    async with running_server(tmp_path / "server") as server:
        alpha = await join(server, "alpha")
        client = node_client(server, alpha.key)
        async with client:
            updates = client.watch(since=alpha.netmap.revision, wait=30)
            await anext(updates)
            await server.close()
            with pytest.raises(StopAsyncIteration):
                await anext(updates)


@pytest.mark.parametrize("query", ["since=-1", "since=x", "wait=-1"])
async def test_bad_stream_parameters_are_a_400_before_any_frame(
    server: RunningServer, query: str
) -> None:
    alpha = await join(server, "alpha")
    async with node_client(server, alpha.key) as client:
        # The client builds valid queries: sign one by hand, as a broken client would send.
        target = f"{STREAM_PATH}?{query}"
        auth = await client._signature("GET", target, b"")
    connector = aiohttp.TCPConnector(ssl=ssl_context(server.ca.ca_pem))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(server.url + target, headers={"Authorization": auth}) as resp,
    ):
        assert resp.status == 400
        assert (await resp.json())["code"] == "bad_request"


@pytest.mark.parametrize("signed", ["unsigned", "signed for another target", "stranger"])
async def test_a_stream_without_a_valid_node_signature_is_a_401_before_any_frame(
    server: RunningServer, signed: str
) -> None:
    alpha = await join(server, "alpha")
    target = f"{STREAM_PATH}?since=0&wait=30"
    headers: dict[str, str] = {}
    if signed != "unsigned":
        key = alpha.key if signed != "stranger" else PrivateKey.generate()
        async with node_client(server, key) as client:
            path = target if signed == "stranger" else "/v1/netmap?since=0&wait=30"
            headers["Authorization"] = await client._signature("GET", path, b"")
    connector = aiohttp.TCPConnector(ssl=ssl_context(server.ca.ca_pem))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(server.url + target, headers=headers) as resp,
    ):
        assert resp.status == 401
        assert (await resp.read()).count(b"\n") <= 1  # one error, no netmap frame


async def test_a_frame_that_is_no_update_is_a_protocol_error(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    alpha = await join(server, "alpha")
    monkeypatch.setattr(
        "shoal.control.encoding.MapEncoder._encode", lambda self, update: b'{"kind": "bogus"}'
    )
    async with node_client(server, alpha.key) as client:
        with pytest.raises(ControlProtocolError, match="unexpected /v1/netmap/stream frame"):
            await anext(client.watch(since=0, wait=30))


async def test_an_old_client_still_long_polls(server: RunningServer) -> None:
    alpha = await join(server, "alpha")
    async with node_client(server, alpha.key) as client:
        update: MapUpdate = await client.poll(since=0, wait=0)
    assert update.kind == "full"


async def test_a_frame_larger_than_a_piece_arrives_whole(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full map written in many pieces (each at most FRAME_PIECE bytes: what TLS buffers
    per connection) is still one frame: the client gets the map the registry holds."""
    monkeypatch.setattr(api_module, "FRAME_PIECE", 256)
    nodes = [await join(server, f"n{i}") for i in range(4)]
    async with (
        node_client(server, nodes[0].key) as client,
        aclosing(client.watch(since=0, wait=30)) as updates,
    ):
        first = await anext(updates)
        assert first.kind == "full" and first.full is not None
        assert first.full == server.service.registry.full_map(nodes[0].netmap.self_node.id)
        assert len(first.model_dump_json()) > 4 * 256


async def test_frames_are_written_in_pieces_of_at_most_frame_piece_bytes() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        async def write(self, data: bytes | memoryview) -> None:
            self.writes.append(bytes(data))

    frame = bytes(range(256)) * 200 + b"\n"  # 51,201 bytes
    recorder = Recorder()
    await api_module._write_frame(recorder, frame)  # type: ignore[arg-type]
    assert b"".join(recorder.writes) == frame
    assert max(map(len, recorder.writes)) == api_module.FRAME_PIECE and len(recorder.writes) == 4
    small = Recorder()
    await api_module._write_frame(small, b"{}\n")  # type: ignore[arg-type]
    assert small.writes == [b"{}\n"]


async def test_a_change_is_pushed_to_streams_and_a_nodes_own_comes_from_its_task(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change every stream gets alike is written from the wake-up (the streams' tasks stay
    asleep); the node whose own record changed gets its own update the long way, and every
    client reads the same maps either way."""
    pushed: list[int] = []
    make_sender = api_module._sender

    def counting(request: web.Request, encoder: MapEncoder) -> Send:
        send = make_sender(request, encoder)

        def counted(update: MapUpdate) -> bool:
            taken = send(update)
            if taken:
                pushed.append(update.revision)
            return taken

        return counted

    monkeypatch.setattr(api_module, "_sender", counting)
    alpha, beta = await join(server, "alpha"), await join(server, "beta")
    since = server.service.registry.revision
    async with (
        node_client(server, alpha.key) as a,
        node_client(server, beta.key) as b,
        aclosing(a.watch(since=since, wait=30)) as alphas,
        aclosing(b.watch(since=since, wait=30)) as betas,
    ):
        assert (await anext(alphas)).kind == (await anext(betas)).kind == "none"
        gamma = await join(server, "gamma")
        for updates in (alphas, betas):
            update = await anext(updates)
            assert [p.name for p in update.peers_changed] == ["gamma"]
        assert pushed == [gamma.netmap.revision] * 2

        await a.rotate(PrivateKey.generate())  # alpha's own record changes
        own, seen_by_beta = await anext(alphas), await anext(betas)
        assert own.self_node is not None and own.self_node.name == "alpha"
        assert [p.name for p in seen_by_beta.peers_changed] == ["alpha"]
        assert pushed[2:] == [seen_by_beta.revision]  # beta's only


def test_a_push_waits_for_a_backed_up_connection_and_leaves_large_frames_to_the_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Transport:
        def __init__(self, backlog: int) -> None:
            self.backlog = backlog
            self.written: list[bytes] = []

        def is_closing(self) -> bool:
            return False

        def get_write_buffer_size(self) -> int:
            return self.backlog

        def write(self, data: bytes) -> None:
            self.written.append(data)

    encoder = MapEncoder()
    update = MapUpdate(kind="none", revision=7)
    line = encoder.line(update)
    quiet = Transport(0)
    send = api_module._sender(cast(web.Request, SimpleNamespace(transport=quiet)), encoder)
    assert send(update)
    assert quiet.written == [b"%x\r\n" % len(line) + line + b"\r\n"]  # one HTTP/1.1 chunk
    busy = Transport(api_module.PUSH_BACKLOG)
    assert not api_module._sender(cast(web.Request, SimpleNamespace(transport=busy)), encoder)(
        update
    )
    assert busy.written == []
    monkeypatch.setattr(api_module, "FRAME_PIECE", len(line) - 1)
    assert not send(update)
    assert len(quiet.written) == 1


async def test_an_http_1_0_stream_gets_plain_lines_for_pushed_changes(
    server: RunningServer,
) -> None:
    """HTTP/1.0 has no chunked bodies (an nginx in front speaks it to the server by default):
    the stream's body is its frames as they are, pushed or not."""
    alpha = await join(server, "alpha")
    since = server.service.registry.revision
    target = f"{STREAM_PATH}?since={since}&wait=30"
    async with node_client(server, alpha.key) as client:
        auth = await client._signature("GET", target, b"")
    connector = aiohttp.TCPConnector(ssl=ssl_context(server.ca.ca_pem))
    async with (
        aiohttp.ClientSession(connector=connector, version=aiohttp.HttpVersion10) as session,
        session.get(server.url + target, headers={"Authorization": auth}) as resp,
    ):
        assert resp.status == 200 and "Transfer-Encoding" not in resp.headers
        first = MapUpdate.model_validate_json(await resp.content.readline())
        assert first.kind == "none"
        await join(server, "beta")
        update = MapUpdate.model_validate_json(await resp.content.readline())
    assert [p.name for p in update.peers_changed] == ["beta"]
