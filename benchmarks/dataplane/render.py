"""The data-plane section of the report: the systems table, shoal ÷ hand-written WireGuard,
where shoal is behind and why (from this run's figures), the tuning table and a chart."""

from __future__ import annotations

import statistics
from pathlib import Path

from benchmarks.dataplane.results import (
    Comparison,
    DataplaneResult,
    NfCost,
    Parity,
    SystemResult,
    Tuning,
    TuningVariant,
    crossover,
    median,
)
from benchmarks.textfmt import figures, num, ratio, table

SYSTEM_ORDER = ("baseline", "swarm", "swarm-encrypted", "handwg", "nebula", "shoal")


def ordered(systems: dict[str, SystemResult]) -> list[tuple[str, SystemResult]]:
    known = [(n, systems[n]) for n in SYSTEM_ORDER if n in systems]
    return known + [(n, r) for n, r in systems.items() if n not in SYSTEM_ORDER]


def render_markdown(dp: DataplaneResult, image: str | None = None) -> list[str]:
    """The section's lines; `image` is the chart's path relative to the report, if drawn."""
    settings = dp.settings
    out = [
        "Container → container across 2 lab hosts (each host a network namespace with its own "
        "dockerd, joined by a veth underlay); every system in a fresh lab, set up and torn down "
        "by script; all labs up together and the ping and iperf3 runs interleaved across "
        "systems, so the shared machine's background load hits every system alike. iperf3 TCP, "
        f"median of {settings.runs} run(s) of {settings.seconds} s; busybox ping every 10 ms x "
        f"{settings.ping_count}; first packet = time until the first reply from a "
        "never-contacted container (WireGuard handshake included unless one already happened); "
        "CPU = busy CPU-seconds of the whole machine (/proc/stat) per Gbit moved, 1 stream. "
        "\u00d7 = ratio to the no-overlay baseline of this run.",
        "",
    ]
    rows: list[list[str]] = []
    for _, r in ordered(dp.systems):
        if r.status != "ok":
            rows.append([r.label, f"{r.status}: {r.reason or 'no reason recorded'}", *[""] * 9])
            continue
        vs = r.vs_baseline
        first = num(r.first_packet_ms)
        if r.handshake_before_probe is not None:
            first += " (tunnel up before)" if r.handshake_before_probe else " (incl. handshake)"
        rows.append(
            [
                r.label,
                num(r.tcp1_gbps, 3),
                ratio(vs.tcp1_gbps if vs else None),
                num(r.tcp4_gbps, 3),
                ratio(vs.tcp4_gbps if vs else None),
                num(r.rtt_avg_ms, 3),
                num(r.rtt_p99_ms, 3),
                ratio(vs.rtt_avg_ms if vs else None),
                first,
                num(r.cpu_s_per_gbit, 2),
                ratio(vs.cpu_s_per_gbit if vs else None),
            ]
        )
    out += table(
        [
            "system",
            "TCP 1 stream Gbit/s",
            "\u00d7",
            "TCP 4 streams Gbit/s",
            "\u00d7",
            "RTT avg ms",
            "RTT p99 ms",
            "RTT \u00d7",
            "first packet ms",
            "CPU s/Gbit",
            "CPU \u00d7",
        ],
        rows,
    )
    out.append("")
    cmp = dp.shoal_vs_handwg
    if cmp.meets_target is not None:
        out += comparison_md(cmp)
    else:
        out.append("shoal ÷ hand-written WireGuard: not available (one of the two did not run).")
    out.append("")
    if image is not None:
        out += [f"![throughput ratios]({image})", ""]
    out += _explanations(dp.systems, cmp)
    notes = [f"- {r.label}: {note}" for r in dp.systems.values() for note in r.notes]
    if notes:
        out += ["", "Notes from the run:", *notes]
    out += ["", "### Tuning shoal by hand", ""]
    out += _tuning_md(dp.tuning)
    if dp.parity:
        out += ["", "### Where the difference went", "", *_parity_intro()]
        for run in dp.parity:
            out += ["", *parity_md(run)]
    if dp.nfcost:
        out += ["", "### Each part of shoal's firewall per packet, apart", "", *_nfcost_intro()]
        for cost in dp.nfcost:
            out += ["", *nfcost_md(cost)]
    return out


def comparison_md(cmp: Comparison) -> list[str]:
    """shoal ÷ hand-written WireGuard: the paired figures the targets are judged on, each
    round's own, and the ratio of the two systems' medians."""
    r1 = cmp.ratios
    met = "met" if cmp.meets_target else "NOT met"
    lines = [
        f"**shoal ÷ hand-written WireGuard** (same wireguard-go binary): TCP 1 stream "
        f"**{ratio(cmp.tcp1)}**, CPU per Gbit **{ratio(cmp.cpu)}** (below 1 = shoal lower; "
        f"targets ≥ {cmp.target_tcp:.2f}\u00d7 throughput and ≤ {cmp.target_cpu:.2f}\u00d7 "
        f"CPU per Gbit: {met}); 4 streams {ratio(r1.tcp4_gbps)}, RTT avg {ratio(r1.rtt_avg_ms)}."
    ]
    paired = [
        (what, rounds)
        for what, rounds in (("TCP 1 stream", cmp.tcp1_rounds), ("CPU per Gbit", cmp.cpu_rounds))
        if rounds
    ]
    if paired:
        names = " and ".join(what for what, _rounds in paired)
        shown = "; ".join(f"{what} {figures(rs)}" for what, rs in paired)
        crossed = "; ".join(f"{what} {figures(crossover(rs))}" for what, rs in paired)
        singles = "; ".join(f"{what} {ratio(median(rs))}" for what, rs in paired)
        unpaired = "" if len(paired) == 2 else "; the other figure is the ratio of the medians"
        lines += [
            "",
            f"The two run back to back in every round (A B, then B A), and each A B round is "
            f"taken with the B A round after it (the geometric mean of their ratios), so "
            f"whatever running second costs cancels out. {names} above: the median of those "
            f"pairs, so a round hit by load counts once, against the pair it hit{unpaired}. "
            f"Rounds: {shown}. Pairs of rounds: {crossed}. The median of single rounds: "
            f"{singles}. The ratio of the two systems' medians in the table: TCP 1 stream "
            f"{ratio(r1.tcp1_gbps)}, CPU per Gbit {ratio(r1.cpu_s_per_gbit)}.",
        ]
    return lines


def _parity_intro() -> list[str]:
    return [
        "shoal against the minimal hand-written recipe (containers on docker0, AllowedIPs = "
        "peer IP + its Docker subnet, a route per subnet, one ACCEPT in DOCKER-USER and a NAT "
        "exemption), each in a fresh 2-host lab. Each variant takes one of shoal's per-packet "
        "differences away on the running shoal lab (agents paused, reverted after each run) and "
        "is measured against the hand-written lab in A B B A rounds (B A A B every other "
        "round), iperf3 TCP 1 stream. \u00d7 = median over rounds of the variant's runs "
        "\u00f7 the hand-written runs (range in brackets). Machine CPU = busy CPU seconds of "
        "the whole machine (/proc/stat) per Gbit: on this shared machine it carries everyone "
        "else's load. Path CPU = CPU seconds per Gbit of the processes that do the per-packet "
        "work (both iperf3, both wireguard-go, ksoftirqd: softirq runs in their context), the "
        "quieter figure; a difference is real when its range stays off 1.00."
    ]


def _span(values: tuple[float, ...]) -> str:
    if not values:
        return "—"
    return f"{ratio(statistics.median(values))} ({min(values):.2f}-{max(values):.2f})"


def parity_md(run: Parity) -> list[str]:
    how = f"iperf3 -b {run.rate}" if run.rate else "unlimited rate"
    out = [
        f"**{run.label}** ({run.generated}; `{run.command}`: {run.rounds} rounds x "
        f"{run.seconds} s, {how}):",
        "",
    ]
    rows = [
        [
            v.variant,
            v.description,
            num(statistics.median(v.hand_mbps), 0),
            num(statistics.median(v.variant_mbps), 0),
            _span(v.throughput_ratios),
            _span(v.machine_cpu_ratios),
            _span(v.path_cpu_ratios),
        ]
        for v in run.variants
    ]
    out += table(
        [
            "variant",
            "what",
            "hand Mbit/s",
            "variant Mbit/s",
            "\u00d7 throughput",
            "\u00d7 machine CPU/Gbit",
            "\u00d7 path CPU/Gbit",
        ],
        rows,
        "llrrrrr",
    )
    if run.notes:
        out += ["", *(f"- {note}" for note in run.notes)]
    return out


def _nfcost_intro() -> list[str]:
    return [
        "The runs above see shoal's firewall as a whole; each of its parts moves a run by less "
        "than runs vary. This measures the parts apart, without Docker or WireGuard: three "
        "network namespaces (a container on a bridge named `shoal-br0`, a host, a peer behind "
        "a veth named `shoal0` and an underlay veth), the host loaded with shoal's own tables "
        "rendered for that topology, iperf3 UDP with 64-byte datagrams at full rate (the "
        "sender's core is busy, and a veth forwards in the sender's softirq, so the time per "
        "packet sent is the path's cost per packet). Each part is loaded K times under "
        "distinct names, each copy its own base chains at the same hooks: (time per packet "
        "with K copies \u2212 without) \u00f7 K is what one copy costs a packet, its hook call "
        "included. Caches are hot here; on a path that also runs wireguard-go a part costs "
        "more."
    ]


def nfcost_md(run: NfCost) -> list[str]:
    out = [
        f"**{run.generated}** (`{run.command}`: {run.rounds} rounds, {run.copies} copies, "
        f"{run.seconds} s a run):",
        "",
    ]
    rows = [
        [
            p.description,
            p.packets,
            num(statistics.median(p.baseline_ns), 0),
            num(statistics.median(p.added_ns), 0),
            ", ".join(num(x, 0) for x in p.added_ns),
        ]
        for p in run.parts
    ]
    out += table(
        ["part", "packets", "ns per packet without", "ns one copy adds", "rounds"], rows, "llrrl"
    )
    if run.notes:
        out += ["", *(f"- {note}" for note in run.notes)]
    return out


def _explanations(systems: dict[str, SystemResult], cmp: Comparison) -> list[str]:
    """Where shoal is behind, and why, from the figures of this run."""
    out = ["Where shoal is behind, and why:", ""]
    shoal, base = systems.get("shoal"), systems.get("baseline")
    swarm = systems.get("swarm")
    if shoal is not None and shoal.status == "ok":
        vs = shoal.vs_baseline
        if vs is not None:
            swarm_vs = swarm.vs_baseline if swarm is not None and swarm.status == "ok" else None
            out.append(
                f"- **vs no overlay ({ratio(vs.tcp1_gbps)}) and Swarm's VXLAN"
                + (f" ({ratio(swarm_vs.tcp1_gbps)})" if swarm_vs is not None else "")
                + "**: this kernel has no WireGuard module, so every packet goes through "
                "wireguard-go in user space (two copies and a syscall per packet each way, "
                "ChaCha20-Poly1305 on a CPU shared by sender and receiver). The Debian build "
                "(0.0.20220316) predates wireguard-go's TUN GSO/GRO support, so it handles "
                "MTU-sized packets one by one: it is CPU-bound. Swarm's VXLAN and the baseline "
                "stay in the kernel and do not encrypt. Hand-written WireGuard and Nebula pay "
                "the same price here; with the kernel module shoal selects kernel WireGuard "
                "automatically."
            )
        if base is not None and base.status == "ok" and shoal.rtt_avg_ms is not None:
            out.append(
                f"- **latency**: RTT {num(shoal.rtt_avg_ms, 3)} ms vs "
                f"{num(base.rtt_avg_ms, 3)} ms without overlay: the user-space hop "
                "(TUN read, encrypt, UDP send, and the reverse) on both hosts."
            )
    r = cmp.tcp1
    if r is not None:
        verdict = (
            f"within the {cmp.target_tcp:.2f}\u00d7 target in this run"
            if r >= cmp.target_tcp
            else f"below the {cmp.target_tcp:.2f}\u00d7 target in this run"
        )
        out.append(
            f"- **vs hand-written WireGuard**: {ratio(r)} on one stream, {verdict}. Both use the "
            "same wireguard-go binary and MTU 1420 on the tunnel. What shoal's path adds per "
            "packet (its `inet shoal` table's input and forward chains, the `bridge shoal` "
            "anti-spoofing table, the jump to SHOAL-FORWARD, and Docker's embedded-DNS NAT "
            "inside containers on a user-defined network) is measured one difference at a "
            "time under 'Where the difference went' (`python -m benchmarks.dataplane.parity`), "
            "and each table's cost per packet apart under 'Each part of shoal's firewall per "
            "packet, apart' (`python -m benchmarks.dataplane.nfcost`): together about 3 % of "
            "a Gbit's CPU (docs/measurements.md); a run further behind than that has a cause "
            "those measurements do not show. On this shared 2-core machine a round varies by "
            "up to 10 %, so a difference of a few per cent counts only where it repeats."
        )
    handwg = systems.get("handwg")
    first_shoal = shoal.first_packet_ms if shoal is not None else None
    first_wg = handwg.first_packet_ms if handwg is not None else None
    if first_shoal is not None and first_wg is not None:
        out.append(
            f"- **first packet**: shoal {num(first_shoal, 2)} ms vs hand-written "
            f"{num(first_wg, 2)} ms: shoal sets a 25 s persistent keepalive, so the handshake "
            "is done when the peer is added, before any container sends; the blog recipe has "
            "no keepalive and its first packet waits for the handshake."
        )
    return out


def _tuning_md(tuning: Tuning) -> list[str]:
    out: list[str] = []
    if tuning.variants:
        s = tuning.settings
        out += [
            "Applied by hand to the running shoal lab (both hosts; the agents paused so their "
            "resync does not undo it), TCP 1 stream, runs of "
            f"{s.tuning_seconds if s else '?'} s in {s.tuning_runs if s else '?'} pair(s) per "
            "variant: shoal's default, then the variant, then reverted. \u00d7 = median of the "
            "per-pair ratios variant \u00f7 default, so drifting background load cancels out.",
            "",
        ]
        rows = []
        for v in tuning.variants:
            if v.error is not None:
                rows.append([v.variant, v.description, f"failed: {v.error}", "", ""])
                continue
            rows.append(
                [
                    v.variant,
                    v.description,
                    num(v.tcp1_gbps, 3),
                    ratio(v.ratio_to_default),
                    num(v.cpu_s_per_gbit, 2),
                ]
            )
        out += table(
            ["variant", "what", "TCP 1 stream Gbit/s", "\u00d7 default", "CPU s/Gbit"],
            rows,
            "llrrr",
        )
        out += ["", *_tuning_findings(tuning.variants)]
    for reason in tuning.not_run:
        out.append(f"- not run: {reason}")
    if tuning.offloads_default:
        out.append(
            "- container eth0 offloads by default: "
            + ", ".join(f"{k} {v}" for k, v in sorted(tuning.offloads_default.items()))
        )
    return out


def _tuning_findings(variants: tuple[TuningVariant, ...]) -> list[str]:
    helps: list[str] = []
    hurts: list[str] = []
    neutral: list[str] = []
    for v in variants:
        r = v.ratio_to_default
        if v.variant == "default" or r is None:
            continue
        item = f"{v.variant} ({ratio(r)})"
        (helps if r >= 1.1 else hurts if r <= 0.9 else neutral).append(item)
    return [
        "Findings (±10 % is noise on this machine):",
        f"- helps: {', '.join(helps) or 'nothing'}",
        f"- hurts: {', '.join(hurts) or 'nothing'}",
        f"- no clear effect: {', '.join(neutral) or 'nothing'}",
        "- reading: wireguard-go 0.0.20220316 handles one MTU-sized packet per TUN read/write "
        "and per UDP send (this build has no TUN GSO/GRO), so its cost is per packet and fewer, "
        "larger packets are the lever: a larger MTU where the underlay carries it. Queue length "
        "and the veth/bridge offloads do not change the per-packet work in user space; a "
        "variant that seems to help or hurt by less than ~20 % needs repeating before acting.",
    ]


def chart(dp: DataplaneResult, path: Path) -> Path | None:
    """Throughput ÷ baseline per system (log scale), and shoal's tuning variants ÷ default;
    None when there is nothing to draw."""
    systems = [
        (r.label, r.vs_baseline)
        for _, r in ordered(dp.systems)
        if r.status == "ok" and r.vs_baseline is not None
    ]
    variants = [
        (v.variant, v.ratio_to_default)
        for v in dp.tuning.variants
        if v.ratio_to_default is not None
    ]
    if not systems and not variants:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    ax = axes[0]
    names = [s[0] for s in systems]
    ys = range(len(systems))
    one = [s[1].tcp1_gbps or 0 for s in systems]
    four = [s[1].tcp4_gbps or 0 for s in systems]
    ax.barh([y + 0.2 for y in ys], one, height=0.4, label="TCP 1 stream", color="#3b75af")
    ax.barh([y - 0.2 for y in ys], four, height=0.4, label="TCP 4 streams", color="#9cc3e5")
    for y, v in zip(ys, one, strict=True):
        ax.text(v, y + 0.2, f" {v:.3f}\u00d7", va="center", fontsize=8)
    ax.set_yticks(list(ys), names)
    ax.set_xscale("log")
    ax.set_xlabel("throughput ÷ no-overlay baseline (log scale)")
    ax.set_title("Container → container across hosts")
    ax.invert_yaxis()
    ax.legend(loc="lower right", fontsize=8)
    ax2 = axes[1]
    if variants:
        vy = range(len(variants))
        colors = [
            "#888" if n == "default" or 0.9 < r < 1.1 else "#4c9a2a" if r >= 1.1 else "#c44"
            for n, r in variants
        ]
        ax2.barh(list(vy), [r for _, r in variants], color=colors)
        ax2.axvline(1.0, color="black", linewidth=0.8)
        ax2.set_yticks(list(vy), [n for n, _ in variants])
        ax2.invert_yaxis()
        for y, (_, r) in zip(vy, variants, strict=True):
            ax2.text(r, y, f" {r:.2f}\u00d7", va="center", fontsize=8)
    ax2.set_xlabel("shoal TCP 1 stream ÷ default (grey: within ±10 %, noise)")
    ax2.set_title("Tuning shoal by hand")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
