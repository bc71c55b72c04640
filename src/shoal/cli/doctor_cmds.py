"""`shoal doctor [TARGET] [--json]`: render the agent's checks; exit 1 when any failed.

The checks run in the agent (`shoal.agent.doctor`); this module only asks and renders. When no
agent answers, that is itself the first failure, reported in the same shape.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from shoal.agent.errors import AgentNotRunning
from shoal.agent.localclient import fetch_doctor
from shoal.agent.statefiles import StateDir
from shoal.model.doctor import Check, DoctorReport, Verdict

_LABEL = {Verdict.OK: "ok", Verdict.WARN: "WARN", Verdict.FAIL: "FAIL", Verdict.SKIP: "skip"}


def cmd_doctor(args: argparse.Namespace) -> int:
    state = StateDir(Path(args.state_dir))
    try:
        report = fetch_doctor(state.socket, args.target)
    except AgentNotRunning as exc:
        report = not_running(exc, args.target, state.path)
    print(report.model_dump_json(indent=2) if args.json else render_doctor(report))
    return 1 if report.failed else 0


def not_running(exc: AgentNotRunning, target: str | None, state_dir: Path) -> DoctorReport:
    check = Check(
        code="agent",
        subject="this host",
        verdict=Verdict.FAIL,
        summary="agent not running",
        cause=f"{exc}; the mesh keeps forwarding as last configured, but nothing follows the "
        "netmap, names no longer resolve in containers and no check can run",
        fix=f"`shoal up --state-dir {state_dir}` (or start its service) and look at "
        f"{state_dir / 'agent.log'} for why it stopped",
    )
    identity = StateDir(state_dir).identity()
    host = identity.name if identity is not None else os.uname().nodename
    return DoctorReport(host=host, target=target, checks=(check,))


def render_doctor(report: DoctorReport) -> str:
    """One line per check (verdict, check, subject, what was seen); a failure or warning adds
    its cause and its fix, indented, under it."""
    width = max((len(c.code) for c in report.checks), default=0)
    subjects = max((len(c.subject) for c in report.checks), default=0)
    lines = []
    for check in report.checks:
        lines.append(
            f"{_LABEL[check.verdict]:<4}  {check.code:<{width}}  {check.subject:<{subjects}}  "
            f"{check.summary}"
        )
        pad = " " * (6 + width + 2)
        if check.cause:
            lines.append(f"{pad}cause: {check.cause}")
        if check.fix:
            lines.append(f"{pad}fix:   {check.fix}")
    failed = len(report.failed)
    about = f" {report.target}" if report.target else ""
    verdict = f"{failed} failed" if failed else "all passed"
    count = f"{len(report.checks)} check{'s' if len(report.checks) != 1 else ''}"
    lines.append(f"doctor{about} on {report.host}: {count}, {verdict}")
    return "\n".join(lines)
