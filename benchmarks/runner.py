"""The benchmark run: the sections in order (dataplane, controlplane, scale, policy), then the
report.

Each section runs in its own labs or processes; a section that fails is recorded as "failed"
with the reason, and the report is written anyway (after every section, so a run stopped later
keeps the figures so far). Progress goes to stderr, one line per step.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from benchmarks import report
from benchmarks.controlplane import ControlplaneResult, run_controlplane
from benchmarks.dataplane.results import DataplaneResult
from benchmarks.dataplane.run import run_dataplane
from benchmarks.log import progress
from benchmarks.nat import NatResult, run_nat
from benchmarks.policy import PolicyResult, run_policy
from benchmarks.results import Results, Section, Sections
from benchmarks.scale.measure import run_scale
from benchmarks.scale.results import ScaleResult
from shoal.lab import DEFAULT_ROOT, LabError, sweep

SECTIONS = ("dataplane", "controlplane", "scale", "policy", "nat")
# (store, nodes): SQLite's one server up to 10,000 hosts, and 2 replicas on PostgreSQL.
SCALE_PLAN_FULL = (
    *(("sqlite", n) for n in (100, 1000, 5000, 10_000)),
    *(("postgresql", n) for n in (1000, 10_000)),
)
SCALE_PLAN_QUICK = (("sqlite", 100), ("postgresql", 100))
SCALE_CHANGES_FULL = 10
SCALE_CHANGES_QUICK = 3

R = TypeVar("R", DataplaneResult, ControlplaneResult, ScaleResult, PolicyResult, NatResult)
AnySection = (
    Section[DataplaneResult]
    | Section[ControlplaneResult]
    | Section[ScaleResult]
    | Section[PolicyResult]
    | Section[NatResult]
)


def _workdir(name: str) -> Path:
    DEFAULT_ROOT.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".bench-{name}-", dir=DEFAULT_ROOT))


def _scale(quick: bool) -> ScaleResult:
    work = _workdir("scale")
    plan = SCALE_PLAN_QUICK if quick else SCALE_PLAN_FULL
    changes = SCALE_CHANGES_QUICK if quick else SCALE_CHANGES_FULL
    try:
        return asyncio.run(run_scale(changes=changes, workdir=work, plan=plan))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_section(name: str, run: Callable[[], R]) -> Section[R]:
    """One section, timed; its failure is recorded, never raised (the others still run)."""
    progress(f"== {name}")
    t0 = time.monotonic()
    section: Section[R]
    try:
        section = Section(status="ok", result=run())
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # one section failing must not lose the others' figures
        section = Section(status="failed", reason=f"{type(exc).__name__}: {exc}")
    section = section.model_copy(update={"seconds": time.monotonic() - t0})
    progress(f"== {name}: {section.status} in {section.seconds or 0:.0f} s")
    return section


def run_bench(
    out: Path, *, hosts: int = 2, quick: bool = False, only: Sequence[str] = ()
) -> tuple[Results, dict[str, Path]]:
    """Run the selected sections (all by default) in order and write the report to `out`.

    Raises `LabError` for an unknown section name (before anything runs)."""
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        raise LabError(
            f"unknown section(s) {', '.join(unknown)}: choose from {', '.join(SECTIONS)}"
        )
    started = time.monotonic()
    removed = sweep()
    if removed:
        progress(f"removed labs left by aborted runs: {', '.join(removed)}")
    pending = Section(status="skipped", reason="not run yet")
    results = Results(
        generated=time.strftime("%Y-%m-%d %H:%M %Z"),
        command=report.REPRODUCE,
        argv=tuple(sys.argv),
        quick=quick,
        hosts=hosts,
        machine=report.machine_info(),
        sections=Sections(
            dataplane=pending, controlplane=pending, scale=pending, policy=pending, nat=pending
        ),
        duration_seconds=0.0,
    )
    chosen = [name for name in SECTIONS if not only or name in only]
    for name in SECTIONS:
        if name not in chosen:
            skipped = Section(status="skipped", reason="not selected (--only)")
            results = _with(results, name, skipped, started)
            continue
        section: AnySection
        if name == "dataplane":
            section = _run_section(name, lambda: run_dataplane(quick=quick))
        elif name == "controlplane":
            section = _run_section(name, lambda: run_controlplane(quick=quick))
        elif name == "nat":
            section = _run_section(name, lambda: run_nat(quick=quick))
        elif name == "scale":
            section = _run_section(name, lambda: _scale(quick))
        else:
            section = _run_section(name, lambda: run_policy(quick=quick))
        results = _with(results, name, section, started)
        # Written after every section: a run stopped later still leaves these figures.
        report.write_report(results, out)
    written = report.write_report(results, out)
    progress(f"done in {results.duration_seconds / 60:.1f} min")
    return results, written


def _with(
    results: Results,
    name: str,
    section: AnySection,
    started: float,
) -> Results:
    sections = results.sections.model_copy(update={name: section})
    return results.model_copy(
        update={"sections": sections, "duration_seconds": time.monotonic() - started}
    )


def summarize(results: Results, written: dict[str, Path]) -> int:
    """Print the files written, each section's status and shoal ÷ hand-written WireGuard;
    the exit status: 1 if a section failed, else 0."""
    for kind, path in written.items():
        print(f"{kind}: {path}")
    sections = results.sections
    outcomes = (
        ("dataplane", sections.dataplane.status, sections.dataplane.reason),
        ("controlplane", sections.controlplane.status, sections.controlplane.reason),
        ("scale", sections.scale.status, sections.scale.reason),
        ("policy", sections.policy.status, sections.policy.reason),
        ("nat", sections.nat.status, sections.nat.reason),
    )
    for name, status, reason in outcomes:
        print(f"{name}: {status}" + (f" ({reason})" if reason else ""))
    dp = sections.dataplane.result
    if dp is not None and dp.shoal_vs_handwg.ratios.tcp1_gbps is not None:
        cmp = dp.shoal_vs_handwg
        print(
            f"shoal / hand-written WireGuard, TCP 1 stream: {cmp.ratios.tcp1_gbps:.2f}x "
            f"(target >= {cmp.target_tcp}x), CPU per Gbit: {cmp.ratios.cpu_s_per_gbit or 0:.2f}x "
            f"(target <= {cmp.target_cpu}x)"
        )
    pol = sections.policy.result
    if pol is not None and pol.tcp1_ratio is not None:
        print(
            f"{pol.rules}-rule policy / no policy, TCP 1 stream: {pol.tcp1_ratio:.2f}x "
            f"(rounds' median {pol.tcp1_paired_ratio or 0:.2f}x), "
            f"CPU per Gbit: {pol.cpu_per_gbit_ratio or 0:.2f}x (target >= {pol.target}x)"
        )
    return 1 if any(status == "failed" for _, status, _ in outcomes) else 0
