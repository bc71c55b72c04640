"""Access control's cost on the data plane: container → container across two shoal hosts with a
1,000-rule policy vs no policy, in one lab and one run, interleaved.

The policy is the destination's worst case: 999 rules that never match the measured flow
(compose services with no container, so every rule stays in h2's table with its two address
sets, as a container starting would need), then the one rule allowing the iperf3 flow, last,
so each new flow's first packet walks every rule. Established flows skip the policy (accepted
at the top of `forward`), which is why the ratio is expected near 1.

Per round: `shoal policy clear`, then iperf3 (no policy), then `shoal policy set` of the
1,000 rules, then iperf3 again; h2's live nft table is checked before each measurement (no
policy chain; 1,000 accept rules). Figures: TCP 1 stream Gbit/s and machine-wide CPU seconds
per Gbit (/proc/stat), medians of the rounds, and the ratios policy ÷ none (target ≥ 0.95
for throughput). The time h2 takes to load the 1,000-rule table (`policy set` returned →
table live) is reported as well.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from pathlib import Path

from benchmarks.dataplane.probes import Endpoint, iperf
from benchmarks.dataplane.results import FULL, QUICK, IperfRun, median
from benchmarks.dataplane.systems import setup_shoal, wait_for
from benchmarks.log import progress
from benchmarks.textfmt import num, table
from benchmarks.typed import Frozen
from shoal.lab import Lab, LabError, LabHost, procs
from shoal.lab.lab import run, shoal_argv

RULES = 1000
IPERF_PORT = 5201  # benchmarks.dataplane.probes.PORT
TARGET = 0.95  # policy ÷ none, TCP 1 stream


class Figures(Frozen):
    """Medians over the rounds of one configuration."""

    runs: int
    tcp1_gbps: float | None
    cpu_s_per_gbit: float | None
    gbps_each: tuple[float, ...]


class PolicyResult(Frozen):
    """What the policy section reports (the `policy` key of `benchmarks.json`)."""

    rules: int
    seconds_per_run: int
    no_policy: Figures
    with_policy: Figures
    tcp1_ratio: float | None  # with ÷ without (medians)
    # The median of each round's own ratio: the load of a shared machine drifts between
    # rounds far more than within one (pairs measured a minute apart).
    tcp1_paired_ratio: float | None = None
    cpu_per_gbit_ratio: float | None  # with ÷ without (above 1: the policy costs CPU)
    table_load_ms: tuple[float, ...]  # `policy set` returned → h2's table holds every rule
    target: float = TARGET
    notes: tuple[str, ...] = ()


def policy_text(client: Endpoint, server: Endpoint, rules: int = RULES) -> str:
    """`rules` rules, the last one allowing client → server on the iperf3 port."""
    lines = ["# benchmarks.policy: rules that never match the measured flow, then its own"]
    lines.append("rules:")
    lines += [
        f"  - {{from: 'service:bench{i}', to: 'service:bench{i}-db', ports: {10000 + i}}}"
        for i in range(rules - 1)
    ]
    lines.append(
        f"  - {{from: 'cidr:{client.ip}/32', to: 'cidr:{server.ip}/32', ports: {IPERF_PORT}}}"
    )
    return "\n".join(lines) + "\n"


def _admin(lab: Lab, *args: str) -> str:
    """An admin command on the lab server's host (credentials from its data dir)."""
    argv = [*shoal_argv(), *args, "--data-dir", str(lab.server_data_dir)]
    netns = f"--net={procs.NETNS_DIR / lab.server_netns}"
    return run(["nsenter", netns, *argv], shown=["shoal", *args], timeout=120).stdout


def _accept_rules(host: LabHost) -> int | None:
    """The accept rules of the host's policy chain; None: no policy chain."""
    out = host.exec(["nft", "list", "chain", "inet", "shoal", "mesh_policy"], check=False)
    if out.returncode != 0:
        return None
    return sum(" accept comment " in line for line in out.stdout.splitlines())


def _figures(runs: list[IperfRun]) -> Figures:
    per_gbit = [r.cpu_seconds / r.gbit for r in runs if r.gbit > 0]
    return Figures(
        runs=len(runs),
        tcp1_gbps=median([r.gbps for r in runs]),
        cpu_s_per_gbit=median(per_gbit),
        gbps_each=tuple(round(r.gbps, 3) for r in runs),
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def run_policy(quick: bool = False, rules: int = RULES) -> PolicyResult:
    """The section: a fresh 2-host shoal lab, rounds of (no policy, `rules`-rule policy)."""
    settings = QUICK if quick else FULL
    lab = Lab.create(f"bench-pol-{secrets.token_hex(2)}", hosts=2)
    try:
        setup = setup_shoal(lab)
        h2 = lab.host("h2")
        text = policy_text(setup.client, setup.server, rules)
        with tempfile.TemporaryDirectory(prefix="shoal-bench-policy-") as tmp:
            path = Path(tmp) / "bench-policy.yaml"
            path.write_text(text)
            none: list[IperfRun] = []
            with_policy: list[IperfRun] = []
            loads: list[float] = []
            for i in range(settings.runs):
                _admin(lab, "policy", "clear")
                wait_for("h2 to drop its policy chain", lambda: _accept_rules(h2) is None)
                none.append(iperf(setup.client, setup.server, settings.seconds))
                progress(f"  policy round {i + 1}: none {none[-1].gbps:.3f} Gbit/s")
                _admin(lab, "policy", "set", str(path))
                set_at = time.monotonic()
                wait_for(
                    f"h2 to load {rules} rules",
                    lambda: _accept_rules(h2) == rules,
                    timeout=120,
                )
                loads.append(round((time.monotonic() - set_at) * 1000, 1))
                with_policy.append(iperf(setup.client, setup.server, settings.seconds))
                progress(
                    f"  policy round {i + 1}: {rules} rules {with_policy[-1].gbps:.3f} Gbit/s "
                    f"(table live {loads[-1]:.0f} ms after set)"
                )
    finally:
        try:
            lab.destroy()
        except LabError as exc:
            progress(f"policy: teardown: {exc}")
    a, b = _figures(none), _figures(with_policy)
    return PolicyResult(
        rules=rules,
        seconds_per_run=settings.seconds,
        no_policy=a,
        with_policy=b,
        tcp1_ratio=_ratio(b.tcp1_gbps, a.tcp1_gbps),
        tcp1_paired_ratio=_ratio(
            median([w.gbps / n.gbps for n, w in zip(none, with_policy, strict=True) if n.gbps]),
            1.0,  # already a ratio: rounded like the others
        ),
        cpu_per_gbit_ratio=_ratio(b.cpu_s_per_gbit, a.cpu_s_per_gbit),
        table_load_ms=tuple(loads),
        notes=(
            "Rounds alternate no policy / policy in one lab: the shared machine's background "
            "load hits both alike. CPU is machine-wide (both hosts, wireguard-go, iperf3).",
            "Table load: from `shoal policy set` returning to h2's live table holding every "
            "rule (the agent's long-poll, compile, `nft -f`, as polled every 50 ms).",
        ),
    )


def render_markdown(result: PolicyResult) -> list[str]:
    """The section's part of benchmarks.md."""
    a, b = result.no_policy, result.with_policy
    judged = result.tcp1_paired_ratio or result.tcp1_ratio
    ok = judged is not None and judged >= result.target
    return [
        "Container → container across two shoal hosts (iperf3 TCP 1 stream, "
        f"{result.seconds_per_run} s, median of {a.runs}), with no policy and with a "
        f"{result.rules}-rule policy whose matching rule is last, rounds interleaved.",
        "",
        *table(
            ["", "TCP 1 stream Gbit/s", "CPU s per Gbit"],
            [
                ["no policy", num(a.tcp1_gbps, 3), num(a.cpu_s_per_gbit, 2)],
                [f"{result.rules} rules", num(b.tcp1_gbps, 3), num(b.cpu_s_per_gbit, 2)],
                ["ratio", num(result.tcp1_ratio, 3), num(result.cpu_per_gbit_ratio, 3)],
            ],
            "lrr",
        ),
        "",
        f"Throughput ratio {num(result.tcp1_ratio, 3)}, median of the rounds' own ratios "
        f"{num(result.tcp1_paired_ratio, 3)} (target ≥ {result.target}: "
        f"{'met' if ok else 'not met'}). h2's {result.rules}-rule table was live "
        + ", ".join(f"{ms:.0f}" for ms in result.table_load_ms)
        + " ms after `shoal policy set` returned.",
        "",
        *(f"- {note}" for note in result.notes),
    ]
