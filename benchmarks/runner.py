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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from benchmarks import report
from benchmarks.controlplane import ControlplaneResult, run_controlplane
from benchmarks.dataplane.results import DataplaneResult, crossover
from benchmarks.dataplane.run import run_dataplane
from benchmarks.log import progress
from benchmarks.nat import NatResult, run_nat
from benchmarks.policy import PolicyResult, run_policy
from benchmarks.results import (
    SECTIONS,
    AnySection,
    Machine,
    Results,
    Section,
    SectionName,
    kept_sections,
)
from benchmarks.scale.measure import run_scale
from benchmarks.scale.results import ScaleResult
from benchmarks.textfmt import figures
from shoal.lab import DEFAULT_ROOT, LabError, sweep

# (store, nodes): SQLite's one server up to 10,000 hosts, and 2 replicas on PostgreSQL. The
# 10,000-node meshes are seeded into the store (10,000 registrations, each reply a full map
# parsed by the one fleet process, do not fit a run here; see benchmarks.scale.seed).
SCALE_PLAN_FULL = (
    *(("sqlite", n) for n in (100, 1000, 10_000)),
    *(("postgresql", n) for n in (1000, 10_000)),
)
SCALE_SEED_FROM = 10_000
SCALE_PLAN_QUICK = (("sqlite", 100), ("postgresql", 100))
SCALE_CHANGES_FULL = 10
SCALE_CHANGES_QUICK = 3

R = TypeVar("R", DataplaneResult, ControlplaneResult, ScaleResult, PolicyResult, NatResult)
SectionRun = Callable[[], AnySection]  # one section, run and timed (`_run_section`)


def _workdir(name: str) -> Path:
    DEFAULT_ROOT.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".bench-{name}-", dir=DEFAULT_ROOT))


def _scale(quick: bool) -> ScaleResult:
    work = _workdir("scale")
    plan = SCALE_PLAN_QUICK if quick else SCALE_PLAN_FULL
    changes = SCALE_CHANGES_QUICK if quick else SCALE_CHANGES_FULL
    try:
        return asyncio.run(
            run_scale(changes=changes, workdir=work, plan=plan, seed_from=SCALE_SEED_FROM)
        )
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
    With `only`, the other sections stay as `out`'s report holds them (see `kept_sections`).

    Raises `LabError` for an unknown section name or a report in `out` that does not parse
    (before anything runs)."""
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        raise LabError(
            f"unknown section(s) {', '.join(unknown)}: choose from {', '.join(SECTIONS)}"
        )
    chosen = tuple(name for name in SECTIONS if not only or name in only)
    previous = report.read_report(out) if only else None
    removed = sweep()
    if removed:
        progress(f"removed labs left by aborted runs: {', '.join(removed)}")
    runs: dict[SectionName, SectionRun] = {
        "dataplane": lambda: _run_section("dataplane", lambda: run_dataplane(quick=quick)),
        "controlplane": lambda: _run_section("controlplane", lambda: run_controlplane(quick=quick)),
        "scale": lambda: _run_section("scale", lambda: _scale(quick)),
        "policy": lambda: _run_section("policy", lambda: run_policy(quick=quick)),
        "nat": lambda: _run_section("nat", lambda: run_nat(quick=quick)),
    }
    return run_sections(
        out,
        {name: runs[name] for name in chosen},
        previous,
        hosts=hosts,
        quick=quick,
        machine=report.machine_info(),
    )


def run_sections(
    out: Path,
    runs: Mapping[SectionName, SectionRun],
    previous: Results | None,
    *,
    hosts: int,
    quick: bool,
    machine: Machine,
) -> tuple[Results, dict[str, Path]]:
    """Run `runs` in the order of SECTIONS, each dated with this run, the others kept from
    `previous`; the report is written to `out` after every section (a run stopped later
    still leaves the figures so far) and at the end."""
    started = time.monotonic()
    generated = time.strftime("%Y-%m-%d %H:%M %Z")
    results = Results(
        generated=generated,
        command=report.REPRODUCE,
        argv=tuple(sys.argv),
        quick=quick,
        hosts=hosts,
        machine=machine,
        sections=kept_sections(previous, tuple(runs), quick=quick, hosts=hosts),
        duration_seconds=0.0,
    )
    for name in SECTIONS:
        if name not in runs:
            continue
        section = runs[name]().model_copy(update={"generated": generated})
        if name == "dataplane":
            section = _keep_decompositions(section, previous)
        results = _with(results, name, section, started)
        report.write_report(results, out)
    written = report.write_report(results, out)
    progress(f"done in {results.duration_seconds / 60:.1f} min")
    return results, written


def _rounds_and_pairs(rounds: tuple[float, ...]) -> str:
    """A comparison's rounds and its pairs of rounds (A B with B A), for the summary line."""
    if not rounds:
        return "rounds -"
    return f"rounds {figures(rounds, ' ')}; pairs {figures(crossover(rounds), ' ')}"


def _keep_decompositions(section: AnySection, previous: Results | None) -> AnySection:
    """A new data-plane section keeps the decomposition runs the report held: they are added
    by their own commands (`python -m benchmarks.dataplane.parity --publish`, `... nfcost
    --publish`), not by this one."""
    old = previous.sections.dataplane.result if previous is not None else None
    new = section.result
    if old is None or not isinstance(new, DataplaneResult):
        return section
    kept = new.model_copy(
        update={"parity": (*old.parity, *new.parity), "nfcost": (*old.nfcost, *new.nfcost)}
    )
    return section.model_copy(update={"result": kept})


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
    the exit status: 1 if a section this run measured failed, else 0 (a kept section's
    outcome belongs to its own run)."""
    for kind, path in written.items():
        print(f"{kind}: {path}")
    sections = results.sections
    kept = results.kept()
    failed = False
    for name in SECTIONS:
        section = sections.named(name)
        line = f"{name}: {section.status}" + (f" ({section.reason})" if section.reason else "")
        if name in kept:
            line += f", kept from the run of {results.measured(name)}"
        else:
            failed = failed or section.status == "failed"
        print(line)
    dp = sections.dataplane.result
    if dp is not None and dp.shoal_vs_handwg.ratios.tcp1_gbps is not None:
        cmp = dp.shoal_vs_handwg
        tcp, cpu = _rounds_and_pairs(cmp.tcp1_rounds), _rounds_and_pairs(cmp.cpu_rounds)
        print(
            f"shoal / hand-written WireGuard, TCP 1 stream: {cmp.tcp1 or 0:.2f}x "
            f"({tcp}; medians' ratio {cmp.ratios.tcp1_gbps:.2f}x; target >= "
            f"{cmp.target_tcp}x), CPU per Gbit: {cmp.cpu or 0:.2f}x ({cpu}; medians' "
            f"ratio {cmp.ratios.cpu_s_per_gbit or 0:.2f}x; target <= {cmp.target_cpu}x)"
        )
    pol = sections.policy.result
    if pol is not None and pol.tcp1_ratio is not None:
        print(
            f"{pol.rules}-rule policy / no policy, TCP 1 stream: {pol.tcp1_ratio:.2f}x "
            f"(rounds' median {pol.tcp1_paired_ratio or 0:.2f}x), "
            f"CPU per Gbit: {pol.cpu_per_gbit_ratio or 0:.2f}x (target >= {pol.target}x)"
        )
    return 1 if failed else 0
