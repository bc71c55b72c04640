"""`python -m benchmarks.scale`: the scale section alone, e.g. `--nodes 100 --changes 10
--store sqlite postgresql`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.scale.measure import DEFAULT_NODE_COUNTS, POINT_BUDGET, STORES, run_scale
from benchmarks.scale.render import chart, render_markdown


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__)
    parser.add_argument("--nodes", type=int, nargs="+", default=list(DEFAULT_NODE_COUNTS))
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument(
        "--store",
        nargs="+",
        choices=STORES,
        default=["sqlite"],
        help="sqlite: one server; postgresql: 2 replicas on a PostgreSQL of the run's own",
    )
    parser.add_argument(
        "--budget", type=float, default=POINT_BUDGET, help="seconds per point before it stops"
    )
    parser.add_argument(
        "--netmap",
        choices=("stream", "poll"),
        default="stream",
        help="how agents follow the netmap: one stream each, or long-polls (before streams)",
    )
    parser.add_argument(
        "--seeded",
        action="store_true",
        help="write the N nodes into the store before the server starts (PostgreSQL: moved "
        "from a SQLite store as `shoal server migrate` does) instead of registering them: the "
        "server side of 10,000 hosts without 10,000 catch-ups here",
    )
    parser.add_argument("--workdir", type=Path, default=Path("bench-scale"))
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--chart", type=Path, default=None, help="write the PNG here")
    args = parser.parse_args(argv)
    result = asyncio.run(
        run_scale(
            args.nodes,
            args.changes,
            workdir=args.workdir,
            stores=args.store,
            budget=args.budget,
            netmap=args.netmap,
            seed_from=0 if args.seeded else None,
        )
    )
    if args.json is not None:
        args.json.write_text(result.model_dump_json(indent=2) + "\n")
    if args.chart is not None:
        chart(result, args.chart)
    sys.stdout.write(render_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
