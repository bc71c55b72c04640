"""Progress of a benchmark run: one line per step on stderr (stdout carries the results)."""

from __future__ import annotations

import sys


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)
