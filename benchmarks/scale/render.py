"""The scale section of the report: a markdown table per node count and a fan-out chart."""

from __future__ import annotations

from pathlib import Path

from benchmarks.scale.results import TARGETS, ScalePoint, ScaleResult, Summary


def _ms(summary: Summary | None, key: str) -> str:
    if summary is None:
        return "n/a"
    return f"{getattr(summary, key):.0f}"


def _store(p: ScalePoint) -> str:
    return p.store if p.replicas == 1 else f"{p.store}, {p.replicas} replicas"


def render_markdown(result: ScaleResult) -> str:
    with_policy = [p for p in result.measured if p.policy_fanout_ms is not None]
    measured = result.measured
    # The store and database columns only when a point ran on PostgreSQL: a SQLite-only run
    # renders as runs did before there was a choice.
    stores = any(p.store != "sqlite" for p in measured)
    lines = [
        ("| store " if stores else "")
        + "| nodes | join p50 ms | join p99 ms | join max ms | container p50/p99 ms "
        "| bytes/change/agent | server CPU ms/change | server RSS MB (reg/end) "
        + ("| db CPU ms/change " if stores else "")
        + "| server CPU s (reg/sync/end) | registrations/s |",
        ("|---" if stores else "")
        + "|---:|---:|---:|---:|---:|---:|---:|---:|"
        + ("---:|" if stores else "")
        + "---:|---:|",
    ]
    for p in measured:
        cont = p.container_fanout_ms
        rss, cpu = p.server_rss_mb, p.server_cpu_s
        db = p.database_cpu_ms_per_change
        lines.append(
            (f"| {_store(p)} " if stores else "") + f"| {p.nodes} | {_ms(p.join_fanout_ms, 'p50')} "
            f"| {_ms(p.join_fanout_ms, 'p99')} | {_ms(p.join_fanout_ms, 'max')} "
            f"| {_ms(cont, 'p50')}/{_ms(cont, 'p99')} | {p.bytes_per_change_per_agent:.0f} "
            f"| {p.server_cpu_ms_per_change} | {rss.after_register:.0f}/{rss.end:.0f} "
            + (f"| {db if db is not None else '-'} " if stores else "")
            + f"| {cpu.after_register:.1f}/{cpu.after_sync:.1f}/{cpu.end:.1f} "
            f"| {p.register_per_s:.0f} |"
        )
    lines.append("")
    per_agent = [p.bytes_per_change_per_agent for p in measured]
    if len(per_agent) > 1:
        lines.append(
            "Bytes per change per agent across node counts: "
            + ", ".join(f"{b:.0f}" for b in per_agent)
            + " (deltas: constant as N grows means total cost grows with N, not N²)."
        )
    if with_policy:
        lines += [
            "",
            "Policy changes (`shoal policy set` → every agent's map holds it, compiled for its "
            "host):",
            "",
            ("| store " if stores else "")
            + "| nodes | rules | policy p50 ms | policy p99 ms | policy max ms |",
            ("|---" if stores else "") + "|---:|---:|---:|---:|---:|",
            *(
                (f"| {_store(p)} " if stores else "")
                + f"| {p.nodes} | {p.policy_rules} | {_ms(p.policy_fanout_ms, 'p50')} "
                f"| {_ms(p.policy_fanout_ms, 'p99')} | {_ms(p.policy_fanout_ms, 'max')} |"
                for p in with_policy
            ),
            "",
        ]
    lines += [f"- {_store(p)}: {p.verdict}" if stores else f"- {p.verdict}" for p in measured]
    lines += [
        f"- {_store(p)}, {p.nodes} nodes: server CPU ms per change by kind: "
        + ", ".join(f"{kind} {ms:.0f}" for kind, ms in p.server_cpu_ms_by_kind.items())
        + (
            f"; the servers' own fan-out (their metric: a change to its frame on every "
            f"stream) {p.server_fanout_ms.mean:.0f} ms mean, p99 at most "
            f"{p.server_fanout_ms.p99_at_most:.0f} ms over {p.server_fanout_ms.changes} changes"
            if p.server_fanout_ms is not None
            else ""
        )
        + (
            f"; with nothing changing the servers spend {p.server_idle_cpu_ms_per_s:.0f} ms "
            f"per s, {p.server_cpu_ms_per_change_net:.0f} ms per change net of that"
            if p.server_idle_cpu_ms_per_s is not None and p.server_cpu_ms_per_change_net is not None
            else ""
        )
        for p in measured
        if p.server_cpu_ms_by_kind
    ]
    lines += [f"- note: {n}" for n in result.notes]
    return "\n".join(lines) + "\n"


def chart(result: ScaleResult, path: Path) -> Path | None:
    """PNG of join (and container) fan-out p50/p99 against node count, log x; None when no
    node count was measured."""
    points = result.measured
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p.nodes for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(xs, [p.join_fanout_ms.p50 for p in points], "o-", label="node join p50")
    ax.plot(xs, [p.join_fanout_ms.p99 for p in points], "o--", label="node join p99")
    cont = [(p.nodes, p.container_fanout_ms) for p in points if p.container_fanout_ms]
    if cont:
        ax.plot([n for n, _ in cont], [s.p50 for _, s in cont], "s-", label="container p50")
        ax.plot([n for n, _ in cont], [s.p99 for _, s in cont], "s--", label="container p99")
    for target, style in zip(TARGETS, (":", "-."), strict=True):
        ax.axhline(
            target.p99_ms,
            color="grey",
            linestyle=style,
            label=f"p99 target ({target.nodes:,} nodes)",
        )
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
