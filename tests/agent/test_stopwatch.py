"""The start-up line the join benchmark reads."""

from __future__ import annotations

import re

from shoal.agent.stopwatch import STARTUP_PREFIX, Stopwatch, process_age


def test_the_line_names_every_lap_and_their_total() -> None:
    watch = Stopwatch()
    watch.lap("docker")
    watch.lap("first-apply")
    line = str(watch)
    assert line.startswith(STARTUP_PREFIX)
    laps = re.findall(r"([\w-]+) (\d+) ms", line.split(": ", 1)[1])
    assert [name for name, _ in laps] == ["process", "docker", "first-apply"]
    total = int(line.split()[1])
    assert abs(total - sum(int(ms) for _, ms in laps)) <= len(laps)  # rounding only


def test_this_process_is_older_than_zero_and_younger_than_a_day() -> None:
    assert 0.0 < process_age() < 86400.0
