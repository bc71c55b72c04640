"""ContainerWatcher against a real dockerd in a throwaway network namespace."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from ipaddress import IPv4Address

import pytest

from shoal.dockerhost import ContainerWatcher, DockerHost
from shoal.dockerhost.events import READER_TASK, DockerEvent
from shoal.model.api import ContainerReport
from shoal.model.netmap import PortSpec
from tests.dockerhost.conftest import IMAGE, Dockerd

Reports = dict[str, ContainerReport]  # by name


class Recorder:
    """An on_change that keeps every call (with its monotonic time) and can be waited on."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, list[ContainerReport]]] = []
        self._cond = asyncio.Condition()

    async def __call__(self, reports: list[ContainerReport]) -> None:
        self.calls.append((time.monotonic(), reports))
        async with self._cond:
            self._cond.notify_all()

    @property
    def last(self) -> Reports:
        return {r.name: r for r in self.calls[-1][1]} if self.calls else {}

    def history(self, name: str) -> list[ContainerReport | None]:
        """What each call said about container `name` (None: absent)."""
        return [next((r for r in reports if r.name == name), None) for _, reports in self.calls]

    async def wait(self, pred: Callable[[Reports], bool], timeout: float = 15) -> Reports:
        try:
            async with asyncio.timeout(timeout), self._cond:
                await self._cond.wait_for(lambda: bool(self.calls) and pred(self.last))
        except TimeoutError:
            raise AssertionError(f"condition not met in {timeout} s; last: {self.last}") from None
        return self.last


async def docker(d: Dockerd, *argv: str) -> str:
    """The docker CLI, off the event loop (the watcher runs on it meanwhile)."""
    return (await asyncio.to_thread(d.cli, *argv)).stdout.strip()


async def run(d: Dockerd, name: str, *opts: str, network: str = "shoal") -> str:
    # --init: tini as PID 1 passes SIGTERM on, so `docker stop` and dockerd's shutdown are quick.
    return await docker(
        d, "run", "-d", "--init", "--name", name, "--network", network, *opts,
        IMAGE, "sleep", "600",
    )  # fmt: skip


async def ip_of(d: Dockerd, name: str, network: str = "shoal") -> IPv4Address:
    attrs = json.loads(await docker(d, "inspect", name))[0]
    return IPv4Address(attrs["NetworkSettings"]["Networks"][network]["IPAddress"])


def readers() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == READER_TASK and not t.done()]


@contextlib.asynccontextmanager
async def watching(watcher: ContainerWatcher) -> AsyncIterator[ContainerWatcher]:
    task = asyncio.create_task(watcher.run(), name="container-watcher")
    try:
        yield watcher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # Cancelling closes the stream: its reader task is gone with it.
        assert not readers(), "the event reader outlived the watcher"


def networks(d: Dockerd) -> None:
    """The `shoal` network, another one, and the test image."""
    d.image()
    d.cli("network", "create", "--subnet", "10.42.1.0/24", "shoal")
    d.cli("network", "create", "--subnet", "10.99.0.0/24", "other")


async def test_lifecycle_of_containers_on_the_network(dockerd: Dockerd) -> None:
    networks(dockerd)
    rec = Recorder()
    async with watching(ContainerWatcher(DockerHost(dockerd.url), "shoal", rec)):
        await rec.wait(lambda r: True)
        assert rec.calls[0][1] == []  # the initial list is reported even when empty

        web = await run(
            dockerd, "web",
            "--label", "com.docker.compose.project=app",
            "--label", "com.docker.compose.service=web",
            "--expose", "80", "--expose", "53/udp",
        )  # fmt: skip
        seen = await rec.wait(lambda r: "web" in r)
        assert seen["web"] == ContainerReport(
            id=web,
            name="web",
            ip=await ip_of(dockerd, "web"),
            project="app",
            service="web",
            ports=(PortSpec(port=53, protocol="udp"), PortSpec(port=80, protocol="tcp")),
            health="none",
        )

        # On another network: not reported; connected to ours: reported with that address.
        await run(dockerd, "elsewhere", network="other")
        await run(dockerd, "marker")
        assert "elsewhere" not in await rec.wait(lambda r: "marker" in r)
        await docker(dockerd, "network", "connect", "shoal", "elsewhere")
        seen = await rec.wait(lambda r: "elsewhere" in r)
        assert seen["elsewhere"].ip == await ip_of(dockerd, "elsewhere")
        await docker(dockerd, "network", "disconnect", "shoal", "elsewhere")
        await rec.wait(lambda r: "elsewhere" not in r)

        # A failing health check: starting, then unhealthy, each reported.
        await run(
            dockerd, "sick",
            "--health-cmd", "exit 1", "--health-interval", "300ms", "--health-retries", "1",
        )  # fmt: skip
        await rec.wait(lambda r: "sick" in r and r["sick"].health == "unhealthy")
        healths = [r.health for r in rec.history("sick") if r is not None]
        assert healths[:1] == ["starting"] and healths[-1] == "unhealthy"

        await docker(dockerd, "stop", "web")
        await rec.wait(lambda r: "web" not in r)

        # Every call is a change, sorted by id.
        lists = [reports for _, reports in rec.calls]
        assert all(a != b for a, b in itertools.pairwise(lists))
        assert all(reports == sorted(reports, key=lambda r: r.id) for reports in lists)


async def test_reconnects_after_dockerd_restarts(dockerd: Dockerd) -> None:
    networks(dockerd)
    rec = Recorder()
    watcher = ContainerWatcher(DockerHost(dockerd.url), "shoal", rec)
    async with watching(watcher):
        await run(dockerd, "before")
        await rec.wait(lambda r: "before" in r)

        await asyncio.to_thread(dockerd.stop)  # SIGTERM by PID; it stops `before` on the way
        await asyncio.to_thread(dockerd.start)
        await run(dockerd, "after")
        seen = await rec.wait(lambda r: "after" in r and "before" not in r)
        assert seen["after"].ip == await ip_of(dockerd, "after")
        assert watcher.subscriptions >= 2


class Deaf(ContainerWatcher):
    """Hears no event at all: what a silently stalled stream looks like."""

    def relevant(self, event: DockerEvent) -> bool:
        return False


async def test_periodic_resync_catches_what_the_stream_missed(dockerd: Dockerd) -> None:
    networks(dockerd)
    rec = Recorder()
    watcher = Deaf(DockerHost(dockerd.url), "shoal", rec, resync_seconds=0.3)
    async with watching(watcher):
        await rec.wait(lambda r: True)
        await run(dockerd, "late")
        await rec.wait(lambda r: "late" in r, timeout=3)
        # A whole quiet period re-subscribes (a stalled stream would never recover otherwise).
        deadline = time.monotonic() + 3
        while watcher.subscriptions < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert watcher.subscriptions >= 2


async def test_without_dockerd_it_keeps_retrying_and_stops_when_cancelled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = Recorder()

    def retries() -> int:
        return sum("retrying in" in r.getMessage() for r in caplog.records)

    async with watching(ContainerWatcher(DockerHost("unix:///nonexistent/d.sock"), "shoal", rec)):
        async with asyncio.timeout(5):  # backoff 0.1 s, then 0.2 s
            while retries() < 3:
                await asyncio.sleep(0.01)
    assert rec.calls == []
