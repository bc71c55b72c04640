"""A decomposition run (`parity`'s, `nfcost`'s) added to the published report: into the data-plane
section of docs/benchmarks.json, the rest of the file byte for byte as it was (others publish into
it too), and benchmarks.md rendered again from it (the charts stay as they are)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Literal

from benchmarks.dataplane.results import NfCost, Parity
from benchmarks.report import DATAPLANE_PNG, JSON_NAME, MD_NAME, SCALE_PNG, render_markdown
from benchmarks.results import Results
from shoal.lab import LabError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options a decomposition tool takes to keep, reload, annotate and publish a run."""
    parser.add_argument("--save", type=Path, help="write the result as JSON to FILE")
    parser.add_argument(
        "--load", type=Path, help="measure nothing: take the result --save wrote to FILE"
    )
    parser.add_argument("--note", action="append", default=[], help="a finding (repeatable)")
    parser.add_argument("--publish", type=Path, help="add the result to DIR/benchmarks.{json,md}")


def publish(docs: Path, key: Literal["parity", "nfcost"], result: Parity | NfCost) -> None:
    """Add `result` to the data-plane result's list `key` in `docs`/benchmarks.json."""
    path = docs / JSON_NAME
    data = json.loads(path.read_text())
    dp = (data.get("sections", {}).get("dataplane") or {}).get("result")
    if not isinstance(dp, dict):
        raise LabError(f"{path} has no data-plane result to add the decomposition to")
    dp[key] = [*dp.get(key, []), result.model_dump(mode="json")]
    text = json.dumps(data, indent=2) + "\n"
    published = Results.model_validate_json(text)
    path.write_text(text)
    images = {"dataplane": DATAPLANE_PNG, "scale": SCALE_PNG}
    (docs / MD_NAME).write_text(render_markdown(published, images))
