"""Docker's event stream, read by a task of its own into a queue.

The reader task owns the streamed response: a `next()` that times out never cuts a message
in half (cancelling a read mid-line would lose its first part), and events that already
arrived can be taken without waiting (`next_nowait`, to coalesce a burst). Leaving the
`async with` block cancels the task and closes the connection, so a cancelled watcher never
leaves a reader behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shoal.dockerhost.engine import Lines, filters_arg
from shoal.dockerhost.errors import DockerError
from shoal.dockerhost.host import DockerHost

log = logging.getLogger(__name__)

READER_TASK = "shoal-docker-events"


@dataclass(frozen=True, slots=True)
class DockerEvent:
    type: str  # "container", "network", ...
    action: str  # "start", "health_status: healthy", "connect", ...
    actor: str  # id of the container or network
    time_nano: int  # daemon clock, ns since the epoch
    attributes: Mapping[str, str] = field(default_factory=dict)  # "name", "container", ...

    @classmethod
    def parse(cls, raw: Any) -> DockerEvent | None:
        """The event in one message of the stream; None for a message that is not one."""
        if not isinstance(raw, dict):
            return None
        try:
            actor = raw.get("Actor") or {}
            return cls(
                type=str(raw.get("Type") or ""),
                action=str(raw.get("Action") or raw.get("status") or ""),
                actor=str(actor.get("ID") or raw.get("id") or ""),
                time_nano=int(raw.get("timeNano") or int(raw.get("time") or 0) * 10**9),
                attributes={str(k): str(v) for k, v in (actor.get("Attributes") or {}).items()},
            )
        except (AttributeError, TypeError, ValueError):  # a field of another type
            return None


def since_arg(time_nano: int) -> str:
    """Docker's `since` for a point in time: "<seconds>.<nanoseconds>" (inclusive)."""
    return f"{time_nano // 10**9}.{time_nano % 10**9:09d}"


@dataclass(frozen=True, slots=True)
class _Ended:
    error: DockerError | None = None


_Item = DockerEvent | _Ended


class EventStream:
    """One subscription to dockerd's events: `async with EventStream(...) as s: await s.next()`.

    Entering returns once the daemon has answered the subscription or raises
    DockerUnavailable/DockerError. `next()` returns None when the stream ended (daemon
    stopped or restarted)."""

    def __init__(
        self,
        host: DockerHost,
        filters: Mapping[str, list[str]],
        since: str | None = None,
    ) -> None:
        self._host = host
        self._filters = dict(filters)
        self._since = since
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._exits = contextlib.AsyncExitStack()
        self._ended = False
        self.reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventStream:
        query = {"filters": filters_arg(self._filters)}
        if self._since is not None:
            query["since"] = self._since
        async with contextlib.AsyncExitStack() as exits:
            lines = await exits.enter_async_context(
                self._host.engine.stream("read events", "/events", query)
            )
            self.reader = asyncio.create_task(self._read(lines), name=READER_TASK)
            exits.push_async_callback(self._stop_reader)
            self._exits = exits.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._exits.aclose()

    async def _stop_reader(self) -> None:
        assert self.reader is not None
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader

    def pending(self) -> int:
        return self._queue.qsize()

    async def next(self, timeout: float | None = None) -> DockerEvent | None:
        """The next event; None once the stream ended. TimeoutError after `timeout` seconds;
        DockerUnavailable/DockerError when the stream broke."""
        if self._ended:
            return None
        async with asyncio.timeout(timeout):
            item = await self._queue.get()
        if isinstance(item, DockerEvent):
            return item
        self._ended = True
        if item.error is not None:
            raise item.error
        return None

    def next_nowait(self) -> DockerEvent | None:
        """An event already received, or None (the end of the stream stays queued)."""
        if self._ended or self._queue.empty():
            return None
        item = self._queue.get_nowait()
        if isinstance(item, DockerEvent):
            return item
        self._queue.put_nowait(item)  # end (or error) reported by the next `next()`
        return None

    async def _read(self, lines: Lines) -> None:
        try:
            while (raw := await lines.next()) is not None:
                if (event := DockerEvent.parse(raw)) is not None:
                    self._queue.put_nowait(event)
        except DockerError as exc:
            self._queue.put_nowait(_Ended(exc))
        else:
            self._queue.put_nowait(_Ended())
