"""The start-up line the join benchmark reads."""

from __future__ import annotations

import os
import re
import time

from shoal.agent.stopwatch import STARTUP_PREFIX, Stopwatch, process_age


def _laps(line: str) -> list[tuple[str, int]]:
    return [(n, int(ms)) for n, ms in re.findall(r"([\w-]+) (\d+) ms", line.split(": ", 2)[2])]


def test_the_line_names_every_lap_and_their_total() -> None:
    watch = Stopwatch()
    watch.lap("docker")
    watch.lap("first-apply")
    line = str(watch)
    assert line.startswith(STARTUP_PREFIX)
    laps = _laps(line)
    assert [name for name, _ in laps] == ["process", "docker", "first-apply"]
    total = int(line.split()[1])
    assert abs(total - sum(ms for _, ms in laps)) <= len(laps)  # rounding only


def test_the_line_gives_the_cpu_time_used() -> None:
    watch = Stopwatch()
    cpu = int(re.findall(r"cpu (\d+) ms", str(watch))[0])
    assert cpu >= 1  # importing pytest alone took more than a millisecond


def test_a_forked_child_carries_on_from_its_parents_laps_and_cpu_time() -> None:
    spent = time.process_time()
    watch = Stopwatch.before_fork()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own CPU clock starts at zero, the watch adds the parent's
        os.close(read)
        watch.lap("imports")
        os.write(write, f"{watch!s}\n{watch.cpu()}".encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        line, cpu = pipe.read().splitlines()
    os.waitpid(pid, 0)
    assert [name for name, _ in _laps(line)] == ["cli", "imports"]
    assert float(cpu) >= spent  # the parent's CPU time before the fork is in the child's


def test_this_process_is_older_than_zero_and_younger_than_a_day() -> None:
    assert 0.0 < process_age() < 86400.0
