"""The measured control plane: one `shoal server` subprocess on 127.0.0.1 with its own data dir
(SQLite), or several replicas sharing a PostgreSQL cluster of the run's own; watched from outside
through /proc (CPU seconds, RSS) so that nothing in the product knows it is measured."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from shoal.controlclient.tls import ssl_context
from shoal.lab.replicas import make_cluster, postgres_argv, postgres_log, postgres_url
from shoal.store.postgresql import PostgresStore
from shoal.store.sqlite import SqliteStore
from shoal.store.transfer import copy_state
from shoal.testing.prometheus import parse

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


@dataclass(frozen=True)
class Database:
    """A PostgreSQL cluster of the run's own (Debian's binaries, initdb in the work dir) on
    127.0.0.1, so that its CPU is the run's alone: the postmaster's, its reaped backends'
    and its live backends'."""

    proc: subprocess.Popen[bytes]
    url: str
    base: Path  # removed by `stop`

    def cpu_s(self) -> float:
        total = _ticks(self.proc.pid, children=True)
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _parent(int(entry.name)) == self.proc.pid:
                total += _ticks(int(entry.name), children=True)
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown: backends end now
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.base, ignore_errors=True)


def _stat_fields(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return []


def _ticks(pid: int, *, children: bool) -> int:
    """utime + stime (+ cutime + cstime: its reaped children) of `pid`; 0 once gone."""
    fields = _stat_fields(pid)
    if not fields:
        return 0
    own = int(fields[11]) + int(fields[12])
    return own + (int(fields[13]) + int(fields[14]) if children else 0)


def _parent(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else 0


async def start_database() -> Database:
    """A new PostgreSQL cluster on a free port of 127.0.0.1. Its files are in a directory of
    their own under the temporary dir: the `postgres` user must reach them, and a work dir
    (say pytest's, 0700 to root) may not let it."""
    base = Path(tempfile.mkdtemp(prefix="shoal-bench-pg-"))
    await asyncio.to_thread(make_cluster, base)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = postgres_log(base)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            postgres_argv(base, "127.0.0.1", port),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while "ready to accept connections" not in _tail(log, 10):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            shutil.rmtree(base, ignore_errors=True)
            raise BenchError(f"PostgreSQL did not start: {_tail(log)}")
        await asyncio.sleep(0.1)
    return Database(proc=proc, url=postgres_url(port), base=base)


@dataclass(frozen=True)
class ControlPlane:
    """What is measured: one server, or `replicas` on one database. CPU is the replicas' sum
    (the database's apart), RSS the largest replica's."""

    replicas: tuple[Server, ...]
    database: Database | None = None

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(r.url for r in self.replicas)

    @property
    def first(self) -> Server:
        return self.replicas[0]

    def cpu_s(self) -> float:
        return sum(r.cpu_s() for r in self.replicas)

    def database_cpu_s(self) -> float | None:
        return self.database.cpu_s() if self.database is not None else None

    def rss_mb(self) -> float:
        return max(r.rss_mb() for r in self.replicas)

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()
        if self.database is not None:
            self.database.stop()


# Files of a server's data dir that are that one process's, never copied to a replica.
_OWN_FILES = {"server.json", "shoal.db", "shoal.db-wal", "shoal.db-shm"}


async def start_control_plane(
    run_dir: Path, store: str, replicas: int, seed: Path | None = None
) -> ControlPlane:
    """`store` "sqlite": one server; "postgresql": `replicas` servers on the run's database,
    each with a copy of the first one's data dir (CA and keys), as an operator sets them up.
    `seed`: a SQLite store whose mesh the database takes over first (PostgreSQL only; the
    SQLite server's seed is its own store already)."""
    if store == "sqlite":
        return ControlPlane((await start_server(run_dir / "data", run_dir / "server.log"),))
    database = await start_database()
    started: list[Server] = []
    try:
        if seed is not None:
            source, target = SqliteStore(seed), PostgresStore(database.url)
            try:
                await copy_state(source, target)
            finally:
                await source.close()
                await target.close()
        for i in range(replicas):
            data = run_dir / f"data-r{i + 1}"
            if i > 0:
                data.mkdir(mode=0o700, parents=True, exist_ok=True)
                for entry in (run_dir / "data-r1").iterdir():
                    if entry.is_file() and entry.name not in _OWN_FILES:
                        shutil.copy2(entry, data / entry.name)
            started.append(await start_server(data, run_dir / f"server-r{i + 1}.log", database.url))
    except BaseException:
        for server in started:
            server.stop()
        database.stop()
        raise
    return ControlPlane(tuple(started), database)


@dataclass(frozen=True)
class Fanout:
    """The servers' `shoal_server_fanout_seconds` histogram, summed over replicas: seconds
    from a change to its frame on every stream it was pushed to."""

    count: float
    total_s: float
    buckets: tuple[tuple[float, float], ...]  # (upper bound s, cumulative count), +Inf last

    def since(self, before: Fanout) -> Fanout:
        """What was observed after `before` was read."""
        return Fanout(
            count=self.count - before.count,
            total_s=self.total_s - before.total_s,
            # (No series at all before the first observation.)
            buckets=tuple((le, n - dict(before.buckets).get(le, 0.0)) for le, n in self.buckets),
        )

    def mean_ms(self) -> float | None:
        return self.total_s / self.count * 1000 if self.count else None

    def p99_at_most_ms(self) -> float | None:
        """The smallest bucket bound that 99 % of the observations are under."""
        if not self.count:
            return None
        return next(le * 1000 for le, n in self.buckets if n >= 0.99 * self.count)


async def read_fanout(plane: ControlPlane, ca_pem: bytes) -> Fanout:
    """Every replica's fan-out histogram (GET /metrics with its admin token), summed."""
    count = total = 0.0
    buckets: dict[float, float] = {}
    for replica in plane.replicas:
        connector = aiohttp.TCPConnector(ssl=ssl_context(ca_pem))
        headers = {"Authorization": f"Bearer {replica.admin_token}"}
        try:
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.get(replica.url + "/metrics", headers=headers) as resp,
            ):
                text = await resp.text()
                if resp.status != 200:
                    raise BenchError(f"{replica.url}/metrics: HTTP {resp.status}: {text[:200]}")
        except aiohttp.ClientError as exc:
            raise BenchError(f"cannot read {replica.url}/metrics: {exc}") from exc
        try:
            samples = parse(text)
        except AssertionError as exc:
            raise BenchError(f"{replica.url}/metrics does not parse: {exc}") from exc
        for (name, labels), value in samples.items():
            if name == "shoal_server_fanout_seconds_count":
                count += value
            elif name == "shoal_server_fanout_seconds_sum":
                total += value
            elif name == "shoal_server_fanout_seconds_bucket":
                le = dict(labels)["le"]
                bound = math.inf if le == "+Inf" else float(le)
                buckets[bound] = buckets.get(bound, 0.0) + value
    return Fanout(count=count, total_s=total, buckets=tuple(sorted(buckets.items())))


def rss_mb(pid: int) -> float:
    """Resident memory of process `pid` in MB (10⁶ bytes); NaN once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return float("nan")


async def start_server(data_dir: Path, log_path: Path, store_url: str | None = None) -> Server:
    """`shoal server` on 127.0.0.1:0 with its data dir (on `store_url`, else SQLite in the
    data dir); waits for its server.json."""
    data_dir.mkdir(parents=True, exist_ok=True)
    store = ["--store", store_url] if store_url is not None else []
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
        *store,
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


async def wait_quiet(server: ControlPlane) -> None:
    """Until the servers' (and database's) CPU stays below QUIET_CPU_FRACTION for one sample
    (or QUIET_MAX)."""
    deadline = time.monotonic() + QUIET_MAX
    before = server.cpu_s() + (server.database_cpu_s() or 0.0)
    while time.monotonic() < deadline:
        await asyncio.sleep(QUIET_SAMPLE)
        now = server.cpu_s() + (server.database_cpu_s() or 0.0)
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
    server: ControlPlane, limit_mb: float, phase: str, progress: Callable[[], str]
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
