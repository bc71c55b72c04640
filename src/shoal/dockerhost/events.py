"""Docker's event stream, read by a thread of its own and handed to the event loop.

The SDK's stream is a blocking iterator over one HTTP response; the only way to stop a thread
blocked in it is to shut its socket down, which `EventStream.close` does (leaving the
`async with` block calls it), so a cancelled watcher never leaves a reader behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shoal.dockerhost.host import FOREIGN_ERRORS, DockerHost

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DockerEvent:
    type: str  # "container", "network", ...
    action: str  # "start", "health_status: healthy", "connect", ...
    actor: str  # id of the container or network
    time_nano: int  # daemon clock, ns since the epoch
    attributes: Mapping[str, str] = field(default_factory=dict)  # "name", "container", ...

    @classmethod
    def parse(cls, raw: Any) -> DockerEvent | None:
        if not isinstance(raw, dict):
            return None
        actor = raw.get("Actor") or {}
        return cls(
            type=str(raw.get("Type") or ""),
            action=str(raw.get("Action") or raw.get("status") or ""),
            actor=str(actor.get("ID") or raw.get("id") or ""),
            time_nano=int(raw.get("timeNano") or int(raw.get("time") or 0) * 10**9),
            attributes={str(k): str(v) for k, v in (actor.get("Attributes") or {}).items()},
        )


def since_arg(time_nano: int) -> str:
    """Docker's `since` for a point in time: "<seconds>.<nanoseconds>" (inclusive)."""
    return f"{time_nano // 10**9}.{time_nano % 10**9:09d}"


@dataclass(frozen=True, slots=True)
class _Opened:
    pass


@dataclass(frozen=True, slots=True)
class _Ended:
    error: BaseException | None = None


_Item = DockerEvent | _Opened | _Ended


class EventStream:
    """One subscription to dockerd's events: `async with EventStream(...) as s: await s.next()`.

    Entering returns once the daemon has accepted the subscription (so nothing that happens
    afterwards is missed) or raises DockerUnavailable/DockerError. `next()` returns None when
    the stream ended (daemon stopped or restarted)."""

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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._stream: Any = None
        self._client: Any = None
        self._ended = False
        self.thread: threading.Thread | None = None

    async def __aenter__(self) -> EventStream:
        self._loop = asyncio.get_running_loop()
        self.thread = threading.Thread(target=self._read, name="shoal-docker-events", daemon=True)
        self.thread.start()
        try:
            first = await self._queue.get()
        except BaseException:
            self.close()
            raise
        if isinstance(first, _Ended):
            self.close()
            assert first.error is not None
            raise self._host.translate("subscribe to events", first.error) from first.error
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def pending(self) -> int:
        return self._queue.qsize()

    async def next(self, timeout: float | None = None) -> DockerEvent | None:
        """The next event; None once the stream ended. TimeoutError after `timeout` seconds."""
        if self._ended:
            return None
        async with asyncio.timeout(timeout):
            item = await self._queue.get()
        if isinstance(item, DockerEvent):
            return item
        assert isinstance(item, _Ended)
        self._ended = True
        if item.error is not None:
            raise self._host.translate("read events", item.error) from item.error
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

    def close(self) -> None:
        """Stop the reader thread: shut the stream's socket down (idempotent, never blocks)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            stream, client = self._stream, self._client
        _close_quietly(stream, client)

    # -- the reader thread -------------------------------------------------------------------

    def _put(self, item: _Item) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _read(self) -> None:
        stream: Any = None
        client: Any = None
        try:
            client = self._host.new_api_client()
            stream = client.events(since=self._since, filters=self._filters, decode=True)
        except FOREIGN_ERRORS as exc:
            _close_quietly(stream, client)
            self._put(_Ended(exc))
            return
        with self._lock:
            if self._closed:  # closed while subscribing
                _close_quietly(stream, client)
                return
            self._stream, self._client = stream, client
        self._put(_Opened())
        try:
            for raw in stream:
                event = DockerEvent.parse(raw)
                if event is not None:
                    self._put(event)
        except (*FOREIGN_ERRORS, ValueError) as exc:  # ValueError: a garbled JSON message
            if not self._closed:
                self._put(_Ended(exc))
            return
        finally:
            _close_quietly(stream, client)
        self._put(_Ended())


def _close_quietly(stream: Any, client: Any) -> None:
    # The SDK reaches into the response for its socket; after the daemon hung up that can
    # fail in many ways, none of which matter: the stream is over either way.
    if stream is not None:
        with contextlib.suppress(Exception):
            stream.close()
    if client is not None:
        with contextlib.suppress(Exception):
            client.close()
