"""Where the agent's start-up time goes: named stages, logged as one line.

    startup: 1180 ms, cpu 610 ms: cli 240 ms, imports 520 ms, docker 20 ms, ...

The wall-clock laps, and the CPU time the start-up used in this process (and in the
`shoal up` process that forked it): on a loaded machine the wall time follows the load, the
CPU time much less. The join benchmark (`benchmarks/join.py`) reads that line from the
agent's log to report the breakdown of a join beside its total.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
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
    """Laps of wall time, and the CPU time used. By default the first lap is the time the
    process spent before the stopwatch was made (interpreter start and imports).

    A process about to fork the agent makes it with its own time so far (`before`) and CPU
    time so far (`cpu_before`); the forked child, whose CPU clock starts at zero, carries on
    with it."""

    def __init__(
        self, before: Sequence[tuple[str, float]] | None = None, cpu_before: float = 0.0
    ) -> None:
        self._last = time.perf_counter()
        self.laps: list[tuple[str, float]] = (
            [("process", process_age())] if before is None else list(before)
        )
        self._cpu_before = cpu_before

    @classmethod
    def before_fork(cls, name: str = "cli") -> Stopwatch:
        """For the child of a fork made right after: this process so far is the lap `name`."""
        return cls([(name, process_age())], cpu_before=time.process_time())

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps.append((name, now - self._last))
        self._last = now

    def cpu(self) -> float:
        """CPU seconds (user and system, every thread) of the start-up so far."""
        return self._cpu_before + time.process_time()

    def __str__(self) -> str:
        total = sum(seconds for _, seconds in self.laps)
        parts = ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in self.laps)
        return f"{STARTUP_PREFIX} {total * 1000:.0f} ms, cpu {self.cpu() * 1000:.0f} ms: {parts}"
