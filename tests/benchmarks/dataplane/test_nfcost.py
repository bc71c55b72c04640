"""The per-part netfilter cost tool's pure parts and its way into the published report (no
namespaces: the measurement itself needs root, `python -m benchmarks.dataplane.nfcost`)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from benchmarks.dataplane.nfcost import FLOWS, PARTS, per_copy, renamed_copies
from benchmarks.dataplane.publish import publish
from benchmarks.dataplane.results import NfCost, NfCostPart
from benchmarks.results import Results
from tests.benchmarks.test_report import DOCS


def test_copies_rename_every_table_and_keep_its_chains() -> None:
    tables = PARTS[0].tables() + PARTS[1].tables()  # bridge shoal, inet shoal
    out = renamed_copies(tables, 3)
    names = re.findall(r"^table (\w+ \S+) \{", out, re.M)
    assert sorted(names) == sorted(
        f"{family} shoal{i}" for family in ("bridge", "inet") for i in range(3)
    )
    assert out.count("type filter hook forward") == 3
    assert out.count("type filter hook prerouting") == 3


def test_the_tables_are_shoals_own_for_the_topology() -> None:
    inet = PARTS[1].tables()
    assert 'iifname "shoal0" ct state established,related accept' in inet
    assert "udp dport 51820" in inet
    assert '10.1.0.2 . "vethnfc0"' in PARTS[0].tables()
    assert all(p.flow in FLOWS for p in PARTS)


def test_one_copy_costs_the_difference_over_the_copies() -> None:
    assert per_copy(7200.0, 6200.0, 10) == 100.0
    assert per_copy(6100.0, 6200.0, 10) == -10.0  # noise can go below zero; it is shown


RESULT = NfCost(
    command="python -m benchmarks.dataplane.nfcost --rounds 2 --copies 10 --seconds 3",
    generated="2026-12-01 15:50 UTC",
    rounds=2,
    copies=10,
    seconds=3,
    parts=(
        NfCostPart(
            part="bridge",
            description="`bridge shoal`: prerouting, a bound port's frame",
            packets="container → mesh",
            baseline_ns=(6400.0, 6500.0),
            added_ns=(170.0, 180.0),
        ),
    ),
    notes=("the bridge table's lookup is most of its cost",),
)


def test_a_published_run_renders_under_the_data_plane_and_keeps_the_rest(
    tmp_path: Path,
) -> None:
    for name in ("benchmarks.json", "benchmarks.md"):
        shutil.copy(DOCS / name, tmp_path / name)
    publish(tmp_path, "nfcost", RESULT)
    after = Results.model_validate_json((tmp_path / "benchmarks.json").read_text())
    assert after.sections.dataplane.result is not None
    assert after.sections.dataplane.result.nfcost[-1] == RESULT
    raw = json.loads((tmp_path / "benchmarks.json").read_text())
    raw["sections"]["dataplane"]["result"]["nfcost"].pop()
    if not raw["sections"]["dataplane"]["result"]["nfcost"]:
        del raw["sections"]["dataplane"]["result"]["nfcost"]
    assert raw == json.loads((DOCS / "benchmarks.json").read_text())
    md = (tmp_path / "benchmarks.md").read_text()
    assert "### Each part of shoal's firewall per packet, apart" in md
    assert (
        "| `bridge shoal`: prerouting, a bound port's frame | container → mesh | 6450 | 175 |" in md
    )
    assert "- the bridge table's lookup is most of its cost" in md
