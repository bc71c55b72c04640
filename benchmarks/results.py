"""One benchmark run's result, as `benchmarks.json` holds it:

    {"generated": date, "command": "make bench", "argv": [...], "quick": bool, "hosts": int,
     "machine": {...}, "duration_seconds": float,
     "sections": {"dataplane" | "controlplane" | "scale" | "policy":
                  {"status": "ok" | "not run" | "failed" | "skipped", "reason": str | None,
                   "seconds": float | None, "generated": date | None,
                   "result": the section's own result or None}}}

Each section's result is its own typed model (`DataplaneResult`, `ControlplaneResult`,
`ScaleResult`, `PolicyResult`); a section that did not run has `result` None and says why in
`reason`.

A run of some sections (`--only`) keeps the others as the file it writes over holds them
(`kept_sections`), each with the date of the run that measured it (`Section.generated`): one
section is published again without the others turning into "skipped".

The shape is the one the untyped runs wrote (their files parse: see
tests/benchmarks/test_report.py), with two deliberate differences: a figure a system lacks is
now written as null instead of being left out (`vs_baseline`, `kernel`, a failed section's
`result`), and there are new keys: `controlplane.result.shoal.watch` / `watch_note` (the
watcher stage) and, per scale point, `client_parse_us_per_delta`.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Generic, Literal, TypeVar

from benchmarks.controlplane import ControlplaneResult
from benchmarks.dataplane.results import DataplaneResult
from benchmarks.nat import NatResult
from benchmarks.policy import PolicyResult
from benchmarks.scale.results import ScaleResult
from benchmarks.typed import Frozen

R = TypeVar("R", DataplaneResult, ControlplaneResult, ScaleResult, PolicyResult, NatResult)
Status = Literal["ok", "not run", "failed", "skipped"]
SectionName = Literal["dataplane", "controlplane", "scale", "policy", "nat"]
SECTIONS: tuple[SectionName, ...] = ("dataplane", "controlplane", "scale", "policy", "nat")


class Section(Frozen, Generic[R]):
    """One section's outcome: its result when "ok", else the reason it has none."""

    status: Status
    reason: str | None = None
    seconds: float | None = None
    # The `Results.generated` of the run that measured it; None: the run of the file it is in
    # (every section of a file written before sections were kept across runs).
    generated: str | None = None
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

    def named(self, name: SectionName) -> AnySection:
        section: AnySection = getattr(self, name)
        return section


AnySection = (
    Section[DataplaneResult]
    | Section[ControlplaneResult]
    | Section[ScaleResult]
    | Section[PolicyResult]
    | Section[NatResult]
)


class Results(Frozen):
    generated: str
    command: str
    argv: tuple[str, ...]
    quick: bool
    hosts: int
    machine: Machine
    sections: Sections
    duration_seconds: float  # this run's, not including the runs of the sections it kept

    def measured(self, name: SectionName) -> str:
        """When section `name` was measured: the date of its run."""
        return self.sections.named(name).generated or self.generated

    def kept(self) -> tuple[SectionName, ...]:
        """The sections an earlier run measured (kept by a run of the others)."""
        return tuple(n for n in SECTIONS if self.measured(n) != self.generated)


NOT_SELECTED = "not selected (--only)"


def kept_sections(
    previous: Results | None, selected: Collection[SectionName], *, quick: bool, hosts: int
) -> Sections:
    """The sections a run starts from: the `selected` ones pending; every other one as
    `previous` (the file this run writes over) holds it, dated with the run that measured it,
    when that file comes from a run of the same kind (`quick`, `hosts`): else, or with no
    file, "skipped". Figures of a quick run never stand beside those of a full one."""
    same_kind = previous is not None and previous.quick == quick and previous.hosts == hosts
    chosen: dict[str, object] = {}  # each validated into its own section's type below
    for name in SECTIONS:
        if name in selected:
            chosen[name] = {"status": "skipped", "reason": "not run yet"}
        elif previous is not None and same_kind:
            old = previous.sections.named(name)
            chosen[name] = old.model_copy(update={"generated": previous.measured(name)})
        else:
            why = NOT_SELECTED
            if previous is not None:
                kind = "quick" if previous.quick else "full"
                why += f"; the report there ({kind}, {previous.hosts} hosts) is of another kind"
            chosen[name] = {"status": "skipped", "reason": why}
    return Sections.model_validate(chosen)
