"""The decomposition's arithmetic and its way into the published report, from canned runs: no
lab (the measurement itself needs root and two labs: `python -m benchmarks.dataplane.parity`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.dataplane import parity
from benchmarks.dataplane.publish import publish
from benchmarks.dataplane.results import Parity, ParityVariant
from benchmarks.results import Results
from tests.benchmarks.test_report import DOCS


def _run(mbps: float, machine: float, path: float) -> parity.Run:
    return parity.Run(mbps=mbps, gbit=mbps / 1000, machine_s=machine, path_s=path)


def test_each_round_compares_the_variants_two_runs_with_the_hand_written_two() -> None:
    hand = [_run(300, 2.0, 1.5), _run(100, 2.0, 0.5), _run(200, 2.0, 1.0), _run(200, 2.0, 1.0)]
    var = [_run(200, 2.0, 1.0), _run(200, 2.0, 1.0), _run(180, 2.0, 1.0), _run(180, 2.0, 1.0)]
    assert parity._per_round(var, hand, lambda r: r.mbps) == pytest.approx((1.0, 0.9))
    # Path CPU per Gbit: hand 5.0 s/Gbit in both runs of round 2, the variant 1.0/0.18.
    ratios = parity._per_round(var, hand, lambda r: r.path_per_gbit)
    assert ratios[1] == pytest.approx((1.0 / 0.18) / 5.0)


RESULT = Parity(
    label="after: no prerouting chain",
    command="python -m benchmarks.dataplane.parity --rounds 2 --seconds 6",
    generated="2026-12-01 00:30 UTC",
    rounds=2,
    seconds=6,
    variants=(
        ParityVariant(
            variant="shoal",
            description="shoal as it sets itself up",
            hand_mbps=(300.0, 310.0, 290.0, 300.0),
            variant_mbps=(295.0, 300.0, 290.0, 299.0),
            throughput_ratios=(0.98, 1.01),
            machine_cpu_ratios=(1.02, 0.99),
            path_cpu_ratios=(1.01, 1.00),
        ),
    ),
    notes=("the prerouting chain was the cost",),
)


def test_a_published_decomposition_renders_under_the_data_plane(tmp_path: Path) -> None:
    for name in ("benchmarks.json", "benchmarks.md"):
        shutil.copy(DOCS / name, tmp_path / name)
    before = Results.model_validate_json((tmp_path / "benchmarks.json").read_text())
    publish(tmp_path, "parity", RESULT)
    after = Results.model_validate_json((tmp_path / "benchmarks.json").read_text())
    dp_before, dp_after = before.sections.dataplane.result, after.sections.dataplane.result
    assert dp_before is not None and dp_after is not None
    assert dp_after.parity == (*dp_before.parity, RESULT)
    # The rest of the file as it was: only the new entry differs.
    raw = json.loads((tmp_path / "benchmarks.json").read_text())
    raw["sections"]["dataplane"]["result"]["parity"].pop()
    assert raw == json.loads((DOCS / "benchmarks.json").read_text())
    md = (tmp_path / "benchmarks.md").read_text()
    assert "### Where the difference went" in md
    assert "**after: no prerouting chain** (2026-12-01 00:30 UTC;" in md
    row = [line for line in md.splitlines() if line.startswith("| shoal | shoal as")][-1]
    assert "| 300 | 297 | 0.99\u00d7 (0.98-1.01) |" in row and row.endswith(
        "1.00\u00d7 (1.00-1.01) |"
    )
    assert "- the prerouting chain was the cost" in md
