"""What the scale benchmark reports, per node count: fan-out latency, bytes, server CPU and
memory. Units: milliseconds, seconds, bytes, MB (10⁶ bytes). The field names are the keys of
`benchmarks.json` (section "scale")."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from benchmarks.typed import Frozen


class Target(Frozen):
    """What a node count is held to (issue 10): join fan-out p99, and at 10,000 also the
    servers' CPU per change (all replicas together) and each replica's RSS."""

    nodes: int
    p99_ms: float
    cpu_ms_per_change: float | None = None
    rss_mb: float | None = None


TARGETS = (
    Target(nodes=1000, p99_ms=500.0),
    Target(nodes=10_000, p99_ms=2000.0, cpu_ms_per_change=500.0, rss_mb=500.0),
)


class Summary(Frozen):
    """Percentiles of a latency sample, milliseconds (NaN when empty)."""

    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        return cls(
            p50=round(_pct(values, 50), 2),
            p99=round(_pct(values, 99), 2),
            max=round(max(values), 2) if values else float("nan"),
        )


def _pct(values: Sequence[float], q: int) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return float(statistics.quantiles(ordered, n=100, method="inclusive")[q - 1])


class ServerCpu(Frozen):
    """The server's CPU seconds so far, at three moments of a run."""

    after_register: float
    after_sync: float
    end: float


class ServerRss(Frozen):
    """The server's resident memory, MB."""

    after_register: float
    end: float


class ServerFanout(Frozen):
    """`shoal_server_fanout_seconds` over a point's changes, all replicas (milliseconds)."""

    changes: int  # wake-ups that reached a stream (a burst of changes is one)
    mean: float
    p99_at_most: float  # the histogram's bucket bound 99 % are under


class ScalePoint(Frozen):
    """One node count, measured."""

    nodes: int
    changes: int  # joins measured (as many containers, unless `container_fanout_ms` is None)
    join_fanout_ms: Summary  # register call → a connected agent's map holds the new node
    join_fanout_per_change_ms: tuple[Summary, ...]
    container_fanout_ms: Summary | None  # report_containers → every map holds the container
    container_fanout_per_change_ms: tuple[Summary, ...]
    bytes_per_change: int  # reply JSON to all agents for one join
    bytes_per_change_per_agent: float
    container_bytes_per_change_per_agent: float | None
    server_cpu_s: ServerCpu
    server_cpu_ms_per_change: float | None
    # The same by kind of change: "join", "container", "policy" (empty: older runs).
    server_cpu_ms_by_kind: dict[str, float] = {}
    # What the servers spend per second with nothing changing (heartbeats, last_seen writes,
    # the sweep), and the CPU per change net of it over each change's window (None: older).
    server_idle_cpu_ms_per_s: float | None = None
    # The servers' own fan-out over the changes measured (their metric: a change to its frame
    # on every stream it was pushed to), apart from the simulated agents' reading (None: older).
    server_fanout_ms: ServerFanout | None = None
    server_cpu_ms_per_change_net: float | None = None
    # The database's CPU per change (PostgreSQL store; None: SQLite, inside the server).
    database_cpu_ms_per_change: float | None = None
    server_rss_mb: ServerRss
    # Registrations per second, 32 in flight; each reply (the full map) is parsed by the
    # simulated agent's client in this process, which bounds the rate as N grows.
    register_per_s: float
    register_reply_bytes_mean: int  # mean size of a registration reply (sampled)
    initial_sync_s: float
    client_mb_per_agent: float  # the simulated agents' process growth per agent
    # One join delta parsed as ControlClient does, in this process (None: older runs).
    client_parse_us_per_delta: float | None = None
    missed: int  # agent-changes not reached within the timeout
    verdict: str
    # `shoal policy set` → every agent's map holds the new policy, compiled for its host
    # (None: older runs, or the policy could not be set).
    policy_fanout_ms: Summary | None = None
    policy_fanout_per_change_ms: tuple[Summary, ...] = ()
    policy_rules: int | None = None
    store: str = "sqlite"  # "sqlite" (one server) or "postgresql" (`replicas` of them)
    replicas: int = 1

    @staticmethod
    def judge(nodes: int, join_p99_ms: float, cpu_ms: float | None, rss_mb: float) -> str:
        """One line against the target of `nodes` (an untargeted count: its figures only)."""
        target = next((t for t in TARGETS if t.nodes == nodes), None)
        if target is None:
            return f"{nodes} nodes: p99 join fan-out {join_p99_ms:.0f} ms (no target at this size)"
        checks = [_check("p99 join fan-out", join_p99_ms, "<", target.p99_ms, "ms")]
        if target.cpu_ms_per_change is not None:
            checks.append(
                _check("server CPU per change", cpu_ms, "<=", target.cpu_ms_per_change, "ms")
            )
        if target.rss_mb is not None:
            checks.append(_check("RSS per server", rss_mb, "<", target.rss_mb, "MB"))
        return f"{nodes} nodes: " + "; ".join(checks)


def _check(what: str, value: float | None, op: str, limit: float, unit: str) -> str:
    if value is None:
        return f"{what} not measured (target {op} {limit:.0f} {unit})"
    ok = value < limit if op == "<" else value <= limit
    return f"{what} {value:.0f} {unit} (target {op} {limit:.0f}: {'ok' if ok else 'MISSED'})"


class FailedPoint(Frozen):
    """A node count that could not be measured, and why."""

    nodes: int
    error: str
    store: str = "sqlite"


class ScaleResult(Frozen):
    """Every node count in the order run, and the notes that qualify the figures."""

    points: tuple[ScalePoint | FailedPoint, ...]
    notes: tuple[str, ...]

    @property
    def measured(self) -> tuple[ScalePoint, ...]:
        return tuple(p for p in self.points if isinstance(p, ScalePoint))
