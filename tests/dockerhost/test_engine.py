"""The Engine API client against a fake dockerd: an aiohttp server on a unix socket in tmp_path
that answers what a test gives it and records the requests it got."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from shoal.dockerhost import DockerError, DockerHost, DockerUnavailable
from shoal.dockerhost.engine import Engine
from shoal.dockerhost.events import EventStream
from tests.dockerhost.test_host import CFG


class FakeDockerd:
    """Answers `/_ping` with `api_version` and every other path from `routes` (path without
    the version prefix → (status, JSON body)); 404 with Docker's message otherwise."""

    def __init__(self, sock: Path, api_version: str | None = "1.41") -> None:
        self.sock = sock
        self.api_version = api_version
        self.routes: dict[tuple[str, str], tuple[int, object]] = {}
        self.seen: list[tuple[str, str, str]] = []  # method, full path with query, body
        self.events: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.url = f"unix://{sock}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.text()
        self.seen.append((request.method, request.path_qs, body))
        if request.path == "/_ping":
            headers = {"API-Version": self.api_version} if self.api_version else {}
            return web.Response(text="OK", headers=headers)
        _, _, path = request.path.removeprefix("/").partition("/")
        if path == "events":
            resp = web.StreamResponse()
            await resp.prepare(request)
            while (chunk := await self.events.get()) is not None:
                await resp.write(chunk)
            return resp
        status, answer = self.routes.get((request.method, "/" + path), (404, None))
        if isinstance(answer, bytes):
            return web.Response(body=answer, status=status, content_type="application/json")
        if answer is None:
            answer = {"message": f"no such object: {path}"}
        return web.json_response(answer, status=status)


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeDockerd]:
    daemon = FakeDockerd(tmp_path / "docker.sock")
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", daemon.handle)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    await web.UnixSite(runner, str(daemon.sock)).start()
    try:
        yield daemon
    finally:
        await daemon.events.put(None)
        await runner.cleanup()


async def test_the_version_is_negotiated_once_and_capped(fake: FakeDockerd) -> None:
    fake.routes[("GET", "/networks")] = (200, [])
    host = DockerHost(fake.url)
    await host.network_subnets()
    await host.network_subnets()
    assert [path for _, path, _ in fake.seen] == ["/_ping", "/v1.41/networks", "/v1.41/networks"]

    newer = DockerHost(fake.url)
    fake.api_version = "1.99"  # a daemon newer than shoal: asked for the newest shoal knows
    await newer.network_subnets()
    assert fake.seen[-1][1] == "/v1.52/networks"


async def test_a_daemon_without_a_version_is_refused_by_name(fake: FakeDockerd) -> None:
    fake.api_version = None
    with pytest.raises(DockerError, match="names no API version: it is too old"):
        await DockerHost(fake.url).ping()


async def test_refusals_carry_the_daemons_message(fake: FakeDockerd) -> None:
    fake.routes[("GET", "/networks/shoal")] = (
        200,
        {"Name": "shoal", "Id": "n1", "Driver": "bridge", "IPAM": {}, "Options": {}},
    )
    fake.routes[("DELETE", "/networks/n1")] = (403, {"message": "network n1 is busy"})
    host = DockerHost(fake.url)
    with pytest.raises(DockerError, match=r"^remove network shoal: network n1 is busy$"):
        await host.remove_network("shoal")
    fake.routes[("GET", "/networks")] = (500, {"message": "boom"})
    with pytest.raises(DockerError, match=r"^list networks: boom$") as info:
        await host.network_subnets()
    assert not isinstance(info.value, DockerUnavailable)


async def test_missing_objects_are_none_not_errors(fake: FakeDockerd) -> None:
    host = DockerHost(fake.url)
    assert await host.container_pid("abc") is None
    assert await host.network_drift(CFG) == "missing"
    # A network found by id prefix, not by its name, is not the one asked for.
    fake.routes[("GET", "/networks/shoal")] = (200, {"Name": "other", "Id": "shoal0"})
    assert await host.network_drift(CFG) == "missing"


async def test_create_sends_the_network_docker_expects(fake: FakeDockerd) -> None:
    fake.routes[("POST", "/networks/create")] = (201, {"Id": "n2", "Warning": ""})
    assert await DockerHost(fake.url).ensure_network(CFG) is True
    method, path, body = fake.seen[-1]
    assert (method, path) == ("POST", "/v1.41/networks/create")
    assert json.loads(body) == {
        "Name": "shoal",
        "Driver": "bridge",
        "IPAM": {
            "Driver": "default",
            "Config": [{"Subnet": "10.42.1.0/24", "Gateway": "10.42.1.1"}],
        },
        "Options": {
            "com.docker.network.bridge.name": "shoal-br0",
            "com.docker.network.driver.mtu": "1420",
            "com.docker.network.bridge.enable_ip_masquerade": "false",
        },
        "Labels": {"io.shoal.managed": "1"},
        "CheckDuplicate": True,
    }


async def test_malformed_json_is_a_docker_error(fake: FakeDockerd) -> None:
    fake.routes[("GET", "/networks")] = (200, b"[{not json")
    with pytest.raises(DockerError, match="list networks: dockerd answered with malformed JSON"):
        await DockerHost(fake.url).network_subnets()


async def test_an_absent_socket_is_unavailable(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/none.sock"
    with pytest.raises(DockerUnavailable, match=f"cannot reach dockerd at {url}"):
        await DockerHost(url).ping()


def test_urls_of_other_kinds_are_refused_at_once() -> None:
    with pytest.raises(DockerError, match=r"unsupported Docker URL 'ssh://h': use unix:///PATH"):
        Engine("ssh://h")
    assert Engine("tcp://127.0.0.1:2375").url == "tcp://127.0.0.1:2375"


def test_docker_host_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/other.sock")
    assert DockerHost().url == "unix:///run/other.sock"
    monkeypatch.delenv("DOCKER_HOST")
    assert DockerHost().url == "unix:///var/run/docker.sock"


async def test_events_stream_in_order_and_end_with_the_daemon(fake: FakeDockerd) -> None:
    event = {"Type": "container", "Action": "start", "Actor": {"ID": "c1"}, "timeNano": 5}
    host = DockerHost(fake.url)
    async with EventStream(host, {"type": ["container"]}, since="1.000000002") as stream:
        assert fake.seen[-1][1] == (
            "/v1.41/events?filters=%7B%22type%22:%5B%22container%22%5D%7D&since=1.000000002"
        )
        # Two events in one write, the second split across writes: read whole, in order.
        line = json.dumps(event).encode() + b"\n"
        await fake.events.put(line + line[:10])
        await fake.events.put(line[10:])
        first = await stream.next(timeout=5)
        assert first is not None and (first.actor, first.time_nano) == ("c1", 5)
        assert await stream.next(timeout=5) == first
        with pytest.raises(TimeoutError):
            await stream.next(timeout=0.01)
        assert stream.next_nowait() is None
        await fake.events.put(None)  # the daemon ends the stream
        assert await stream.next(timeout=5) is None
        assert await stream.next() is None


async def test_a_garbled_event_ends_the_stream_with_a_docker_error(fake: FakeDockerd) -> None:
    async with EventStream(DockerHost(fake.url), {}) as stream:
        await fake.events.put(b"{not json\n")
        with pytest.raises(DockerError, match="read events: dockerd sent malformed JSON"):
            await stream.next(timeout=5)
