"""The server scale benchmark end to end at a toy size: it runs, reports and draws (no timings)."""

from __future__ import annotations

from pathlib import Path

from shoal.bench.scale import chart, render_markdown, run_scale

POINT_KEYS = {
    "nodes",
    "join_fanout_ms",
    "container_fanout_ms",
    "bytes_per_change_per_agent",
    "server_cpu_s",
    "server_rss_mb",
    "register_per_s",
}


async def test_scale_runs_reports_and_charts(tmp_path: Path) -> None:
    result = await run_scale((20,), changes=3, workdir=tmp_path / "run")

    (point,) = result["points"]
    assert point.keys() >= POINT_KEYS
    assert point["nodes"] == 20
    assert point["missed"] == 0
    assert set(point["join_fanout_ms"]) == {"p50", "p99", "max"}
    assert point["bytes_per_change_per_agent"] > 0
    assert point["bytes_per_change"] > 0
    assert result["notes"]

    text = render_markdown(result)
    assert "| 20 |" in text
    assert "20 nodes" in text

    png = chart(result, tmp_path / "scale.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
