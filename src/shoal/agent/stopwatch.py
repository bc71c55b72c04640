"""Where the agent's start-up time goes: named stages, logged as one line.

The join benchmark (`benchmarks/controlplane.py`) reads that line from the agent's log to
report the breakdown of a join beside its total.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

STARTUP_PREFIX = "startup:"


def process_age() -> float:
    """Seconds since this process started (fork or exec), at the kernel's tick (10 ms); 0.0
    where /proc is not readable."""
    try:
        stat = Path("/proc/self/stat").read_text()
    except OSError:
        return 0.0
    # Field 22 (starttime, ticks since boot); the name in field 2 may hold spaces, ")" ends it.
    started_ticks = int(stat.rpartition(")")[2].split()[19])
    started = started_ticks / os.sysconf("SC_CLK_TCK")
    return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)


class Stopwatch:
    """Laps of wall time; the first lap is the time the process spent before it was made
    (interpreter start and imports)."""

    def __init__(self, first: str = "process") -> None:
        self._last = time.perf_counter()
        self.laps: list[tuple[str, float]] = [(first, process_age())]

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps.append((name, now - self._last))
        self._last = now

    def __str__(self) -> str:
        total = sum(seconds for _, seconds in self.laps)
        parts = ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in self.laps)
        return f"{STARTUP_PREFIX} {total * 1000:.0f} ms: {parts}"
