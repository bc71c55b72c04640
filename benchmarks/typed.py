"""The base of every benchmark result: a frozen pydantic model that refuses unknown fields, so a
result is valid once built and `model_dump(mode="json")` is what `benchmarks.json` holds; and
the percentiles several sections report."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Percentiles(Frozen):
    """p50, p99 and max of `n` values, seconds."""

    p50: float
    p99: float
    max: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Percentiles:
        ordered = sorted(values)
        p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
        return cls(p50=statistics.median(ordered), p99=p99, max=ordered[-1], n=len(ordered))
