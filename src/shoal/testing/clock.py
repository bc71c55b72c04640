"""A clock that moves only when the test says so: retries and resyncs without sleeping."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any


class ManualClock:
    """Implements `shoal.agent.clock.Clock`; time stands still until `advance`.

    Sleepers and waiters whose deadline `advance` passes are woken in deadline order.
    """

    def __init__(self, start: datetime = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)) -> None:
        self._start = start
        self._elapsed = 0.0
        self._timers: list[tuple[float, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self._elapsed

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._elapsed)

    def _timer(self, seconds: float) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if seconds <= 0:
            future.set_result(None)
        else:
            self._timers.append((self._elapsed + seconds, future))
        return future

    async def sleep(self, seconds: float) -> None:
        await self._timer(seconds)

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        if event.is_set():
            return True
        timer = self._timer(timeout)
        setter = asyncio.ensure_future(event.wait())
        either: list[asyncio.Future[Any]] = [timer, setter]
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            setter.cancel()
            timer.cancel()
        return event.is_set()

    async def advance(self, seconds: float) -> None:
        """Move time forward, wake what is due, and let the woken tasks run until they block."""
        self._elapsed += seconds
        due = sorted(((t, f) for t, f in self._timers if t <= self._elapsed), key=lambda tf: tf[0])
        self._timers = [(t, f) for t, f in self._timers if t > self._elapsed]
        for _, future in due:
            if not future.done():
                future.set_result(None)
        await settle()

    @property
    def pending(self) -> int:
        """Timers not yet due (cancelled ones included until they would fire)."""
        return sum(not f.done() for _, f in self._timers)


async def settle(rounds: int = 50) -> None:
    """Let every ready task run until all of them wait for something (I/O, a timer, an event).

    Fakes do no I/O, so a few dozen passes through the event loop are enough for a whole
    reconcile round; no wall-clock time is waited for.
    """
    for _ in range(rounds):
        await asyncio.sleep(0)
