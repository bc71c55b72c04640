"""Per-source token buckets (pure: the clock is injected)."""

from __future__ import annotations

from shoal.control import limits
from shoal.control.limits import Rate, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_source_gets_its_burst_then_one_per_interval() -> None:
    clock = Clock()
    limiter = RateLimiter(Rate(burst=3, per_second=0.5), clock=clock)
    assert [limiter.charge("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.charge("a") == 2.0  # one token every 2 s
    assert limiter.retry_after("a") == 2.0
    assert limiter.charge("b") == 0.0  # other sources are not affected
    clock.now += 1.0
    assert limiter.charge("a") == 1.0
    clock.now += 1.0
    assert limiter.charge("a") == 0.0 and limiter.charge("a") == 2.0


def test_600_guesses_in_1_3_s_are_mostly_refused() -> None:
    clock = Clock()
    limiter = RateLimiter(Rate(burst=20, per_second=0.5), clock=clock)
    allowed = 0
    for i in range(600):
        clock.now = 100.0 + 1.3 * i / 600
        allowed += limiter.charge("attacker") == 0.0
    assert allowed == 20


def test_memory_is_bounded_and_a_forgotten_source_starts_full() -> None:
    clock = Clock()
    limiter = RateLimiter(Rate(burst=1, per_second=0.001), clock=clock)
    limiter.charge("first")
    for i in range(limits.MAX_SOURCES):
        limiter.charge(f"s{i}")
    assert len(limiter._buckets) == limits.MAX_SOURCES
    assert limiter.charge("first") == 0.0  # evicted: full again, never less
