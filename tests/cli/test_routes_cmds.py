"""`shoal routes`: the table, and a refusal as one line (against a real server subprocess)."""

from __future__ import annotations

from datetime import UTC, datetime
from ipaddress import IPv4Network
from pathlib import Path

from shoal.cli.routes_cmds import render_routes
from shoal.model.routes import RouteInfo
from tests.control.test_cli import server_dir, shoal

__all__ = ["server_dir"]  # the fixture, used by name


def test_the_table_lists_id_node_prefix_and_status() -> None:
    route = RouteInfo(
        id="3f1c0a9e2b",
        node="lan-gw",
        node_id="n1",
        prefix=IPv4Network("192.168.77.0/24"),
        status="pending",
        advertised_at=datetime(2026, 11, 30, 17, 3, 41, tzinfo=UTC),
    )
    assert render_routes([route]).splitlines() == [
        "ID          NODE    PREFIX           STATUS   ADVERTISED",
        "3f1c0a9e2b  lan-gw  192.168.77.0/24  pending  2026-11-30 17:03:41",
    ]
    assert render_routes([]).startswith("no advertised routes")


def test_an_unknown_route_is_one_line_and_no_traceback(server_dir: Path) -> None:
    listed = shoal("routes", "list", "--data-dir", str(server_dir))
    assert listed.returncode == 0 and listed.stdout.startswith("no advertised routes")
    refused = shoal("routes", "approve", "10.9.0.0/24", "--data-dir", str(server_dir))
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [
        "shoal: no advertised route '10.9.0.0/24'; see shoal routes list"
    ]
