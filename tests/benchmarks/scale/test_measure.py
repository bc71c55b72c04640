"""The server scale benchmark end to end at a toy size: the product's client fleet runs, and the
section reports and draws (no timings asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.scale import measure
from benchmarks.scale.measure import run_scale
from benchmarks.scale.render import chart, render_markdown
from benchmarks.scale.results import FailedPoint, ScalePoint, ScaleResult


@pytest.fixture(autouse=True)
def short_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    """The idle CPU is measured over half a second instead of five."""
    monkeypatch.setattr(measure, "IDLE_SECONDS", 0.5)


async def test_scale_runs_reports_and_charts(tmp_path: Path) -> None:
    result = await run_scale((20,), changes=3, workdir=tmp_path / "run")

    (point,) = result.points
    assert isinstance(point, ScalePoint)
    assert point.nodes == 20
    assert point.changes == 3
    assert point.missed == 0
    assert point.container_fanout_ms is not None
    assert len(point.container_fanout_per_change_ms) == 3
    assert point.bytes_per_change_per_agent > 0
    assert point.bytes_per_change > 0
    assert point.register_reply_bytes_mean > 0
    assert point.client_parse_us_per_delta is not None and point.client_parse_us_per_delta > 0
    assert point.server_idle_cpu_ms_per_s is not None and point.server_idle_cpu_ms_per_s >= 0
    assert point.server_cpu_ms_per_change_net is not None
    assert set(point.server_cpu_ms_by_kind) == {"join", "container", "policy"}
    # The server's own fan-out: every measured change reached the streams through it.
    fanout = point.server_fanout_ms
    assert fanout is not None and fanout.changes >= 9 and 0 < fanout.mean <= fanout.p99_at_most
    assert not any("client errors" in note for note in result.notes)
    # Policy changes reach every agent too, each revision measured.
    assert point.policy_fanout_ms is not None and point.policy_rules == 50
    assert len(point.policy_fanout_per_change_ms) == 3
    assert not any("policy fan-out n/a" in note for note in result.notes)

    text = render_markdown(result)
    assert "| 20 |" in text
    assert "| 20 | 50 |" in text  # the policy table
    assert "20 nodes" in text

    png = chart(result, tmp_path / "scale.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # What benchmarks.json holds reads back to the same result.
    doc = json.loads(result.model_dump_json())
    assert set(doc["points"][0]["join_fanout_ms"]) == {"p50", "p99", "max"}
    assert ScaleResult.model_validate(doc) == result


async def test_scale_on_two_postgresql_replicas(tmp_path: Path) -> None:
    """Agents spread over 2 replicas on the run's own PostgreSQL: every change made through
    one replica reaches the agents of both; the database's CPU is measured apart."""
    clusters = set(Path("/tmp").glob("shoal-bench-pg-*"))  # (other runs')
    result = await run_scale(changes=2, workdir=tmp_path / "run", plan=[("postgresql", 20)])

    (point,) = result.points
    assert isinstance(point, ScalePoint), result.notes
    assert (point.store, point.replicas, point.nodes) == ("postgresql", 2, 20)
    assert point.missed == 0
    assert point.container_fanout_ms is not None
    # Measured apart (not None); 20 nodes may cost the database less than one clock tick
    # (10 ms of /proc CPU time) over the run's changes, so 0 is a valid reading.
    assert point.database_cpu_ms_per_change is not None and point.database_cpu_ms_per_change >= 0
    assert not any("client errors" in note for note in result.notes)
    text = render_markdown(result)
    assert "| postgresql, 2 replicas | 20 |" in text
    assert "| postgresql, 2 replicas | 20 | 50 |" in text  # the policy table names it too
    assert set(Path("/tmp").glob("shoal-bench-pg-*")) <= clusters  # this run's cluster is gone


async def test_a_seeded_mesh_on_two_postgresql_replicas(tmp_path: Path) -> None:
    """`--seeded` on PostgreSQL: the mesh written into a SQLite store moves into the run's
    database before the replicas start, and its agents follow it on both."""
    result = await run_scale(
        changes=2, workdir=tmp_path / "run", plan=[("postgresql", 20)], seed_from=20
    )
    (point,) = result.points
    assert isinstance(point, ScalePoint), result.notes
    assert (point.store, point.replicas, point.nodes, point.missed) == ("postgresql", 2, 20, 0)
    assert point.register_per_s == 0.0  # seeded: nobody registered
    assert point.container_fanout_ms is not None


async def test_a_point_past_its_budget_is_reported_with_how_far_it_got(tmp_path: Path) -> None:
    result = await run_scale((20,), changes=1, workdir=tmp_path / "run", budget=0.01)
    (point,) = result.points
    assert isinstance(point, FailedPoint) and point.store == "sqlite"
    assert "did not fit its 0 s budget (" in point.error and "agents registered" in point.error
