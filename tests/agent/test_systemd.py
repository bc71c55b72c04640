"""The agent's systemd unit: its text, when shoal uses systemd, and what installing and removing
it leaves behind. This machine (and the lab) has no systemd as PID 1, so `systemctl` is a fake
(`shoal.testing.systemctl`) keeping systemd's state (loaded, enabled, active units)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.agent.errors import SupervisorError
from shoal.agent.systemd import DEFAULT_STATE_DIR, AgentUnit, Systemd, unit_name
from shoal.testing.systemctl import FakeSystemd, fake_systemd


@pytest.fixture
def fake(tmp_path: Path) -> FakeSystemd:
    return fake_systemd(tmp_path)


def test_the_unit_restarts_the_agent_always_and_starts_at_boot() -> None:
    unit = AgentUnit(Path("/var/lib/shoal/agent"), 51820, None, python="/usr/bin/python3")
    text = unit.render()
    assert (
        "ExecStart=/usr/bin/python3 -m shoal.cli.main up --foreground "
        "--state-dir /var/lib/shoal/agent --listen-port 51820\n"
    ) in text
    for line in (
        "Restart=always",
        "RestartSec=250ms",  # the containers' DNS is down from the kill to the next agent
        "RestartMaxDelaySec=15s",  # an agent that keeps failing backs off (systemd >= 254)
        "StartLimitIntervalSec=0",
        "KillMode=process",
    ):
        assert f"\n{line}\n" in text
    assert text.endswith("[Install]\nWantedBy=multi-user.target\n")
    assert "token" not in text.lower()


def test_odd_paths_are_quoted_and_specifiers_escaped() -> None:
    unit = AgentUnit(
        Path("/srv/my agent/100%"), 51821, "unix:///run/d $x.sock", ("mesh", 9469), python="/py"
    )
    assert unit.argv()[-4:-2] == ["--docker-host", "unix:///run/d $x.sock"]
    assert (
        'ExecStart=/py -m shoal.cli.main up --foreground --state-dir "/srv/my agent/100%%" '
        '--listen-port 51821 --docker-host "unix:///run/d $$x.sock" --metrics-listen mesh:9469\n'
    ) in unit.render()


def test_one_unit_per_state_dir() -> None:
    assert unit_name(DEFAULT_STATE_DIR) == "shoal-agent.service"
    other = unit_name(Path("/run/lab/h1/agent"))
    assert other.startswith("shoal-agent-") and other.endswith(".service")
    assert other == unit_name(Path("/run/lab/h1/agent")) != unit_name(Path("/run/lab/h2/agent"))


def test_systemd_is_used_only_where_it_is_pid_1_and_answers(tmp_path: Path) -> None:
    assert fake_systemd(tmp_path / "booted").systemd.running()
    assert not fake_systemd(tmp_path / "container", pid1="sh").systemd.running()
    offline = fake_systemd(tmp_path / "offline")
    offline.set(system="offline")
    assert not offline.systemd.running()
    degraded = fake_systemd(tmp_path / "degraded")
    degraded.set(system="degraded")  # a failed unit elsewhere: systemd still runs ours
    assert degraded.systemd.running()
    missing = Systemd("", unit_dir=tmp_path, proc=tmp_path / "booted" / "proc")
    missing.systemctl = None
    assert not missing.running()


def test_install_enables_and_starts_remove_undoes_it(fake: FakeSystemd) -> None:
    unit = AgentUnit(Path("/var/lib/shoal/agent"))
    path = fake.systemd.install(unit)
    assert path.read_text() == unit.render()
    state = fake.state()
    assert state["loaded"] == state["enabled"] == state["active"] == ["shoal-agent.service"]
    assert fake.systemd.remove(unit.state_dir) == "shoal-agent.service"
    state = fake.state()
    assert state["loaded"] == state["enabled"] == state["active"] == []
    assert not path.exists()
    assert fake.systemd.remove(unit.state_dir) is None  # nothing left: nothing to do


def test_a_refusing_systemd_is_one_line_naming_the_command(fake: FakeSystemd) -> None:
    fake.set(refuse=["shoal-agent.service"])
    with pytest.raises(SupervisorError, match=r"^systemctl enable --now .*Access denied$"):
        fake.systemd.install(AgentUnit(Path("/var/lib/shoal/agent")))
