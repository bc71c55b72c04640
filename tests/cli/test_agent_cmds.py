"""What `shoal status` and `shoal down` print from the agent's typed answers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from shoal.cli.agent_cmds import render_down, render_status
from shoal.model.status import AgentState, AgentStatus, DownReport, HealthWarning, SubsystemDown


def test_status_shows_each_warning_with_its_code_and_age() -> None:
    recently = datetime.now(UTC) - timedelta(seconds=30.5)
    status = AgentStatus(
        state=AgentState.NEEDS_JOIN,
        health=(
            HealthWarning(
                code="needs-join",
                message="the server rejected this node (node removed); join again: shoal up ...",
                since=recently,
            ),
        ),
    )
    assert render_status(status) == (
        "NEEDS_JOIN\n"
        "  ! needs-join: the server rejected this node (node removed); join again: shoal up ..."
        " (since 30s ago)"
    )
    (warning,) = json.loads(status.model_dump_json())["health"]
    assert set(warning) == {"code", "message", "since"}


def test_down_says_what_was_kept_and_what_failed() -> None:
    report = DownReport(
        subsystems=(
            SubsystemDown(subsystem="firewall", removed=False, error="iptables-restore failed"),
            SubsystemDown(subsystem="docker-network", removed=False, kept_for=("web-1", "web-2")),
            SubsystemDown(subsystem="tunnel", removed=True),
        ),
        left=False,
    )
    assert render_down(report).splitlines() == [
        "shoal: could not remove firewall: iptables-restore failed",
        "shoal: kept Docker network 'shoal': containers still attached: web-1, web-2",
        "shoal: could not reach the server to leave; `shoal node remove` there",
    ]
    alone = DownReport(subsystems=(SubsystemDown(subsystem="docker-network", removed=True),))
    assert render_down(alone).splitlines() == [
        "shoal: removed interface, routes and firewall rules",
        "shoal: removed Docker network 'shoal'",
    ]
