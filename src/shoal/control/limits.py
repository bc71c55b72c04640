"""Per-source rate limits: token buckets keyed by the client's address (pure; clock injected).

The server throttles what an attacker can do without holding any valid secret: registrations
(each one costs a store transaction and a full map) and failed authentications (guessing
tokens or credentials). A source that runs out of its bucket gets 429 with `Retry-After`
until it has earned a token back; other sources are not affected.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

Monotonic = Callable[[], float]

# Sources remembered per limiter. An attacker spreading requests over more addresses than
# this only pushes out the oldest (least recently charged) buckets: memory stays bounded and
# a forgotten source starts again with a full bucket, never with less.
MAX_SOURCES = 10_000


@dataclass(frozen=True, slots=True)
class Rate:
    """`burst` events at once, then one every `1 / per_second` seconds."""

    burst: float
    per_second: float


class RateLimiter:
    """A token bucket per source: `charge` takes one token, `retry_after` peeks."""

    def __init__(self, rate: Rate, *, clock: Monotonic = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def _tokens(self, source: str, now: float) -> float:
        held = self._buckets.get(source)
        if held is None:
            return self.rate.burst
        tokens, at = held
        return min(self.rate.burst, tokens + (now - at) * self.rate.per_second)

    def retry_after(self, source: str) -> float:
        """Seconds until `source` may be charged again; 0.0 when it may now."""
        tokens = self._tokens(source, self._clock())
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate.per_second

    def charge(self, source: str) -> float:
        """Take one token from `source`'s bucket if it has one (→ 0.0); otherwise take
        nothing and return the seconds until it will have one."""
        now = self._clock()
        tokens = self._tokens(source, now)
        if tokens < 1.0:
            return (1.0 - tokens) / self.rate.per_second
        self._buckets[source] = (tokens - 1.0, now)
        self._buckets.move_to_end(source)
        if len(self._buckets) > MAX_SOURCES:
            self._buckets.popitem(last=False)
        return 0.0


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Per-source rates of what costs the server work before anyone is authenticated."""

    # A registration costs a store transaction and a full map; a fleet re-registering after
    # an outage comes from many addresses, and each agent backs off between attempts.
    register: Rate = Rate(burst=20, per_second=1.0)
    # Failed authentications of any kind (join token, node credential, admin token): a
    # misconfigured agent fails a few times; 600 guesses in 1.3 s are an attack.
    failed_auth: Rate = Rate(burst=20, per_second=0.5)
    # Container reports and endpoint updates, per node (not per source): each change goes to
    # every node. The agent sends the newest full set and waits for the reply, so a burst of
    # Docker events is already one report; a node holding the largest valid report and
    # sending it in a loop held the server's write lock most of the time. 4 a second: a user
    # starting containers one after another (`docker run` takes ~0.3 s) is never throttled
    # (at 1 a second names took up to a second to appear instead of ~50 ms).
    node_writes: Rate = Rate(burst=20, per_second=4.0)


class SourceLimits:
    """The rate limiters of one server."""

    def __init__(self, rates: RateLimits, clock: Monotonic = time.monotonic) -> None:
        self.register = RateLimiter(rates.register, clock=clock)
        self.failed_auth = RateLimiter(rates.failed_auth, clock=clock)
        self.node_writes = RateLimiter(rates.node_writes, clock=clock)
        self._logged = RateLimiter(Rate(burst=1, per_second=1 / 60), clock=clock)

    def should_log(self, source: str | None) -> bool:
        """Whether a refusal of `source` for its rate gets a log line: once a minute."""
        return self._logged.charge(source or "unknown") == 0.0
