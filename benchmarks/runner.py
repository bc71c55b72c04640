"""`shoal lab bench`: the sections in order (dataplane, controlplane, scale), then the report.

Each section runs in its own labs or processes and is imported lazily: a section whose module
or entry point does not exist yet, or that fails, is recorded as "not run"/"failed" with the
reason, and the report is written anyway. Progress goes to stderr, one line per step.
"""

from __future__ import annotations

import asyncio
import importlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shoal.bench import report
from shoal.lab import DEFAULT_ROOT, LabError, sweep

SECTIONS = ("dataplane", "controlplane", "scale")
SCALE_NODES_FULL = (100, 1000, 5000)
SCALE_NODES_QUICK = (100,)
SCALE_CHANGES_FULL = 10
SCALE_CHANGES_QUICK = 3


class SectionNotRun(Exception):
    """The section cannot run here (missing module, entry point or tool); says why."""


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _entry(module: str, function: str) -> Callable[..., Any]:
    try:
        mod = importlib.import_module(f"shoal.bench.{module}")
    except ModuleNotFoundError as exc:
        if exc.name == f"shoal.bench.{module}":
            raise SectionNotRun(f"shoal.bench.{module} does not exist yet") from exc
        raise
    fn = getattr(mod, function, None)
    if fn is None:
        raise SectionNotRun(f"shoal.bench.{module} has no {function}() yet")
    return fn  # type: ignore[no-any-return]


def _workdir(name: str) -> Path:
    DEFAULT_ROOT.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".bench-{name}-", dir=DEFAULT_ROOT))


def run_section(name: str, hosts: int, quick: bool) -> dict[str, Any]:
    """One section's raw result (a JSON-able dict); SectionNotRun if it cannot run."""
    if name == "dataplane":
        fn = _entry("dataplane", "run_dataplane")
        result: dict[str, Any] = fn(quick=quick)
        return result
    if name == "controlplane":
        fn = _entry("controlplane", "run_controlplane")
        work = _workdir(name)
        try:
            result = asyncio.run(fn(lab_hosts=hosts, workdir=work, quick=quick))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return result
    if name == "scale":
        fn = _entry("scale", "run_scale")
        work = _workdir(name)
        nodes = SCALE_NODES_QUICK if quick else SCALE_NODES_FULL
        changes = SCALE_CHANGES_QUICK if quick else SCALE_CHANGES_FULL
        try:
            result = asyncio.run(fn(node_counts=nodes, changes=changes, workdir=work))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return result
    raise SectionNotRun(f"unknown section {name!r}")


def run_bench(
    out: Path, *, hosts: int = 2, quick: bool = False, only: Sequence[str] = ()
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Run the selected sections (all by default) in order and write the report to `out`."""
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        raise LabError(
            f"unknown section(s) {', '.join(unknown)}: choose from {', '.join(SECTIONS)}"
        )
    started = time.monotonic()
    removed = sweep()
    if removed:
        progress(f"removed labs left by aborted runs: {', '.join(removed)}")
    results: dict[str, Any] = {
        "generated": time.strftime("%Y-%m-%d %H:%M %Z"),
        "command": report.REPRODUCE,
        "argv": sys.argv,
        "quick": quick,
        "hosts": hosts,
        "machine": report.machine_info(),
        "sections": {},
    }
    for name in SECTIONS:
        if only and name not in only:
            results["sections"][name] = {"status": "skipped", "reason": "not selected (--only)"}
            continue
        progress(f"== {name} ({'quick' if quick else 'full'})")
        t0 = time.monotonic()
        section: dict[str, Any]
        try:
            section = {"status": "ok", "reason": None, "result": run_section(name, hosts, quick)}
        except SectionNotRun as exc:
            section = {"status": "not run", "reason": str(exc)}
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one section failing must not lose the others' figures
            section = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
        section["seconds"] = time.monotonic() - t0
        results["sections"][name] = section
        progress(f"== {name}: {section['status']} in {section['seconds']:.0f} s")
        # Written after every section: a run stopped later still leaves these figures.
        results["duration_seconds"] = time.monotonic() - started
        report.write_report(results, out)
    results["duration_seconds"] = time.monotonic() - started
    written = report.write_report(results, out)
    progress(f"done in {results['duration_seconds'] / 60:.1f} min")
    return results, written
