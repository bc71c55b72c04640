"""One benchmark run's result, as `benchmarks.json` holds it:

    {"generated": date, "command": "make bench", "argv": [...], "quick": bool, "hosts": int,
     "machine": {...}, "duration_seconds": float,
     "sections": {"dataplane" | "controlplane" | "scale" | "policy":
                  {"status": "ok" | "not run" | "failed" | "skipped", "reason": str | None,
                   "seconds": float | None, "result": the section's own result or None}}}

Each section's result is its own typed model (`DataplaneResult`, `ControlplaneResult`,
`ScaleResult`, `PolicyResult`); a section that did not run has `result` None and says why in
`reason`.

The shape is the one the untyped runs wrote (their files parse: see
tests/benchmarks/test_report.py), with two deliberate differences: a figure a system lacks is
now written as null instead of being left out (`vs_baseline`, `kernel`, a failed section's
`result`), and there are new keys: `controlplane.result.shoal.watch` / `watch_note` (the
watcher stage) and, per scale point, `client_parse_us_per_delta`.
"""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from benchmarks.controlplane import ControlplaneResult
from benchmarks.dataplane.results import DataplaneResult
from benchmarks.nat import NatResult
from benchmarks.policy import PolicyResult
from benchmarks.scale.results import ScaleResult
from benchmarks.typed import Frozen

R = TypeVar("R", DataplaneResult, ControlplaneResult, ScaleResult, PolicyResult, NatResult)
Status = Literal["ok", "not run", "failed", "skipped"]


class Section(Frozen, Generic[R]):
    """One section's outcome: its result when "ok", else the reason it has none."""

    status: Status
    reason: str | None = None
    seconds: float | None = None
    result: R | None = None


class Machine(Frozen):
    """Where the figures come from: CPU, memory, OS and the versions of the tools measured."""

    cpu: str
    cores: int | None
    kernel: str
    os: str
    memory_gib: float | None
    date: str
    python: str
    versions: dict[str, str | None]


class Sections(Frozen):
    dataplane: Section[DataplaneResult]
    controlplane: Section[ControlplaneResult]
    scale: Section[ScaleResult]
    # Files written before the section existed have no key: it did not run then.
    policy: Section[PolicyResult] = Section[PolicyResult](
        status="not run", reason="the run predates this section"
    )
    # NAT traversal (benchmarks/nat.py); runs before it have none.
    nat: Section[NatResult] = Section[NatResult](status="not run")


class Results(Frozen):
    generated: str
    command: str
    argv: tuple[str, ...]
    quick: bool
    hosts: int
    machine: Machine
    sections: Sections
    duration_seconds: float
