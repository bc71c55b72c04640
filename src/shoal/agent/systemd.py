"""Keeping the agent running across crashes and reboots: a systemd unit, where systemd runs.

On a host booted with systemd (PID 1 is systemd and `systemctl` answers), `shoal up` joins in
its own process, writes `shoal-agent.service` (one unit per state dir), enables and starts it:
systemd restarts the agent whenever it exits (`Restart=always`, never rate-limited) and starts
it at boot (`WantedBy=multi-user.target`). The unit's agent resumes from the state dir; the
join token was used up by `shoal up` and never reaches the unit file, an argv or an
environment. `shoal down` stops, disables and removes the unit before it undoes the host.

Elsewhere (a container, the lab, hosts with another init) `shoal up` starts a detached agent
that nothing restarts: run `shoal up --foreground` under that host's supervisor instead, e.g.
`docker run --restart=always ... shoal up --foreground`, a supervisord `[program:shoal]`
with `autorestart=true`, or an s6/runit service.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from shoal.agent.errors import SupervisorError

UNIT_DIR = Path("/etc/systemd/system")
DEFAULT_STATE_DIR = Path("/var/lib/shoal/agent")
SYSTEMCTL_TIMEOUT = 60.0  # seconds; `enable --now` waits for the start job
# RestartSec: how long systemd waits before starting a dead agent again. The containers' DNS
# is down from the agent's death until the new one answers (about 0.5-1.3 s after its start on
# a loaded 2-core machine, benchmarks/recovery.py), and the target is 2 s in all: 1 s left
# too little. An agent that keeps failing backs off up to RESTART_MAX_SECONDS (systemd >= 254;
# older ones ignore RestartSteps and RestartMaxDelaySec with a notice, and keep the 250 ms).
RESTART_SECONDS = 0.25
RESTART_MAX_SECONDS = 15

# Characters an ExecStart word may hold unquoted (anything else is quoted and escaped).
_PLAIN = re.compile(r"[A-Za-z0-9_./:@=+,-]+")


def unit_name(state_dir: Path) -> str:
    """`shoal-agent.service` for the default state dir; one stable name per other state dir
    (several agents on one machine are separated by their state dirs)."""
    if state_dir == DEFAULT_STATE_DIR:
        return "shoal-agent.service"
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:8]
    return f"shoal-agent-{digest}.service"


def _exec_word(word: str) -> str:
    """One ExecStart argument as systemd reads it: `%` and `$` are its specifiers and
    variables, so they are doubled; words with other characters are double-quoted."""
    escaped = word.replace("%", "%%").replace("$", "$$")
    if _PLAIN.fullmatch(word):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True, slots=True)
class AgentUnit:
    """The unit that runs the agent of one state dir. Holds no secret: the agent resumes from
    the state dir, where the node's key and identity are (files mode 0600)."""

    state_dir: Path
    listen_port: int = 51820
    docker_host: str | None = None
    metrics_listen: tuple[str, int] | None = None  # as parsed from --metrics-listen
    python: str = sys.executable

    @property
    def name(self) -> str:
        return unit_name(self.state_dir)

    def argv(self) -> list[str]:
        argv = [self.python, "-m", "shoal.cli.main", "up", "--foreground"]
        argv += ["--state-dir", str(self.state_dir), "--listen-port", str(self.listen_port)]
        if self.docker_host:
            argv += ["--docker-host", self.docker_host]
        if self.metrics_listen is not None:
            host, port = self.metrics_listen
            argv += ["--metrics-listen", f"{host}:{port}"]
        return argv

    def render(self) -> str:
        exec_start = " ".join(_exec_word(word) for word in self.argv())
        return f"""\
# Written by `shoal up`, removed by `shoal down`. Change it with `systemctl edit {self.name}`.
[Unit]
Description=shoal agent (state dir {self.state_dir})
Wants=network-online.target
After=network-online.target docker.service
# Never give up restarting: the mesh and the containers' DNS depend on this agent.
StartLimitIntervalSec=0

[Service]
Type=simple
ExecStart={exec_start}
Restart=always
RestartSec={RESTART_SECONDS * 1000:.0f}ms
RestartSteps=8
RestartMaxDelaySec={RESTART_MAX_SECONDS}s
# Stopping or restarting the agent leaves wireguard-go (its child) forwarding: a new agent
# takes the interface over without a lost packet. `shoal down` removes it.
KillMode=process

[Install]
WantedBy=multi-user.target
"""


class Systemd:
    """The host's systemd, through `systemctl` (injectable: tests give a fake one)."""

    def __init__(
        self,
        systemctl: str | None = None,
        unit_dir: Path = UNIT_DIR,
        proc: Path = Path("/proc"),
    ) -> None:
        self.systemctl = systemctl if systemctl is not None else shutil.which("systemctl")
        self.unit_dir = unit_dir
        self.proc = proc

    def running(self) -> bool:
        """True when systemd is PID 1 and `systemctl` can talk to it."""
        try:
            init = (self.proc / "1" / "comm").read_text().strip()
        except OSError:
            return False
        if init != "systemd" or self.systemctl is None:
            return False
        try:
            state = subprocess.run(
                [self.systemctl, "is-system-running"],
                capture_output=True,
                text=True,
                timeout=SYSTEMCTL_TIMEOUT,
                check=False,
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return False
        # Its exit code is non-zero for "degraded" too: only these mean no manager to talk to.
        return state not in ("", "offline", "unknown")

    def _systemctl(self, *args: str) -> None:
        assert self.systemctl is not None, "only called once running() said yes"
        try:
            done = subprocess.run(
                [self.systemctl, *args],
                capture_output=True,
                text=True,
                timeout=SYSTEMCTL_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SupervisorError(f"systemctl {' '.join(args)}: {exc}") from exc
        if done.returncode != 0:
            reason = done.stderr.strip() or f"exit code {done.returncode}"
            raise SupervisorError(f"systemctl {' '.join(args)}: {reason}")

    def installed(self, state_dir: Path) -> bool:
        """Whether `shoal up` installed the unit of `state_dir` (and `shoal down` has not
        removed it)."""
        return (self.unit_dir / unit_name(state_dir)).exists()

    def install(self, unit: AgentUnit, restart: bool = False) -> Path:
        """Write the unit, enable it for boot and start it now; idempotent. `restart`: a
        running agent is restarted too (new settings; KillMode=process keeps the tunnel)."""
        path = self.unit_dir / unit.name
        tmp = path.with_name(path.name + ".tmp")
        try:
            self.unit_dir.mkdir(parents=True, exist_ok=True)
            tmp.write_text(unit.render())
            os.chmod(tmp, 0o644)
            tmp.replace(path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise SupervisorError(f"cannot write {path}: {exc.strerror or exc}") from exc
        self._systemctl("daemon-reload")
        self._systemctl("enable", "--now", unit.name)
        if restart:
            self._systemctl("restart", unit.name)
        return path

    def remove(self, state_dir: Path) -> str | None:
        """Stop and disable the unit of `state_dir` and delete its file; the unit's name, or
        None when there was none. Stopping leaves the host configured (SIGTERM)."""
        name = unit_name(state_dir)
        path = self.unit_dir / name
        if not path.exists():
            return None
        if self.running():
            self._systemctl("disable", "--now", name)
        path.unlink(missing_ok=True)
        if self.running():
            self._systemctl("daemon-reload")
        return name
