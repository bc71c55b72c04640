"""The join benchmark's breakdown, read from an agent log."""

from __future__ import annotations

from pathlib import Path

from benchmarks.controlplane import JoinRun, JoinSummary, Stage, agent_stages

LOG = """\
2026-11-30 14:47:00,100 INFO shoal.agent.rec: first apply: tunnel 90 ms, dns 5 ms
2026-11-30 14:47:00,200 INFO agent: startup: 900 ms: process 700 ms, first-apply 200 ms
2026-11-30 14:48:00,100 INFO shoal.agent.rec: first apply: tunnel 80 ms, docker-network 89 ms
2026-11-30 14:48:00,200 INFO agent: startup: 1745 ms: process 1549 ms, ca 7 ms, first-apply 189 ms
2026-11-30 14:48:01,000 INFO shoal.agent.reconciler: host reconciled to netmap r3
"""


def test_the_newest_start_up_of_the_log_is_read(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    log.write_text(LOG)
    assert agent_stages(log) == (
        Stage(name="process", seconds=1.549),
        Stage(name="ca", seconds=0.007),
        Stage(name="first-apply", seconds=0.189),
        Stage(name="apply/tunnel", seconds=0.08),
        Stage(name="apply/docker-network", seconds=0.089),
    )


def test_a_log_without_start_up_gives_no_stages(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    log.write_text("2026-11-30 14:48:01,000 INFO shoal.agent: agent running: h3\n")
    assert agent_stages(log) == ()


def test_the_summary_takes_each_stage_median() -> None:
    runs = [
        JoinRun(command_s=c, first_packet_s=c + 1, stages=(Stage(name="process", seconds=c),))
        for c in (1.0, 3.0, 2.0)
    ]
    summary = JoinSummary.of(runs)
    assert (summary.command_s, summary.first_packet_s) == (2.0, 3.0)
    assert summary.stages == (Stage(name="process", seconds=2.0),)
