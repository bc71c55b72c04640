"""The measured `shoal server`: a subprocess on 127.0.0.1 with its own data dir, watched from
outside through /proc (CPU seconds, RSS) so that nothing in the product knows it is measured."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SERVER_START_TIMEOUT = 60.0
QUIET_CPU_FRACTION = 0.05  # server below 5 % of a core for QUIET_SAMPLE s = quiescent
QUIET_SAMPLE = 0.25
QUIET_MAX = 15.0
MAX_SERVER_RSS_MB = 8000.0  # never let the server take more than this from a shared machine


class BenchError(Exception):
    """The benchmark could not run (server did not start, registration refused, ...)."""


@dataclass(frozen=True)
class Server:
    """A running server: its process, URL, CA fingerprint and admin token."""

    proc: subprocess.Popen[bytes]
    url: str
    fingerprint: str
    admin_token: str
    log_path: Path

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process (and its SQLite thread)."""
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return float("nan")
        fields = stat.rpartition(")")[2].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        return ticks / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def rss_mb(pid: int) -> float:
    """Resident memory of process `pid` in MB (10⁶ bytes); NaN once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return float("nan")


async def start_server(data_dir: Path, log_path: Path) -> Server:
    """`shoal server` on 127.0.0.1:0 with a fresh data dir; waits for its server.json."""
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable,
        "-m",
        "shoal.cli.main",
        "server",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        str(data_dir),
        # The default /16 holds 256 host subnets of /24; a /8 holds 65,536.
        "--container-pool",
        "10.0.0.0/8",
        # All agents register before any of them polls, which takes minutes at 5,000 nodes
        # (each registration reply is parsed by the product's client in the one process of
        # the simulated fleet): none may be taken offline (and back) meanwhile, that is not
        # what is measured.
        "--heartbeat-timeout",
        "3600",
        # Every simulated agent connects from 127.0.0.1: one fleet, not one attacker.
        "--no-limits-from",
        "127.0.0.0/8",
    ]
    log = log_path.open("wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    server_json = data_dir / "server.json"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"server exited with {proc.returncode}: {_tail(log_path)}")
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads(server_json.read_text())
            if doc.get("pid") == proc.pid:
                token = (data_dir / "admin.token").read_text().strip()
                return Server(
                    proc=proc,
                    url=str(doc["url"]),
                    fingerprint=str(doc["ca_fingerprint"]),
                    admin_token=token,
                    log_path=log_path,
                )
        await asyncio.sleep(0.1)
    proc.kill()
    proc.wait()
    raise BenchError(f"server did not start in {SERVER_START_TIMEOUT:g} s: {_tail(log_path)}")


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit towards `wanted` (capped by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return int(soft)


async def wait_quiet(server: Server) -> None:
    """Until the server's CPU stays below QUIET_CPU_FRACTION for one sample (or QUIET_MAX)."""
    deadline = time.monotonic() + QUIET_MAX
    before = server.cpu_s()
    while time.monotonic() < deadline:
        await asyncio.sleep(QUIET_SAMPLE)
        now = server.cpu_s()
        if now - before < QUIET_CPU_FRACTION * QUIET_SAMPLE:
            return
        before = now


def memory_limit_mb() -> float:
    """The server RSS at which a run is stopped: half of what the machine has available."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return min(MAX_SERVER_RSS_MB, int(line.split()[1]) * 1024 / 1e6 / 2)
    return MAX_SERVER_RSS_MB


async def guard_memory(
    server: Server, limit_mb: float, phase: str, progress: Callable[[], str]
) -> None:
    """Raise `BenchError` when the server's RSS passes `limit_mb` (instead of an OOM kill);
    `progress()` says how far the run got."""
    while True:
        rss = server.rss_mb()
        if rss > limit_mb:
            raise BenchError(
                f"server RSS {rss:.0f} MB passed the {limit_mb:.0f} MB guard during {phase} "
                f"({progress()})"
            )
        await asyncio.sleep(0.5)
