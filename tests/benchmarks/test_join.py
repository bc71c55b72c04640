"""The join benchmark's breakdown, read from an agent log, and its summary."""

from __future__ import annotations

from pathlib import Path

from benchmarks.join import JoinRun, JoinSummary, Stage, agent_cpu, agent_stages, render

LOG = """\
2026-11-30 14:47:00,100 INFO shoal.agent.rec: first apply: tunnel 90 ms, dns 5 ms
2026-11-30 14:47:00,200 INFO agent: startup: 900 ms: process 700 ms, first-apply 200 ms
2026-11-30 14:48:00,100 INFO shoal.agent.rec: first apply: tunnel 80 ms, docker-network 89 ms
2026-11-30 14:48:00,200 INFO agent: startup: 1745 ms, cpu 612 ms: cli 200 ms, imports 1349 ms, \
ca 7 ms, first-apply 189 ms
2026-11-30 14:48:01,000 INFO shoal.agent.reconciler: host reconciled to netmap r3
"""


def test_the_newest_start_up_of_the_log_is_read(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    log.write_text(LOG)
    assert agent_stages(log) == (
        Stage(name="cli", seconds=0.2),
        Stage(name="imports", seconds=1.349),
        Stage(name="ca", seconds=0.007),
        Stage(name="first-apply", seconds=0.189),
        Stage(name="apply/tunnel", seconds=0.08),
        Stage(name="apply/docker-network", seconds=0.089),
    )
    assert agent_cpu(log) == 0.612


def test_an_older_start_up_line_reads_without_cpu_time(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    log.write_text(LOG.split("2026-11-30 14:48")[0])
    assert agent_stages(log)[0] == Stage(name="process", seconds=0.7)
    assert agent_cpu(log) is None


def test_a_log_without_start_up_gives_no_stages(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    log.write_text("2026-11-30 14:48:01,000 INFO shoal.agent: agent running: h3\n")
    assert agent_stages(log) == ()
    assert agent_cpu(log) is None


def test_the_summary_takes_each_stage_median_and_the_p90() -> None:
    runs = [
        JoinRun(
            command_s=c,
            first_packet_s=c + 1,
            stages=(Stage(name="process", seconds=c),),
            cpu_s=c / 10 if c > 1 else None,
        )
        for c in (1.0, 3.0, 2.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0)
    ]
    summary = JoinSummary.of(runs)
    assert (summary.command_s, summary.first_packet_s) == (5.5, 6.5)
    assert (summary.command_p90_s, summary.first_packet_p90_s) == (9.0, 10.0)
    assert summary.stages == (Stage(name="process", seconds=5.5),)
    assert summary.cpu_s == 0.6  # the run that logged none is left out
    text = render(summary)
    assert "p50 6500 ms, p90 10000 ms" in text
    assert "process" in text
