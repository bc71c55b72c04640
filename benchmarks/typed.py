"""The base of every benchmark result: a frozen pydantic model that refuses unknown fields, so a
result is valid once built and `model_dump(mode="json")` is what `benchmarks.json` holds."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
