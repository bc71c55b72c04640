"""Scale of the control server: N simulated agents long-polling real `shoal server`s.

For each (store, node count N), `run_scale` starts a fresh control plane on 127.0.0.1: one
server subprocess on SQLite, or two replicas on a PostgreSQL cluster of the run's own, the
agents spread evenly over them (`--server A,B` and `B,A`; a change made through one replica
reaches the agents of the other through the database). It registers N simulated agents
(real X25519 keys, real HTTPS, the product's `ControlClient`, no data plane; see `fleet`), lets
each catch up and then hold a long-poll in a loop, folding every update into its own map with
`NetworkMap.apply` as the agent does. It then makes `changes` changes one at a time, waiting
for quiescence in between, and measures how long each takes to reach every connected agent:

- a node joining: from the register call until every agent's map holds the new node;
- a container starting: from one agent's `report_containers` until every map holds it;
- a policy change: from the admin's `set_policy` call (`shoal policy set`) until every map
  holds the new revision, the agent's compile for its host (`compile_for`) included.

Agents follow the netmap on one stream each (`ControlClient.watch`), or with `netmap="poll"`
by long-polls as before streams. Latency per agent = (time its client returned the update, its
own parse included - time of the change) + that agent's own apply time (applies run after
every agent has received the change).

Client and server share the machine's cores: the figures are an upper bound of what the server
alone would need.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.scale.fleet import (
    CATCHUP_CONCURRENCY,
    POLL_WAIT,
    Agent,
    Fleet,
    Kind,
    ServerAccess,
    Transport,
    Watch,
    agent_client,
    opened,
)
from benchmarks.scale.results import (
    FailedPoint,
    ScalePoint,
    ScaleResult,
    ServerCpu,
    ServerFanout,
    ServerRss,
    Summary,
)
from benchmarks.scale.seed import Seeded, seed_store
from benchmarks.scale.server import (
    BenchError,
    ControlPlane,
    Fanout,
    guard_memory,
    memory_limit_mb,
    raise_fd_limit,
    read_fanout,
    rss_mb,
    start_control_plane,
    wait_quiet,
)
from shoal.controlclient.client import ControlClient
from shoal.controlclient.errors import ControlError
from shoal.controlclient.tls import fetch_pinned_ca
from shoal.model.api import PolicySetRequest, RegisterResponse, TokenCreateRequest
from shoal.model.netmap import MapUpdate, NetworkMap
from shoal.model.policy import parse

DEFAULT_NODE_COUNTS = (100, 1000, 5000)
STORES = ("sqlite", "postgresql")
PG_REPLICAS = 2  # replicas on the PostgreSQL store
IDLE_SECONDS = 5.0  # the servers' background CPU is measured over this long, nothing changing
POINT_BUDGET = 1800.0  # seconds a point may take before it is stopped and reported as such
REGISTER_CONCURRENCY = 32  # registrations in flight at once
REGISTER_SAMPLES = 20  # registration replies measured for their size, evenly spread
PARSE_RUNS = 200  # parses of a sample delta, timed
# Rules of the policy whose changes are measured: a mesh's worth of service-to-service rules.
# Its parse, once per simulated agent in this one process, adds to the fan-out's tail (see the
# notes); a 1,000-rule policy's cost on the data plane is the policy section's.
POLICY_RULES = 50
SHARED_CORES_NOTE = (
    "The simulated agents and the server share this machine's {cores} cores (and other "
    "engineers' test runs): figures are noisy upper bounds, compare ratios within one run."
)


@dataclass(frozen=True)
class ChangeResult:
    latencies_ms: list[float]
    reached: int
    expected: int
    bytes_in: int
    server_cpu_s: float
    database_cpu_s: float | None
    window_s: float  # from the change to quiet again: what server_cpu_s was measured over


def _fanout_ms(fanout: Fanout) -> ServerFanout | None:
    mean, p99 = fanout.mean_ms(), fanout.p99_at_most_ms()
    if mean is None or p99 is None:
        return None
    return ServerFanout(changes=round(fanout.count), mean=round(mean, 1), p99_at_most=p99)


async def _idle_cpu(server: ControlPlane) -> float:
    """The servers' CPU milliseconds per second with every agent connected and nothing
    changing (heartbeats, last_seen writes, the liveness sweep), over IDLE_SECONDS."""
    cpu0, started = server.cpu_s(), time.perf_counter()
    await asyncio.sleep(IDLE_SECONDS)
    return (server.cpu_s() - cpu0) * 1000 / (time.perf_counter() - started)


async def measure_change(
    fleet: Fleet,
    server: ControlPlane,
    kind: Kind,
    key: str,
    act: Callable[[], Awaitable[None]],
    timeout: float,
) -> ChangeResult:
    """Run `act()` (the change) and wait until every agent holds `key`, then apply."""
    watch = Watch(kind=kind, key=key, started=0.0, expected=len(fleet.agents))
    fleet.bytes_in = 0
    fleet.counting = True
    fleet.watch = watch
    cpu0, db0 = server.cpu_s(), server.database_cpu_s()
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
    db1 = server.database_cpu_s()
    latencies = [
        (arrived - watch.started + watch.own_cost.get(i, 0.0)) * 1000
        for i, arrived in watch.arrived.items()
    ]
    return ChangeResult(
        latencies_ms=latencies,
        reached=reached,
        expected=watch.expected,
        bytes_in=fleet.bytes_in,
        server_cpu_s=server.cpu_s() - cpu0,
        database_cpu_s=db1 - db0 if db1 is not None and db0 is not None else None,
        window_s=time.perf_counter() - watch.started,
    )


def policy_text(rules: int) -> str:
    """A policy of `rules` service-to-service rules (one port each)."""
    lines = ["rules:"] + [
        f"  - {{from: 'service:svc{i}', to: 'service:svc{i}-db', ports: {10000 + i}}}"
        for i in range(rules)
    ]
    return "\n".join(lines) + "\n"


async def _policy_changes(
    fleet: Fleet, server: ControlPlane, changes: int, timeout: float
) -> tuple[list[ChangeResult], str | None]:
    """`changes` policies set one after the other (`shoal policy set`'s call), each measured
    until every agent's map holds it and the agent compiled it for its host; the results, or
    why the policy fan-out could not be measured."""
    results: list[ChangeResult] = []
    request = PolicySetRequest(file="bench.yaml", source=policy_text(POLICY_RULES))
    # The cyclic GC is off meanwhile: every agent parses a policy of some 2,000 objects per
    # change, and the collections this set off walked the whole fleet's heap (N maps in one
    # process), pausing every simulated agent at once: at 500 nodes p50 3.0 s with it, 0.6 s
    # without. A real agent holds one map. Reference counting still frees the garbage.
    async with contextlib.AsyncExitStack() as stack:
        gc.disable()
        stack.callback(gc.enable)
        admin = await stack.enter_async_context(
            ControlClient(
                server.first.url, fleet.server.ca_pem, credential=server.first.admin_token
            )
        )
        for c in range(changes):
            # A fresh server: the c-th policy set is revision c + 1.
            revision = str(c + 1)
            got: list[str] = []

            async def set_policy(out: list[str] = got) -> None:
                try:
                    out.append(str((await admin.set_policy(request)).revision))
                except ControlError as exc:
                    out.append(f"set_policy failed: {type(exc).__name__}: {exc}")

            result = await measure_change(fleet, server, "policy", revision, set_policy, timeout)
            if got != [revision]:
                return results, got[0] if got else "no reply"
            results.append(result)
            await wait_quiet(server)
    return results, None


def sync_timeout(nodes: int) -> float:
    """Seconds for every agent's first poll to be answered: the catch-ups hold N²/2 records
    in all, each parsed by the client (about 40 µs here), on top of the server's work."""
    return max(600.0, nodes * nodes * 1e-4)


def parse_cost_us(raw: bytes) -> float:
    """Microseconds to parse one poll reply as `ControlClient.poll` does (JSON, then the model).

    The N simulated agents parse one after another in this process: N times this is what
    their parsing adds to the tail of a fan-out here, which a real mesh (one CPU per agent)
    does not pay."""
    started = time.perf_counter()
    for _ in range(PARSE_RUNS):
        MapUpdate.model_validate(json.loads(raw))
    return (time.perf_counter() - started) / PARSE_RUNS * 1e6


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


async def _register_all(fleet: Fleet, count: int, prefix: str) -> list[RegisterResponse]:
    """Register `count` agents, REGISTER_CONCURRENCY at a time; a sample of the replies."""
    sem = asyncio.Semaphore(REGISTER_CONCURRENCY)
    every = max(1, count // REGISTER_SAMPLES)
    samples: list[RegisterResponse] = []

    async def one(i: int) -> None:
        async with sem:
            agent, response = await fleet.register(i, f"{prefix}{i}")
        fleet.agents.append(agent)
        if i % every == 0:
            samples.append(response)

    async with asyncio.TaskGroup() as tg:
        for i in range(count):
            tg.create_task(one(i), name=f"register-{i}")
    fleet.agents.sort(key=lambda a: a.index)
    return samples


async def _follow_seeded(fleet: Fleet, seeds: Sequence[Seeded]) -> None:
    """The fleet's agents for nodes seeded into the store, each at the store's revision with a
    map of its own node only (the mesh settings from one full map)."""
    first = await opened(agent_client(fleet.server, seeds[0].key, 0))
    try:
        full = (await first.poll(since=0, wait=0)).full
    except ControlError as exc:
        raise BenchError(f"a seeded node cannot fetch its map: {exc}") from exc
    finally:
        await first.aclose()
    if full is None:
        raise BenchError("a seeded node got no full map")
    for i, seed in enumerate(seeds):
        netmap = NetworkMap(
            revision=full.revision,
            settings=full.settings,
            self_node=fleet.interner.node(seed.record.node()),
            peers=(),
            containers=(),
        )
        client = await opened(agent_client(fleet.server, seed.key, i))
        fleet.agents.append(Agent(i, seed.record.name, seed.key, client, netmap))


async def _scale_point(
    store: str,
    nodes: int,
    changes: int,
    workdir: Path,
    notes: list[str],
    budget: float,
    netmap: Transport,
    seeded: bool,
) -> ScalePoint:
    run_dir = workdir / f"{store}-n{nodes}"
    seeds: list[Seeded] | None = None
    seed_db: Path | None = None
    if seeded:
        # SQLite: the server's own store; PostgreSQL: a SQLite store its replicas' database
        # takes over before they start, as `shoal server migrate --from` moves a mesh.
        data = run_dir / "data" if store == "sqlite" else run_dir
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        seed_db = data / ("shoal.db" if store == "sqlite" else "seed.db")
        seeds = await seed_store(seed_db, nodes, "a")
    server = await start_control_plane(run_dir, store, PG_REPLICAS, seed_db)
    fleet: Fleet | None = None
    try:
        first = server.first
        try:
            ca_pem = await fetch_pinned_ca(first.url, first.fingerprint)
            async with ControlClient(first.url, ca_pem, credential=first.admin_token) as admin:
                created = await admin.create_token(TokenCreateRequest(reusable=True))
        except ControlError as exc:
            raise BenchError(f"cannot create a join token: {exc}") from exc
        access = ServerAccess(urls=server.urls, ca_pem=ca_pem, token=created.token)
        fleet = Fleet(access, netmap=netmap)
        started = time.monotonic()
        try:
            async with asyncio.timeout(budget):
                point = await _measure(fleet, server, nodes, changes, notes, seeds)
        except TimeoutError as exc:
            raise BenchError(
                f"did not fit its {budget:.0f} s budget ({fleet.progress()} after "
                f"{time.monotonic() - started:.0f} s; server CPU {server.cpu_s():.0f} s, "
                f"RSS {server.rss_mb():.0f} MB)"
            ) from exc
        return point.model_copy(update={"store": store, "replicas": len(server.replicas)})
    finally:
        if fleet is not None:
            await fleet.close()
        server.stop()


async def _measure(
    fleet: Fleet,
    server: ControlPlane,
    nodes: int,
    changes: int,
    notes: list[str],
    seeds: list[Seeded] | None,
) -> ScalePoint:
    client_rss0 = rss_mb(os.getpid())
    limit = memory_limit_mb()
    started = time.perf_counter()
    samples: list[RegisterResponse] = []
    with setup_without_gc():
        if seeds is not None:
            await _follow_seeded(fleet, seeds)
            notes.append(
                f"{nodes} nodes: seeded: written into the store before the server started, "
                "not registered (no registration figures); agents follow from the store's "
                "revision with maps that lack the seeded peers, so their own apply and parse "
                "costs are those of the deltas only (the bytes are those every agent gets)."
            )
        else:
            async with asyncio.TaskGroup() as guarded:
                guard = guarded.create_task(
                    guard_memory(server, limit, "registration", fleet.progress)
                )
                samples = await _register_all(fleet, nodes, "a")
                guard.cancel()
    register_s = time.perf_counter() - started
    reply_bytes = [len(r.model_dump_json()) for r in samples]
    del samples
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
                guard = tg.create_task(guard_memory(server, limit, "initial sync", fleet.progress))
                async with asyncio.timeout(sync_timeout(nodes)):
                    await fleet.synced.wait()
                guard.cancel()
                await wait_quiet(server)
                await fleet.drain()
            sync_s = time.perf_counter() - sync_started
            cpu_synced = server.cpu_s()
            idle_ms_per_s = await _idle_cpu(server)
            fanout0 = await read_fanout(server, fleet.server.ca_pem)
            client_mb_per_agent = (rss_mb(os.getpid()) - client_rss0) / nodes

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
                outcome: list[str] = []

                async def start(
                    reporter: Agent = reporter, cid: str = cid, c: int = c, out: list[str] = outcome
                ) -> None:
                    out.append(await fleet.report_container(reporter, cid, c))

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
            policies, policy_note = await _policy_changes(fleet, server, changes, fanout_timeout)
            cpu_end = server.cpu_s()
            rss_end = server.rss_mb()
            fanout = (await read_fanout(server, fleet.server.ca_pem)).since(fanout0)
            parse_us = parse_cost_us(fleet.sample_delta) if fleet.sample_delta else None
        finally:
            for task in tasks:
                task.cancel()

    if container_note is not None:
        notes.append(f"{nodes} nodes: container fan-out n/a: {container_note}")
    if policy_note is not None:
        notes.append(f"{nodes} nodes: policy fan-out n/a: {policy_note}")
    if policies:
        policy = parse(policy_text(POLICY_RULES), "bench.yaml")
        delta = MapUpdate(kind="delta", revision=1, policy=policy).model_dump_json().encode()
        us = parse_cost_us(delta)
        notes.append(
            f"{nodes} nodes: a {POLICY_RULES}-rule policy delta ({len(delta)} bytes) parses in "
            f"{us:.0f} µs here: up to {nodes * us / 1000:.0f} ms of the policy fan-out's tail "
            "is the simulated agents parsing one after another in this one process (the "
            "cyclic GC is off while policy changes are measured: see measure._policy_changes)."
        )
    join_ms = [ms for r in joins for ms in r.latencies_ms]
    container_ms = [ms for r in containers for ms in r.latencies_ms]
    measured = [*joins, *containers, *policies]
    policy_ms = [ms for r in policies for ms in r.latencies_ms]
    missed = sum(r.expected - r.reached for r in measured)
    if missed:
        notes.append(f"{nodes} nodes: {missed} agent-changes not reached within the timeout")
    if fleet.errors:
        notes.append(f"{nodes} nodes: client errors {dict(fleet.errors)}")
    if parse_us is not None:
        notes.append(
            f"{nodes} nodes: the product's client parses a join delta in {parse_us:.0f} µs here; "
            f"the {nodes} simulated agents parse one after another in this one process, which "
            f"adds up to {nodes * parse_us / 1000:.0f} ms to a fan-out's tail (in a real mesh "
            "each agent parses on its own CPU)."
        )
    join_bytes = statistics.fmean(r.bytes_in for r in joins) if joins else 0.0
    join_fanout = Summary.of(join_ms)
    cpu_per_change = (
        round(statistics.fmean(r.server_cpu_s for r in measured) * 1000, 1) if measured else None
    )
    # Net of what the servers spend with nothing changing, over each change's window.
    cpu_per_change_net = (
        round(
            statistics.fmean(r.server_cpu_s * 1000 - idle_ms_per_s * r.window_s for r in measured),
            1,
        )
        if measured
        else None
    )
    return ScalePoint(
        nodes=nodes,
        changes=len(joins),
        join_fanout_ms=join_fanout,
        join_fanout_per_change_ms=tuple(Summary.of(r.latencies_ms) for r in joins),
        container_fanout_ms=Summary.of(container_ms) if containers else None,
        container_fanout_per_change_ms=tuple(Summary.of(r.latencies_ms) for r in containers),
        bytes_per_change=round(join_bytes),
        bytes_per_change_per_agent=round(join_bytes / nodes, 1),
        container_bytes_per_change_per_agent=(
            round(statistics.fmean(r.bytes_in for r in containers) / nodes, 1)
            if containers
            else None
        ),
        server_cpu_s=ServerCpu(
            after_register=round(cpu_registered, 2),
            after_sync=round(cpu_synced, 2),
            end=round(cpu_end, 2),
        ),
        server_cpu_ms_per_change=cpu_per_change,
        server_idle_cpu_ms_per_s=round(idle_ms_per_s, 1),
        server_fanout_ms=_fanout_ms(fanout),
        server_cpu_ms_per_change_net=cpu_per_change_net,
        server_cpu_ms_by_kind={
            kind: round(statistics.fmean(r.server_cpu_s for r in results) * 1000, 1)
            for kind, results in (("join", joins), ("container", containers), ("policy", policies))
            if results
        },
        database_cpu_ms_per_change=(
            round(statistics.fmean(r.database_cpu_s or 0.0 for r in measured) * 1000, 1)
            if measured and server.database is not None
            else None
        ),
        server_rss_mb=ServerRss(after_register=round(rss_registered, 1), end=round(rss_end, 1)),
        register_per_s=0.0 if seeds is not None else round(nodes / register_s, 1),
        register_reply_bytes_mean=round(statistics.fmean(reply_bytes)) if reply_bytes else 0,
        initial_sync_s=round(sync_s, 2),
        client_mb_per_agent=round(client_mb_per_agent, 3),
        client_parse_us_per_delta=round(parse_us, 1) if parse_us is not None else None,
        missed=missed,
        verdict=ScalePoint.judge(nodes, join_fanout.p99, cpu_per_change, rss_end),
        policy_fanout_ms=Summary.of(policy_ms) if policies else None,
        policy_fanout_per_change_ms=tuple(Summary.of(r.latencies_ms) for r in policies),
        policy_rules=POLICY_RULES if policies else None,
    )


def _leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) groups: a task group's failure says only how many."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


async def run_scale(
    node_counts: Sequence[int] = DEFAULT_NODE_COUNTS,
    changes: int = 20,
    *,
    workdir: Path,
    stores: Sequence[str] = ("sqlite",),
    plan: Sequence[tuple[str, int]] | None = None,
    budget: float = POINT_BUDGET,
    netmap: Transport = "stream",
    seed_from: int | None = None,
) -> ScaleResult:
    """Measure each (store, node count) of `plan` in order (by default every store of
    `stores` at each of `node_counts`); a failed point is recorded with its reason and the
    next one still runs. A point that runs past `budget` seconds is stopped and recorded with
    how far it got (on a shared 2-core machine, 10,000 agents in one process may not fit).
    Points of `seed_from` nodes or more are seeded (see `seed`) instead of registered."""
    if plan is None:
        plan = [(store, n) for store in stores for n in node_counts]
    unknown = sorted({store for store, _ in plan} - set(STORES))
    if unknown:
        raise BenchError(f"unknown store {', '.join(unknown)}: expected one of {STORES}")
    workdir.mkdir(parents=True, exist_ok=True)
    fds = raise_fd_limit(2 * max((n for _, n in plan), default=0) + 1024)
    notes = [
        SHARED_CORES_NOTE.format(cores=os.cpu_count()),
        "Agents: the product's ControlClient (register, poll, watch, report_containers) and "
        "NetworkMap.apply. Latency per agent = its client returned the update (its own parse "
        "included) - change + its apply time; applies run after all replies are in (each "
        "agent has its own CPU in a real mesh).",
        f"Registration: {REGISTER_CONCURRENCY} in flight, each reply parsed in full by the "
        f"client in this process; first polls (catch-up deltas) {CATCHUP_CONCURRENCY} at a "
        f"time; then every agent "
        + (
            f"holds one netmap stream (heartbeat every {POLL_WAIT:g} s)"
            if netmap == "stream"
            else f"long-polls with wait={POLL_WAIT:g} s"
        )
        + " on its own connection.",
        f"RLIMIT_NOFILE soft limit {fds} (client; the server inherits it).",
    ]
    if any(store == "postgresql" for store, _ in plan):
        notes.append(
            f"postgresql: {PG_REPLICAS} replicas on one PostgreSQL cluster of the run's own "
            "(127.0.0.1, fsync off), agents spread evenly over them; server CPU is the "
            "replicas' sum, the database's is apart (db CPU ms/change), RSS the largest "
            "replica's."
        )
    points: list[ScalePoint | FailedPoint] = []
    for store, n in plan:
        try:
            seeded = seed_from is not None and n >= seed_from
            point = await _scale_point(store, n, changes, workdir, notes, budget, netmap, seeded)
        except* (BenchError, TimeoutError) as group:
            reason = "; ".join(str(e) or type(e).__name__ for e in _leaves(group))
            notes.append(f"{store} {n} nodes: FAILED: {reason}")
            points.append(FailedPoint(nodes=n, error=reason, store=store))
        else:
            points.append(point)
            # Each point as soon as it is measured: a later, larger one may not finish.
            (workdir / f"{store}-n{n}" / "point.json").write_text(point.model_dump_json(indent=2))
    return ScaleResult(points=tuple(points), notes=tuple(notes))
