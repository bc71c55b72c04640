"""`shoal up`'s token sources (one of --token, --token -, --token-file, $SHOAL_TOKEN, never
more, kept out of the agent's argv and environment), and what `shoal status` and `shoal down`
print from the agent's typed answers."""

from __future__ import annotations

import argparse
import io
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shoal.cli.agent_cmds import (
    BadArgument,
    _token_in_sight,
    _without_token,
    read_token,
    render_down,
    render_status,
)
from shoal.model.status import AgentState, AgentStatus, DownReport, HealthWarning, SubsystemDown
from shoal.model.tokens import MalformedToken

TOKEN = "SHOAL-1-" + "ab" * 32 + "-" + "cd" * 16


def args(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = {"token": None, "token_file": None, "token_fd": None}
    return argparse.Namespace(**(base | kw))


def test_every_source_gives_the_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    read, write = os.pipe()
    os.write(write, TOKEN.encode())
    os.close(write)
    monkeypatch.setattr("sys.stdin", io.StringIO(f"  {TOKEN}\n"))
    assert read_token(args(token=TOKEN)) == TOKEN
    assert read_token(args(token="-")) == TOKEN
    assert read_token(args(token_file=str(path))) == TOKEN
    assert read_token(args(token_fd=read)) == TOKEN
    monkeypatch.setenv("SHOAL_TOKEN", TOKEN)
    assert read_token(args()) == TOKEN
    monkeypatch.delenv("SHOAL_TOKEN")
    assert read_token(args()) is None


def test_bad_sources_fail_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(BadArgument, match="give the join token once"):
        read_token(args(token=TOKEN, token_file="x"))
    with pytest.raises(BadArgument, match="cannot read the join token"):
        read_token(args(token_file=str(tmp_path / "missing")))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(BadArgument, match="empty"):
        read_token(args(token_file=str(tmp_path / "empty")))
    (tmp_path / "junk").write_text("x" * 100_000)
    with pytest.raises(MalformedToken):
        read_token(args(token_file=str(tmp_path / "junk")))


def test_tokens_in_argv_or_env_are_moved_out_of_sight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOAL_TOKEN", raising=False)
    assert _token_in_sight(args(token=TOKEN))
    assert not _token_in_sight(args(token="-"))
    assert not _token_in_sight(args(token_file="f"))
    monkeypatch.setenv("SHOAL_TOKEN", TOKEN)
    assert _token_in_sight(args())
    assert not _token_in_sight(args(token_fd=3))
    argv = ["up", "--token", TOKEN, "--server", "u", f"--token={TOKEN}", "--foreground"]
    assert _without_token(argv) == ["up", "--server", "u", "--foreground"]


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
