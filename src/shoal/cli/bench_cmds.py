"""`shoal lab bench`: argument handling and the summary over `shoal.bench.run`."""

from __future__ import annotations

import argparse
from pathlib import Path

from shoal.bench.run import run_bench


def cmd_lab_bench(args: argparse.Namespace) -> int:
    """Run the benchmark sections in fresh labs; write benchmarks.{md,json} and charts."""
    results, written = run_bench(
        Path(args.out), hosts=args.hosts, quick=args.quick, only=tuple(args.only)
    )
    for kind, path in written.items():
        print(f"{kind}: {path}")
    sections = results["sections"]
    failed = [n for n, s in sections.items() if s["status"] == "failed"]
    for name, sec in sections.items():
        line = f"{name}: {sec['status']}"
        if sec.get("reason"):
            line += f" ({sec['reason']})"
        print(line)
    dp = sections.get("dataplane", {}).get("result", {})
    ratio = dp.get("shoal_vs_handwg", {}).get("ratios", {}).get("tcp1_gbps")
    if ratio is not None:
        print(f"shoal / hand-written WireGuard, TCP 1 stream: {ratio:.2f}x (target >= 0.95x)")
    return 1 if failed else 0
