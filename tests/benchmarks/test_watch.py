"""The watcher-stage measurement against a real dockerd: it measures every container it starts
and leaves none behind (the figures themselves are the benchmark's, not asserted)."""

from __future__ import annotations

import math

from benchmarks.watch import watch_latency
from tests.dockerhost.conftest import IMAGE, Dockerd


async def test_measures_each_container_and_removes_them(dockerd: Dockerd) -> None:
    dockerd.image()
    dockerd.cli("network", "create", "--subnet", "10.42.1.0/24", "shoal")

    result = await watch_latency(dockerd.url, "shoal", IMAGE, 3, "w")

    assert result.containers == 3
    assert len(result.run_returned_to_report_ms.all_ms) == 3
    assert len(result.started_at_to_report_ms.all_ms) == 3
    figures = (
        result.run_returned_to_report_ms.p50,
        result.started_at_to_report_ms.max,
        result.listing_warm_p50_ms,
        result.listing_cold_ms,
    )
    assert all(math.isfinite(x) for x in figures)
    assert result.listing_warm_p50_ms >= 0 and result.listing_cold_ms > 0
    assert dockerd.cli("ps", "-aq").stdout.split() == []
