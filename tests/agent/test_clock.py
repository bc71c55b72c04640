"""The agent's system clock: wall time in UTC, and a wait that says whether the event came."""

from __future__ import annotations

import asyncio
from datetime import UTC

from shoal.agent.clock import SystemClock


async def test_now_is_utc_and_monotonic_never_goes_back() -> None:
    clock = SystemClock()
    assert clock.now().tzinfo is UTC
    first = clock.monotonic()
    assert clock.monotonic() >= first


async def test_wait_says_whether_the_event_was_set_before_the_timeout() -> None:
    clock = SystemClock()
    event = asyncio.Event()
    assert await clock.wait(event, timeout=0.001) is False  # nobody sets it
    event.set()
    assert await clock.wait(event, timeout=60) is True  # set already: at once
