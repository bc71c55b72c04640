"""`shoal lab bench`: runs the benchmarks (the top-level `benchmarks` package of a source
checkout, not shipped in the wheel) with the flags of `python -m benchmarks`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import shoal

# src/shoal/__init__.py → the checkout's root, where benchmarks/ lives beside src/.
_CHECKOUT = Path(shoal.__file__).resolve().parents[2]
NOT_AVAILABLE = (
    "shoal lab bench: the benchmarks are not installed with shoal; "
    "run `make bench` from a source checkout"
)


def cmd_lab_bench(args: argparse.Namespace) -> int:
    """Run the benchmark sections in fresh labs; write benchmarks.{md,json} and charts.

    Exit status 2 with a one-line message when the benchmarks are not available (shoal
    installed from a wheel)."""
    if (_CHECKOUT / "benchmarks" / "__init__.py").is_file() and str(_CHECKOUT) not in sys.path:
        # An editable install puts only src/ on the path; the benchmarks sit beside it.
        sys.path.append(str(_CHECKOUT))
    try:
        from benchmarks.runner import run_bench, summarize
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "benchmarks":
            raise  # the benchmarks are there; something they import is not
        print(NOT_AVAILABLE, file=sys.stderr)
        return 2
    results, written = run_bench(
        Path(args.out), hosts=args.hosts, quick=args.quick, only=tuple(args.only)
    )
    return summarize(results, written)
