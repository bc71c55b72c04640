"""The first stage of shoal's DNS convergence: from `docker run -d` returning to the agent's
`ContainerWatcher` reporting the container (its `on_change`), against a real dockerd.

The watcher runs in this process against the dockerd at `docker_url`, as the agent runs it;
containers are started one by one with the docker CLI. Also measured: the container listing
the watcher calls (`DockerHost.shoal_containers`), with its inspect cache warm and cold.
Units: milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import subprocess
import time
from datetime import datetime

from benchmarks.typed import Frozen
from shoal.dockerhost import ContainerWatcher, DockerHost
from shoal.model.api import ContainerReport

LISTING_RUNS = 20
WAIT_SECONDS = 30.0  # for one container to be reported


class WatchError(Exception):
    """The measurement could not run: the docker CLI failed, or a container was never seen."""


class Spread(Frozen):
    """Median and maximum of a sample, ms; `all_ms` sorted."""

    p50: float
    max: float
    all_ms: tuple[float, ...]

    @classmethod
    def of(cls, values_s: list[float]) -> Spread:
        ms = sorted(round(v * 1000, 2) for v in values_s)
        return cls(p50=statistics.median(ms), max=ms[-1], all_ms=tuple(ms))


class WatchLatency(Frozen):
    """`docker run -d` returned → on_change (negative: reported before the CLI returned);
    the container's StartedAt → on_change; the listing with its cache warm and cold."""

    containers: int
    run_returned_to_report_ms: Spread
    started_at_to_report_ms: Spread
    listing_warm_p50_ms: float
    listing_cold_ms: float


class _Recorder:
    """An on_change that keeps the monotonic and wall time at which each name was first seen."""

    def __init__(self) -> None:
        self.first_seen: dict[str, tuple[float, float]] = {}
        self._cond = asyncio.Condition()

    async def __call__(self, reports: list[ContainerReport]) -> None:
        mono, wall = time.monotonic(), time.time()
        for report in reports:
            self.first_seen.setdefault(report.name, (mono, wall))
        async with self._cond:
            self._cond.notify_all()

    async def seen(self, name: str) -> tuple[float, float]:
        try:
            async with asyncio.timeout(WAIT_SECONDS), self._cond:
                await self._cond.wait_for(lambda: name in self.first_seen)
        except TimeoutError:
            raise WatchError(f"{name} not reported within {WAIT_SECONDS:g} s") from None
        return self.first_seen[name]


async def _docker(docker_url: str, *argv: str, check: bool = True) -> str:
    """The docker CLI against `docker_url`, off the event loop (the watcher runs on it)."""
    proc = await asyncio.to_thread(
        subprocess.run, ["docker", "-H", docker_url, *argv], capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise WatchError(f"docker {argv[0]}: {proc.stderr.strip()[-300:]}")
    return proc.stdout.strip()


def _started_at(inspect_json: str) -> float:
    """The container's State.StartedAt (RFC 3339, nanoseconds) as a Unix time."""
    started = json.loads(inspect_json)[0]["State"]["StartedAt"]
    return datetime.fromisoformat(started[:26] + "+00:00").timestamp()


async def watch_latency(
    docker_url: str, network: str, image: str, count: int, prefix: str
) -> WatchLatency:
    """Start `count` containers named `prefix`0.. on `network` one by one, each timed until the
    watcher reports it; then time the listing. The containers are removed afterwards."""
    recorder = _Recorder()
    host = DockerHost(docker_url)
    watcher = ContainerWatcher(host, network, recorder)
    names = [f"{prefix}{i}" for i in range(count)]
    after_return: list[float] = []
    after_start: list[float] = []
    try:
        task = asyncio.create_task(watcher.run(), name="bench-container-watcher")
        try:
            for name in names:
                await _docker(docker_url, "run", "-d", "--name", name, "--network", network,
                              image, "sleep", "600")  # fmt: skip
                returned = time.monotonic()
                mono, wall = await recorder.seen(name)
                after_return.append(mono - returned)
                after_start.append(wall - _started_at(await _docker(docker_url, "inspect", name)))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await host.shoal_containers(network)
        warm: list[float] = []
        for _ in range(LISTING_RUNS):
            t0 = time.perf_counter()
            await host.shoal_containers(network)
            warm.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await DockerHost(docker_url).shoal_containers(network)
        cold = time.perf_counter() - t0
    finally:
        # rm -f: `sleep` as PID 1 ignores SIGTERM; `docker stop` would wait 10 s for nothing.
        await _docker(docker_url, "rm", "-f", *names, check=False)
    return WatchLatency(
        containers=count,
        run_returned_to_report_ms=Spread.of(after_return),
        started_at_to_report_ms=Spread.of(after_start),
        listing_warm_p50_ms=round(statistics.median(warm) * 1000, 2),
        listing_cold_ms=round(cold * 1000, 2),
    )
