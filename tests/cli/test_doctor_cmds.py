"""`shoal doctor` rendering and exit codes, and the local API round trip it rides on."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import pytest

from shoal.agent.localapi import serve
from shoal.agent.localclient import fetch_doctor
from shoal.cli.doctor_cmds import cmd_doctor, render_doctor
from shoal.model.api import ServiceInfo
from shoal.model.doctor import Check, DoctorReport, UnknownTarget, Verdict
from shoal.model.status import AgentState, AgentStatus, DownReport

REPORT = DoctorReport(
    host="h1",
    checks=(
        Check(code="agent", subject="this host", verdict=Verdict.OK, summary="RUNNING"),
        Check(
            code="path-mtu",
            subject="h2",
            verdict=Verdict.FAIL,
            summary="MTU black hole: 1420-byte packets with DF vanish, up to 1336 bytes pass",
            cause="a hop drops big packets",
            fix="start the server with --mtu 1336",
        ),
    ),
)


def test_one_line_per_check_and_the_cause_and_fix_under_a_failure() -> None:
    assert render_doctor(REPORT) == (
        "ok    agent     this host  RUNNING\n"
        "FAIL  path-mtu  h2         MTU black hole: 1420-byte packets with DF vanish, up to "
        "1336 bytes pass\n"
        "                cause: a hop drops big packets\n"
        "                fix:   start the server with --mtu 1336\n"
        "doctor on h1: 2 checks, 1 failed"
    )


def test_no_agent_is_a_failed_check_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = argparse.Namespace(state_dir=str(tmp_path), target=None, json=True)
    assert cmd_doctor(args) == 1
    report = DoctorReport.model_validate(json.loads(capsys.readouterr().out))
    (check,) = report.checks
    assert (check.code, check.verdict, check.summary) == (
        "agent",
        Verdict.FAIL,
        "agent not running",
    )
    assert f"shoal up --state-dir {tmp_path}" in (check.fix or "")


async def test_the_local_api_carries_the_report_and_unknown_targets(tmp_path: Path) -> None:
    async def status() -> AgentStatus:
        return AgentStatus(state=AgentState.RUNNING)

    async def down(leave: bool) -> DownReport:
        return DownReport(subsystems=())

    async def services() -> list[ServiceInfo]:
        return []

    async def doctor(target: str | None) -> DoctorReport:
        if target == "nope":
            raise UnknownTarget("no node, container or service named 'nope'")
        return REPORT.model_copy(update={"target": target})

    sock = tmp_path / "agent.sock"
    runner = await serve(sock, status, down, services, doctor=doctor)
    try:
        got = await asyncio.to_thread(fetch_doctor, sock, "10.42.2.5:80")
        assert got == REPORT.model_copy(update={"target": "10.42.2.5:80"})
        with pytest.raises(UnknownTarget, match="named 'nope'"):
            await asyncio.to_thread(fetch_doctor, sock, "nope")
    finally:
        await runner.cleanup()
