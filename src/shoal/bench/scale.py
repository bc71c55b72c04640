"""Scale of the control server: N simulated agents long-polling one real `shoal server`.

For each node count N, `run_scale` starts a fresh server subprocess on 127.0.0.1 (its own data
dir, SQLite store), registers N simulated agents (real X25519 keys, real HTTPS, one connection
each, no data plane), lets each catch up and then hold `GET /v1/netmap?since=REV&wait=25` in a
loop, folding every update into its own `NetworkMap` with `NetworkMap.apply` as the agent does.
It then makes `changes` changes one at a time, waiting for quiescence in between, and measures
how long each takes to reach every connected agent:

- a node joining: from the register call until every agent's map holds the new node;
- a container starting: from one agent's `POST /v1/containers` until every map holds it
  (reported as unavailable when the server has no such route).

Latency per agent = (time its poll response was read - time of the change) + that agent's own
parse and apply time. The applies run after all agents have received the change (in the real
mesh each agent applies on its own host; here 5,000 agents share one Python process, and
applying inline would serialise 5,000 x ~1 ms of `apply` into everybody's latency). Identical
peer records are parsed once and shared between the simulated maps, so that 5,000 maps of
5,000 peers fit in memory; every distinct record is still validated by pydantic.

Client and server share the machine's cores: the figures are an upper bound of what the server
alone would need. Units: milliseconds, seconds, bytes, MB (10⁶ bytes).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import gc
import json
import os
import resource
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Literal

import aiohttp
from pydantic import ValidationError

from shoal.controlclient.client import ControlClient
from shoal.controlclient.tls import fetch_pinned_ca, ssl_context
from shoal.model.api import (
    ContainerReport,
    ContainersReport,
    RegisterRequest,
    TokenCreateRequest,
)
from shoal.model.keys import PrivateKey
from shoal.model.netmap import Endpoint, MapUpdate, NetworkMap, Node

DEFAULT_NODE_COUNTS = (100, 1000, 5000)
POLL_WAIT = 25.0  # seconds, as the agent's default long-poll
POLL_MARGIN = 10.0  # seconds a poll may take beyond its wait before the client gives up
REGISTER_CONCURRENCY = 32  # registrations in flight at once
CATCHUP_CONCURRENCY = 16  # first polls (each a delta of up to N peers) in flight at once
DRAIN_BATCH = 50  # agents' updates applied between two turns of the event loop
REQUEST_TIMEOUT = 300.0  # seconds for a registration or a first poll under load
SERVER_START_TIMEOUT = 60.0
QUIET_CPU_FRACTION = 0.05  # server below 5 % of a core for QUIET_SAMPLE s = quiescent
QUIET_SAMPLE = 0.25
QUIET_MAX = 15.0
MAX_SERVER_RSS_MB = 8000.0  # never let the server take more than this from a shared machine
TARGET_NODES = 1000
TARGET_P99_MS = 1000.0
TARGET_RSS_MB = 300.0
SHARED_CORES_NOTE = (
    "The simulated agents and the server share this machine's {cores} cores (and other "
    "engineers' test runs): figures are noisy upper bounds, compare ratios within one run."
)

Kind = Literal["node", "container"]


# Parsing, as the agent does, with identical peer records shared between simulated agents.


class NodeCache:
    """Parsed `Node`s by id; a record equal to the cached one's JSON reuses the parsed object."""

    def __init__(self) -> None:
        self._by_id: dict[str, tuple[dict[str, Any], Node]] = {}

    def node(self, doc: Any) -> Any:
        if not isinstance(doc, dict):
            return doc  # let pydantic reject it
        hit = self._by_id.get(str(doc.get("id")))
        if hit is not None and hit[0] == doc:
            return hit[1]
        node = Node.model_validate(doc)
        self._by_id[node.id] = (doc, node)
        return node

    def intern_map(self, doc: Any) -> Any:
        if isinstance(doc, dict):
            if doc.get("self_node") is not None:
                doc["self_node"] = self.node(doc["self_node"])
            doc["peers"] = [self.node(p) for p in doc.get("peers") or ()]
        return doc


def parse_update(raw: bytes, cache: NodeCache) -> MapUpdate:
    """A poll response body → `MapUpdate` (raises `ValueError` if it is not one)."""
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise ValueError("netmap reply is not a JSON object")
    if doc.get("full") is not None:
        doc["full"] = NetworkMap.model_validate(cache.intern_map(doc["full"]))
    if doc.get("self_node") is not None:
        doc["self_node"] = cache.node(doc["self_node"])
    doc["peers_changed"] = [cache.node(p) for p in doc.get("peers_changed") or ()]
    return MapUpdate.model_validate(doc)


# Simulated agents.


@dataclass
class Watch:
    """The change being measured: which peer name or container id agents wait for."""

    kind: Kind
    key: str
    started: float  # perf_counter at the change
    expected: int  # agents that must see it
    arrived: dict[int, float] = field(default_factory=dict)  # agent index → read time
    own_cost: dict[int, float] = field(default_factory=dict)  # agent index → parse+apply s
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def matches(self, update: MapUpdate) -> bool:
        if self.kind == "node":
            peers = update.full.peers if update.full is not None else update.peers_changed
            return any(p.name == self.key for p in peers)
        containers = (
            update.full.containers if update.full is not None else update.containers_changed
        )
        return any(c.id == self.key for c in containers)


@dataclass
class Agent:
    index: int
    name: str
    key: PrivateKey
    session: aiohttp.ClientSession
    credential: str = ""
    node_id: str = ""
    netmap: NetworkMap | None = None
    since: int = 0
    # Received, not yet applied: (update, parse seconds, read time).
    pending: list[tuple[MapUpdate, float, float]] = field(default_factory=list)
    synced: bool = False  # first poll answered


@dataclass
class Fleet:
    """The simulated agents of one run and what they have received."""

    url: str
    ssl: Any
    token: str
    cache: NodeCache = field(default_factory=NodeCache)
    agents: list[Agent] = field(default_factory=list)
    watch: Watch | None = None
    counting: bool = False
    bytes_in: int = 0  # bodies of non-empty poll replies while `counting`
    replies: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    catchup: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(CATCHUP_CONCURRENCY)
    )
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    synced_count: int = 0

    def new_session(self) -> aiohttp.ClientSession:
        # A long-poll holds its connection for up to 25 s: one for it, one for other calls
        # (a container report); a session of its own so no agent borrows another's.
        connector = aiohttp.TCPConnector(ssl=self.ssl, limit=2)
        return aiohttp.ClientSession(connector=connector)

    async def register(self, index: int, name: str) -> tuple[Agent, int]:
        """Join as a new agent; returns it and the response body size."""
        key = PrivateKey.generate()
        agent = Agent(index=index, name=name, key=key, session=self.new_session())
        request = RegisterRequest(
            token=self.token,
            name=name,
            public_key=key.public_key(),
            endpoints=(Endpoint(host=IPv4Address(0xC6120000 + index), port=51820),),
        )
        try:
            async with agent.session.post(
                self.url + "/v1/register",
                data=request.model_dump_json().encode(),
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            ) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise BenchError(f"register {name}: HTTP {resp.status} {raw[:200]!r}")
        except BaseException:
            await agent.session.close()
            raise
        # `shoal up` joins with a client of its own and closes it; the daemon then polls on
        # another connection.
        await agent.session.close()
        agent.session = self.new_session()
        doc = json.loads(raw)
        netmap = NetworkMap.model_validate(self.cache.intern_map(doc["netmap"]))
        agent.credential = str(doc["credential"])
        agent.node_id = str(doc["node_id"])
        agent.netmap = netmap
        agent.since = netmap.revision
        return agent, len(raw)

    async def poll_loop(self, agent: Agent) -> None:
        """The agent's netmap loop: poll, hand the update on, poll again from its revision."""
        headers = {"Authorization": f"Bearer {agent.credential}", "Accept": "application/json"}
        first = True
        while True:
            wait = 0.0 if first else POLL_WAIT
            params = {"since": str(agent.since), "wait": f"{wait:g}"}
            timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT if first else wait + POLL_MARGIN)
            try:
                async with contextlib.AsyncExitStack() as stack:
                    if first:
                        # Catch-up deltas carry up to N peers: a few at a time, as a fleet
                        # restarting with jitter would, not 5,000 at once.
                        await stack.enter_async_context(self.catchup)
                    async with agent.session.get(
                        self.url + "/v1/netmap", params=params, headers=headers, timeout=timeout
                    ) as resp:
                        raw = await resp.read()
                        status = resp.status
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                self.errors[f"poll: {type(exc).__name__}"] += 1
                await asyncio.sleep(1.0)
                continue
            read_at = time.perf_counter()
            if status != 200:
                self.errors[f"poll: HTTP {status}"] += 1
                await asyncio.sleep(1.0)
                continue
            try:
                update = parse_update(raw, self.cache)
            except (ValueError, ValidationError) as exc:
                self.errors[f"poll: bad reply {type(exc).__name__}"] += 1
                await asyncio.sleep(1.0)
                continue
            parse_s = time.perf_counter() - read_at
            if first:
                first = False
                agent.synced = True
                # The catch-up reply carries up to N peers; the server keeps buffers sized by
                # the largest reply per connection (see the notes), so it gets its own.
                await agent.session.close()
                agent.session = self.new_session()
                self.synced_count += 1
                if self.synced_count >= len(self.agents):
                    self.synced.set()
            if update.kind == "none":
                continue
            if self.counting:
                self.bytes_in += len(raw)
                self.replies += 1
            agent.since = update.revision
            agent.pending.append((update, parse_s, read_at))
            watch = self.watch
            if watch is not None and agent.index not in watch.arrived and watch.matches(update):
                watch.arrived[agent.index] = read_at
                if len(watch.arrived) >= watch.expected:
                    watch.done.set()

    async def drain(self) -> None:
        """Apply every received update (each agent's own CPU time is recorded for the watch).
        Yields to the event loop between agents: applying 5,000 maps in one go blocked it for
        seconds, and the long-polls it held timed out on the client side."""
        watch = self.watch
        for n, agent in enumerate(self.agents):
            if n % DRAIN_BATCH == 0:
                await asyncio.sleep(0)
            cost = 0.0
            arrived = watch.arrived.get(agent.index) if watch is not None else None
            for update, parse_s, read_at in agent.pending:
                started = time.perf_counter()
                assert agent.netmap is not None
                agent.netmap = agent.netmap.apply(update)
                cost += parse_s + time.perf_counter() - started
                if watch is not None and read_at == arrived:
                    # What this agent spent before its map held the change.
                    watch.own_cost[agent.index] = cost
            agent.pending.clear()

    def holding(self, watch: Watch) -> int:
        """How many agents' maps hold the watched peer or container."""
        count = 0
        for agent in self.agents:
            netmap = agent.netmap
            if netmap is None:
                continue
            if watch.kind == "node":
                found = any(p.name == watch.key for p in netmap.peers)
            else:
                ids = [c.id for c in netmap.containers]
                i = bisect.bisect_left(ids, watch.key)
                found = i < len(ids) and ids[i] == watch.key
            count += found
        return count


class BenchError(Exception):
    """The benchmark could not run (server did not start, registration refused, ...)."""


# The server subprocess.


@dataclass
class Server:
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
        return _rss_mb(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return float("nan")


def _server_flags() -> set[str]:
    out = subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", "server", "--help"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return {word for word in out.split() if word.startswith("--")}


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
    ]
    if "--heartbeat-timeout" in _server_flags():
        # All agents register before any of them polls, which takes minutes at 5,000 nodes:
        # none may be taken offline (and back) meanwhile, that is not what is measured.
        args += ["--heartbeat-timeout", "900"]
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


# The measurement.


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return float(statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1])


def _summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": round(_pct(values, 50), 2),
        "p99": round(_pct(values, 99), 2),
        "max": round(max(values), 2) if values else float("nan"),
    }


@dataclass
class ChangeResult:
    latencies_ms: list[float]
    reached: int
    expected: int
    bytes_in: int
    server_cpu_s: float


async def measure_change(
    fleet: Fleet,
    server: Server,
    kind: Kind,
    key: str,
    act: Callable[[], Awaitable[None]],
    timeout: float,
) -> ChangeResult:
    """Run `act()` (the change) and wait until every agent holds `key`, then apply."""
    watch = Watch(kind=kind, key=key, started=0.0, expected=len(fleet.agents))
    fleet.bytes_in = 0
    fleet.replies = 0
    fleet.counting = True
    fleet.watch = watch
    cpu0 = server.cpu_s()
    watch.started = time.perf_counter()
    await act()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await watch.done.wait()
    await fleet.drain()
    await wait_quiet(server)
    await fleet.drain()
    fleet.counting = False
    fleet.watch = None
    reached = fleet.holding(watch)
    latencies = [
        (read_at - watch.started + watch.own_cost.get(i, 0.0)) * 1000
        for i, read_at in watch.arrived.items()
    ]
    return ChangeResult(
        latencies_ms=latencies,
        reached=reached,
        expected=watch.expected,
        bytes_in=fleet.bytes_in,
        server_cpu_s=server.cpu_s() - cpu0,
    )


def memory_limit_mb() -> float:
    """The server RSS at which a run is stopped: half of what the machine has available."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return min(MAX_SERVER_RSS_MB, int(line.split()[1]) * 1024 / 1e6 / 2)
    return MAX_SERVER_RSS_MB


async def guard_memory(server: Server, limit_mb: float, fleet: Fleet, phase: str) -> None:
    """Raise `BenchError` when the server's RSS passes `limit_mb` (instead of an OOM kill)."""
    while True:
        rss = server.rss_mb()
        if rss > limit_mb:
            raise BenchError(
                f"server RSS {rss:.0f} MB passed the {limit_mb:.0f} MB guard during {phase} "
                f"({len(fleet.agents)} agents registered, {fleet.synced_count} synced)"
            )
        await asyncio.sleep(0.5)


@contextlib.contextmanager
def setup_without_gc() -> Iterator[None]:
    """Run the fleet's setup with the cyclic GC off, then exempt what it built from it.

    5,000 agents' maps are tens of millions of objects in this one process. Each full
    collection walked them all and paused every simulated agent at once: during setup that
    was minutes, during the measurement it showed up as fan-out latency (a 3,000-node p99 of
    1.9 s instead of 0.9 s). Real agents each hold one map."""
    gc.disable()
    try:
        yield
    finally:
        gc.collect()
        gc.freeze()
        gc.enable()


async def _register_all(fleet: Fleet, count: int, prefix: str) -> list[int]:
    sem = asyncio.Semaphore(REGISTER_CONCURRENCY)
    sizes: list[int] = []

    async def one(i: int) -> None:
        async with sem:
            agent, size = await fleet.register(i, f"{prefix}{i}")
        fleet.agents.append(agent)
        sizes.append(size)

    async with asyncio.TaskGroup() as tg:
        for i in range(count):
            tg.create_task(one(i), name=f"register-{i}")
    fleet.agents.sort(key=lambda a: a.index)
    return sizes


async def _scale_point(nodes: int, changes: int, workdir: Path, notes: list[str]) -> dict[str, Any]:
    run_dir = workdir / f"n{nodes}"
    server = await start_server(run_dir / "data", run_dir / "server.log")
    fleet: Fleet | None = None
    try:
        ca_pem = await fetch_pinned_ca(server.url, server.fingerprint)
        async with ControlClient(server.url, ca_pem, credential=server.admin_token) as admin:
            created = await admin.create_token(TokenCreateRequest(reusable=True))
        fleet = Fleet(url=server.url, ssl=ssl_context(ca_pem), token=created.token)
        point = await _measure(fleet, server, nodes, changes, notes)
    finally:
        if fleet is not None:
            for agent in fleet.agents:
                await agent.session.close()
        server.stop()
    point["verdict"] = verdict(point)
    return point


async def _measure(
    fleet: Fleet, server: Server, nodes: int, changes: int, notes: list[str]
) -> dict[str, Any]:
    client_rss0 = _rss_mb(os.getpid())
    limit = memory_limit_mb()
    started = time.perf_counter()
    with setup_without_gc():
        async with asyncio.TaskGroup() as guarded:
            guard = guarded.create_task(guard_memory(server, limit, fleet, "registration"))
            register_sizes = await _register_all(fleet, nodes, "a")
            guard.cancel()
    register_s = time.perf_counter() - started
    cpu_registered = server.cpu_s()
    rss_registered = server.rss_mb()
    fanout_timeout = max(30.0, nodes / 50)

    async with asyncio.TaskGroup() as tg:
        tasks = [
            tg.create_task(fleet.poll_loop(agent), name=f"poll-{agent.name}")
            for agent in fleet.agents
        ]
        try:
            sync_started = time.perf_counter()
            with setup_without_gc():
                guard = tg.create_task(guard_memory(server, limit, fleet, "initial sync"))
                async with asyncio.timeout(REQUEST_TIMEOUT * 2):
                    await fleet.synced.wait()
                guard.cancel()
                await wait_quiet(server)
                await fleet.drain()
            sync_s = time.perf_counter() - sync_started
            cpu_synced = server.cpu_s()
            client_mb_per_agent = (_rss_mb(os.getpid()) - client_rss0) / nodes

            joins: list[ChangeResult] = []
            for c in range(changes):
                joined: list[Agent] = []

                async def join(c: int = c, joined: list[Agent] = joined) -> None:
                    agent, _ = await fleet.register(nodes + c, f"join{c}")
                    joined.append(agent)

                joins.append(
                    await measure_change(fleet, server, "node", f"join{c}", join, fanout_timeout)
                )
                # The joiner is a connected agent from the next change on.
                for agent in joined:
                    fleet.agents.append(agent)
                    tasks.append(tg.create_task(fleet.poll_loop(agent), name=f"poll-{agent.name}"))
                await wait_quiet(server)

            containers: list[ChangeResult] = []
            container_note: str | None = None
            for c in range(changes):
                reporter = fleet.agents[(c * 7919) % nodes]
                cid = secrets.token_hex(32)
                body = _container_report(reporter, cid, c)
                outcome: list[str] = []

                async def start(
                    reporter: Agent = reporter, body: bytes = body, outcome: list[str] = outcome
                ) -> None:
                    outcome.append(await _post_containers(fleet, reporter, body))

                result = await measure_change(
                    fleet, server, "container", cid, start, 5.0 if c == 0 else fanout_timeout
                )
                if outcome != ["ok"]:
                    container_note = outcome[0] if outcome else "no reply"
                    break
                if c == 0 and result.reached == 0:
                    container_note = "reported containers never reached the agents' maps"
                    break
                containers.append(result)
            cpu_end = server.cpu_s()
            rss_end = server.rss_mb()
        finally:
            for task in tasks:
                task.cancel()

    if container_note is not None:
        notes.append(f"{nodes} nodes: container fan-out n/a: {container_note}")
    join_ms = [ms for r in joins for ms in r.latencies_ms]
    container_ms = [ms for r in containers for ms in r.latencies_ms]
    measured = [*joins, *containers]
    missed = sum(r.expected - r.reached for r in measured)
    if missed:
        notes.append(f"{nodes} nodes: {missed} agent-changes not reached within the timeout")
    if fleet.errors:
        notes.append(f"{nodes} nodes: client errors {dict(fleet.errors)}")
    join_bytes = statistics.fmean(r.bytes_in for r in joins) if joins else 0.0
    return {
        "nodes": nodes,
        "changes": len(joins),
        "join_fanout_ms": _summary(join_ms),
        "join_fanout_per_change_ms": [_summary(r.latencies_ms) for r in joins],
        "container_fanout_ms": _summary(container_ms) if containers else None,
        "container_fanout_per_change_ms": [_summary(r.latencies_ms) for r in containers],
        "bytes_per_change": round(join_bytes),
        "bytes_per_change_per_agent": round(join_bytes / nodes, 1),
        "container_bytes_per_change_per_agent": (
            round(statistics.fmean(r.bytes_in for r in containers) / nodes, 1)
            if containers
            else None
        ),
        "server_cpu_s": {
            "after_register": round(cpu_registered, 2),
            "after_sync": round(cpu_synced, 2),
            "end": round(cpu_end, 2),
        },
        "server_cpu_ms_per_change": (
            round(statistics.fmean(r.server_cpu_s for r in measured) * 1000, 1)
            if measured
            else None
        ),
        "server_rss_mb": {"after_register": round(rss_registered, 1), "end": round(rss_end, 1)},
        "register_per_s": round(nodes / register_s, 1),
        "register_reply_bytes_mean": round(statistics.fmean(register_sizes)),
        "initial_sync_s": round(sync_s, 2),
        "client_mb_per_agent": round(client_mb_per_agent, 3),
        "missed": missed,
    }


def _container_report(agent: Agent, cid: str, c: int) -> bytes:
    assert agent.netmap is not None
    subnet = agent.netmap.self_node.subnet
    report = ContainersReport(
        containers=(
            ContainerReport(id=cid, name=f"bench-{c}", ip=subnet.network_address + 2 + c % 200),
        )
    )
    return report.model_dump_json().encode()


async def _post_containers(fleet: Fleet, agent: Agent, body: bytes) -> str:
    """Report the agent's containers; "ok", or why container fan-out cannot be measured."""
    headers = {"Authorization": f"Bearer {agent.credential}", "Content-Type": "application/json"}
    try:
        async with agent.session.post(
            fleet.url + "/v1/containers",
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
        ) as resp:
            raw = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return f"POST /v1/containers failed: {type(exc).__name__}"
    if status == 404 or status == 405:
        return "the server has no POST /v1/containers route yet"
    if status >= 300:
        return f"POST /v1/containers answered HTTP {status} {raw[:120]!r}"
    return "ok"


def verdict(point: dict[str, Any]) -> str:
    """One line against the targets (set for 1,000 nodes; other sizes are compared alike)."""
    p99 = float(point["join_fanout_ms"]["p99"])
    rss = float(point["server_rss_mb"]["end"])
    ok_p99 = p99 < TARGET_P99_MS
    ok_rss = rss < TARGET_RSS_MB
    scope = "target" if point["nodes"] == TARGET_NODES else f"({TARGET_NODES}-node target)"
    return (
        f"{point['nodes']} nodes: p99 join fan-out {p99:.0f} ms "
        f"{'<' if ok_p99 else '>='} {TARGET_P99_MS:.0f} ms {'ok' if ok_p99 else 'MISSED'}; "
        f"server RSS {rss:.0f} MB {'<' if ok_rss else '>='} {TARGET_RSS_MB:.0f} MB "
        f"{'ok' if ok_rss else 'MISSED'} {scope}"
    )


async def run_scale(
    node_counts: Sequence[int] = DEFAULT_NODE_COUNTS, changes: int = 20, *, workdir: Path
) -> dict[str, Any]:
    """Measure the server at each node count; a JSON-able dict of points and notes."""
    workdir.mkdir(parents=True, exist_ok=True)
    fds = raise_fd_limit(2 * max(node_counts, default=0) + 1024)
    notes = [
        SHARED_CORES_NOTE.format(cores=os.cpu_count()),
        "Latency per agent = poll reply read - change + that agent's parse and apply time; "
        "applies run after all replies are in (each agent has its own CPU in a real mesh).",
        f"Registration: {REGISTER_CONCURRENCY} in flight; first polls (catch-up deltas) "
        f"{CATCHUP_CONCURRENCY} at a time; then every agent long-polls with wait={POLL_WAIT:g} s "
        "on its own connection.",
        f"RLIMIT_NOFILE soft limit {fds} (client; the server inherits it).",
    ]
    points: list[dict[str, Any]] = []
    for n in node_counts:
        try:
            points.append(await _scale_point(n, changes, workdir, notes))
            # Each point as soon as it is measured: a later, larger one may not finish.
            (workdir / f"n{n}" / "point.json").write_text(json.dumps(points[-1], indent=2))
        except* (BenchError, TimeoutError) as group:
            reason = "; ".join(str(e) or type(e).__name__ for e in group.exceptions)
            notes.append(f"{n} nodes: FAILED: {reason}")
            points.append({"nodes": n, "error": reason})
    return {"points": points, "notes": notes}


# Reporting.


def _ms(summary: dict[str, float] | None, key: str) -> str:
    if summary is None:
        return "n/a"
    return f"{summary[key]:.0f}"


def render_markdown(result: dict[str, Any]) -> str:
    lines = [
        "| nodes | join p50 ms | join p99 ms | join max ms | container p50/p99 ms "
        "| bytes/change/agent | server CPU ms/change | server RSS MB (reg/end) "
        "| server CPU s (reg/sync/end) | registrations/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    measured = [p for p in result["points"] if "error" not in p]
    for p in measured:
        cont = p["container_fanout_ms"]
        rss, cpu = p["server_rss_mb"], p["server_cpu_s"]
        lines.append(
            f"| {p['nodes']} | {_ms(p['join_fanout_ms'], 'p50')} "
            f"| {_ms(p['join_fanout_ms'], 'p99')} | {_ms(p['join_fanout_ms'], 'max')} "
            f"| {_ms(cont, 'p50')}/{_ms(cont, 'p99')} | {p['bytes_per_change_per_agent']:.0f} "
            f"| {p['server_cpu_ms_per_change']} | {rss['after_register']:.0f}/{rss['end']:.0f} "
            f"| {cpu['after_register']:.1f}/{cpu['after_sync']:.1f}/{cpu['end']:.1f} "
            f"| {p['register_per_s']:.0f} |"
        )
    lines.append("")
    per_agent = [p["bytes_per_change_per_agent"] for p in measured]
    if len(per_agent) > 1:
        lines.append(
            "Bytes per change per agent across node counts: "
            + ", ".join(f"{b:.0f}" for b in per_agent)
            + " (deltas: constant as N grows means total cost grows with N, not N²)."
        )
    lines += [f"- {p['verdict']}" for p in measured]
    lines += [f"- note: {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def chart(result: dict[str, Any], path: Path) -> Path:
    """PNG of join (and container) fan-out p50/p99 against node count, log x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [p for p in result["points"] if "error" not in p]
    xs = [p["nodes"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(xs, [p["join_fanout_ms"]["p50"] for p in points], "o-", label="node join p50")
    ax.plot(xs, [p["join_fanout_ms"]["p99"] for p in points], "o--", label="node join p99")
    cont = [(p["nodes"], p["container_fanout_ms"]) for p in points if p["container_fanout_ms"]]
    if cont:
        ax.plot([n for n, _ in cont], [s["p50"] for _, s in cont], "s-", label="container p50")
        ax.plot([n for n, _ in cont], [s["p99"] for _, s in cont], "s--", label="container p99")
    ax.axhline(TARGET_P99_MS, color="grey", linestyle=":", label="p99 target (1,000 nodes)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("connected nodes")
    ax.set_ylabel("fan-out latency (ms)")
    ax.set_title("shoal server: time for one change to reach every node")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shoal.bench.scale", description=__doc__)
    parser.add_argument("--nodes", type=int, nargs="+", default=list(DEFAULT_NODE_COUNTS))
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--workdir", type=Path, default=Path("bench-scale"))
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--chart", type=Path, default=None, help="write the PNG here")
    args = parser.parse_args(argv)
    result = asyncio.run(run_scale(args.nodes, args.changes, workdir=args.workdir))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.chart is not None:
        chart(result, args.chart)
    sys.stdout.write(render_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
