"""Watch the containers on one Docker network and report every change of the set.

    subscribe to events (since the last one seen) → full list → on_change
        ↓ per burst of relevant events: list again, inspecting the containers they name
          (the list lags behind some events) → on_change if it differs
        ↓ every `resync_seconds`: list again anyway; re-subscribe if the stream stayed quiet
        ↓ stream ended / failed (daemon restart): back off, re-subscribe with `since`

The list is taken after the subscription is in place, so no change falls between the two
(which also covers a first subscription, with no event time to resume from).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection

from shoal.dockerhost.errors import DockerError
from shoal.dockerhost.events import DockerEvent, EventStream, since_arg
from shoal.dockerhost.host import DockerHost
from shoal.model.api import ContainerReport

log = logging.getLogger(__name__)

CONTAINER_ACTIONS = ("start", "die", "stop", "destroy", "health_status")
NETWORK_ACTIONS = ("connect", "disconnect")
FILTERS = {
    "type": ["container", "network"],
    "event": [*CONTAINER_ACTIONS, *NETWORK_ACTIONS],  # "health_status" matches "health_status: *"
}
BACKOFF_FIRST = 0.1  # seconds; dockerd restarts in about 1 s
BACKOFF_MAX = 5.0

OnChange = Callable[[list[ContainerReport]], Awaitable[None]]


def describe_change(old: list[ContainerReport] | None, new: list[ContainerReport]) -> str:
    """A readable diff: "+web 10.42.1.2 (healthy), ~db health starting => healthy, -old"."""
    before = {r.id: r for r in old or []}
    after = {r.id: r for r in new}
    parts: list[str] = []
    for cid, r in after.items():
        was = before.get(cid)
        if was is None:
            parts.append(f"+{r.name} {r.ip} ({r.health})")
        elif was != r:
            fields = [
                f"{f} {getattr(was, f)} => {getattr(r, f)}"
                for f in ("name", "ip", "project", "service", "ports", "health")
                if getattr(was, f) != getattr(r, f)
            ]
            parts.append(f"~{r.name} {', '.join(fields)}")
    parts += [f"-{r.name}" for cid, r in before.items() if cid not in after]
    return ", ".join(parts) or "(none)"


class ContainerWatcher:
    """Calls `on_change` with every running container on `network` (sorted by id): once at
    start, then whenever that set or anything reported about it changes.

    `run()` runs until cancelled; Docker being unavailable is retried with backoff, never
    raised. Exceptions of `on_change` propagate (and end `run`)."""

    def __init__(
        self,
        docker: DockerHost,
        network: str,
        on_change: OnChange,
        resync_seconds: float = 30.0,
    ) -> None:
        self.docker = docker
        self.network = network
        self.on_change = on_change
        self.resync_seconds = resync_seconds
        self.last: list[ContainerReport] | None = None  # what on_change got last
        self._since: str | None = None  # the last event's time: where a new stream picks up
        self.subscriptions = 0  # streams opened so far (for status and tests)

    def relevant(self, event: DockerEvent) -> bool:
        if event.type == "network":
            return event.attributes.get("name") == self.network
        return event.type == "container"

    async def sync(self, fresh: Collection[str] = ()) -> bool:
        """List the containers now (inspecting those in `fresh`); call on_change if they
        differ from what it got last. True when they did."""
        reports = await self.docker.shoal_containers(self.network, fresh)
        if reports == self.last:
            return False
        log.info("docker network %s: %s", self.network, describe_change(self.last, reports))
        self.last = reports
        await self.on_change(reports)
        return True

    async def run(self) -> None:
        delay = BACKOFF_FIRST
        while True:
            try:
                async with EventStream(self.docker, FILTERS, since=self._since) as stream:
                    self.subscriptions += 1
                    await self.sync()
                    delay = BACKOFF_FIRST
                    await self._follow(stream)
                log.info("docker events: stream ended, resubscribing since %s", self._since)
            except DockerError as exc:
                log.warning("docker events: %s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)

    async def _follow(self, stream: EventStream) -> None:
        """Handle events until the stream ends, or stays quiet for a whole resync period."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.resync_seconds
        quiet = True
        while True:
            try:
                event = await stream.next(timeout=max(0.0, deadline - loop.time()))
            except TimeoutError:
                # Event streams can stall without closing (moby#12023): list anyway, and
                # re-subscribe when not a single event came in a whole period.
                await self.sync()
                if quiet:
                    return
                deadline, quiet = loop.time() + self.resync_seconds, True
                continue
            if event is None:
                return
            quiet = False
            fresh: set[str] = set()
            self._note(event, fresh)
            while (more := stream.next_nowait()) is not None:  # coalesce a burst
                self._note(more, fresh)
            if fresh:
                await self.sync(fresh)

    def _note(self, event: DockerEvent, fresh: set[str]) -> None:
        """Remember where the stream is; add the container a relevant event names to `fresh`."""
        if event.time_nano:
            self._since = since_arg(event.time_nano)
        if self.relevant(event):
            cid = event.actor if event.type == "container" else event.attributes.get("container")
            if cid:
                fresh.add(cid)
