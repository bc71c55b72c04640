"""`python -m benchmarks`: every section in fresh labs; writes benchmarks.{md,json} and charts.

Run as root from a source checkout (`make bench`); the flags are those of `shoal lab bench`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.results import SECTIONS
from benchmarks.runner import run_bench, summarize
from shoal.lab import LabError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument(
        "--quick", action="store_true", help="short runs (a smoke test, not figures)"
    )
    parser.add_argument("--out", default="docs", help="where benchmarks.md, .json and .png go")
    parser.add_argument(
        "--only", action="append", default=[], choices=SECTIONS, help="a section (repeatable)"
    )
    args = parser.parse_args(argv)
    try:
        results, written = run_bench(
            Path(args.out), hosts=args.hosts, quick=args.quick, only=tuple(args.only)
        )
    except LabError as exc:
        print(f"benchmarks: {exc}", file=sys.stderr)
        return 2
    return summarize(results, written)


if __name__ == "__main__":
    sys.exit(main())
