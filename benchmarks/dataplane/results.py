"""What the data-plane section reports: per system, throughput, latency, first packet and CPU,
their ratios to the no-overlay baseline, shoal ÷ hand-written WireGuard, and shoal's tuning
variants. Units: Gbit/s, milliseconds, CPU seconds per Gbit. The field names are the keys of
`benchmarks.json` (section "dataplane")."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from benchmarks.typed import Frozen

TARGET_TCP = 0.97  # shoal ÷ hand-written WireGuard, TCP 1 stream: at least
TARGET_CPU = 1.03  # shoal ÷ hand-written WireGuard, CPU seconds per Gbit: at most


class Settings(Frozen):
    """How long to measure: iperf3 runs x seconds (median kept), pings, tuning runs x seconds."""

    runs: int
    seconds: int
    ping_count: int
    tuning_runs: int
    tuning_seconds: int


# Six runs: hand-written WireGuard and shoal run back to back in each, in the reverse order in
# every other one, and shoal ÷ hand-written is the median of the three pairs of rounds
# (`crossover`). One round can be off by 10 % on this shared machine; the median keeps a round
# hit by load from counting against both systems at once.
FULL = Settings(runs=6, seconds=10, ping_count=200, tuning_runs=2, tuning_seconds=5)
QUICK = Settings(runs=1, seconds=2, ping_count=200, tuning_runs=1, tuning_seconds=2)


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass(frozen=True)
class IperfRun:
    gbps: float  # received by the server, Gbit/s
    gbit: float  # moved in total
    cpu_seconds: float  # machine-wide busy CPU seconds during the run
    retransmits: int | None


@dataclass
class Measured:
    """A system's figures as the interleaved runs fill them in."""

    handshake_before_probe: bool | None = None
    first_packet_ms: float | None = None
    rtts_ms: list[float] = field(default_factory=list)
    pings_sent: int = 0
    tcp1: list[IperfRun] = field(default_factory=list)
    tcp4: list[IperfRun] = field(default_factory=list)


class Ratios(Frozen):
    """One system's figures ÷ another's (None where either lacks the figure)."""

    tcp1_gbps: float | None = None
    tcp4_gbps: float | None = None
    rtt_avg_ms: float | None = None
    rtt_p99_ms: float | None = None
    first_packet_ms: float | None = None
    cpu_s_per_gbit: float | None = None


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _cpu_runs(runs: Sequence[IperfRun]) -> tuple[float | None, ...]:
    """CPU seconds per Gbit of each run, None for a run that moved nothing."""
    return tuple(r.cpu_seconds / r.gbit if r.gbit else None for r in runs)


def _cpu_per_gbit(runs: Sequence[IperfRun]) -> float | None:
    return median([c for c in _cpu_runs(runs) if c is not None])


class SystemResult(Frozen):
    """One system: its figures when it ran ("ok"), else why not."""

    status: Literal["ok", "failed", "not run"]
    label: str
    reason: str | None = None
    setup_seconds: float | None = None
    handshake_before_probe: bool | None = None  # a WireGuard handshake before the probe
    first_packet_ms: float | None = None
    rtt_avg_ms: float | None = None
    rtt_p99_ms: float | None = None
    ping_loss: float | None = None
    tcp1_runs_gbps: tuple[float, ...] = ()
    tcp1_gbps: float | None = None
    tcp1_retransmits: tuple[int | None, ...] = ()
    tcp1_cpu_s_per_gbit: float | None = None
    tcp1_cpu_runs: tuple[float | None, ...] = ()  # CPU s per Gbit of each run, in run order
    tcp4_runs_gbps: tuple[float, ...] = ()
    tcp4_gbps: float | None = None
    tcp4_retransmits: tuple[int | None, ...] = ()
    tcp4_cpu_s_per_gbit: float | None = None
    cpu_s_per_gbit: float | None = None  # TCP 1 stream's
    notes: tuple[str, ...] = ()
    vs_baseline: Ratios | None = None
    kernel: dict[str, bool] | None = None  # what the encrypted overlay needs (Swarm IPsec)

    @classmethod
    def measured(
        cls, label: str, m: Measured, setup_seconds: float | None, notes: Sequence[str] = ()
    ) -> SystemResult:
        rtts = m.rtts_ms
        return cls(
            status="ok",
            label=label,
            setup_seconds=setup_seconds,
            handshake_before_probe=m.handshake_before_probe,
            first_packet_ms=m.first_packet_ms,
            rtt_avg_ms=statistics.fmean(rtts) if rtts else None,
            rtt_p99_ms=percentile(rtts, 0.99) if rtts else None,
            ping_loss=1 - len(rtts) / m.pings_sent if m.pings_sent else None,
            tcp1_runs_gbps=tuple(r.gbps for r in m.tcp1),
            tcp1_gbps=median([r.gbps for r in m.tcp1]),
            tcp1_retransmits=tuple(r.retransmits for r in m.tcp1),
            tcp1_cpu_s_per_gbit=_cpu_per_gbit(m.tcp1),
            tcp1_cpu_runs=_cpu_runs(m.tcp1),
            tcp4_runs_gbps=tuple(r.gbps for r in m.tcp4),
            tcp4_gbps=median([r.gbps for r in m.tcp4]),
            tcp4_retransmits=tuple(r.retransmits for r in m.tcp4),
            tcp4_cpu_s_per_gbit=_cpu_per_gbit(m.tcp4),
            cpu_s_per_gbit=_cpu_per_gbit(m.tcp1),
            notes=tuple(notes),
        )

    def ratios_to(self, other: SystemResult) -> Ratios:
        def ratio(mine: float | None, theirs: float | None) -> float | None:
            return mine / theirs if mine is not None and theirs else None

        return Ratios(
            tcp1_gbps=ratio(self.tcp1_gbps, other.tcp1_gbps),
            tcp4_gbps=ratio(self.tcp4_gbps, other.tcp4_gbps),
            rtt_avg_ms=ratio(self.rtt_avg_ms, other.rtt_avg_ms),
            rtt_p99_ms=ratio(self.rtt_p99_ms, other.rtt_p99_ms),
            first_packet_ms=ratio(self.first_packet_ms, other.first_packet_ms),
            cpu_s_per_gbit=ratio(self.cpu_s_per_gbit, other.cpu_s_per_gbit),
        )


class Comparison(Frozen):
    """shoal ÷ hand-written WireGuard (the same wireguard-go binary). `ratios` divides the two
    systems' medians; the targets are judged on the paired figures: the two run back to back in
    every round (A B, then B A), each round gives its own ratio (`tcp1_rounds`, `cpu_rounds`),
    and `tcp1_paired`/`cpu_paired` are the medians of `crossover` of those: a round hit by load
    counts once, against the pair it hit, and whatever running second costs cancels out.
    `meets_target` (both targets) is None when one of the two did not run."""

    ratios: Ratios
    tcp1_rounds: tuple[float, ...] = ()
    cpu_rounds: tuple[float, ...] = ()
    tcp1_paired: float | None = None
    cpu_paired: float | None = None
    target_tcp: float = TARGET_TCP
    target_cpu: float = TARGET_CPU
    meets_target: bool | None

    @property
    def tcp1(self) -> float | None:
        """TCP 1 stream as judged: paired where the rounds pair, else the medians' ratio."""
        return self.tcp1_paired if self.tcp1_paired is not None else self.ratios.tcp1_gbps

    @property
    def cpu(self) -> float | None:
        """CPU per Gbit as judged: paired where the rounds pair, else the medians' ratio."""
        return self.cpu_paired if self.cpu_paired is not None else self.ratios.cpu_s_per_gbit


class TuningVariant(Frozen):
    """One hand-applied setting: TCP 1 stream with it, against shoal's default in pairs."""

    variant: str
    description: str
    error: str | None = None
    tcp1_gbps: float | None = None
    default_tcp1_gbps: float | None = None
    tcp1_runs_gbps: tuple[float, ...] = ()
    default_runs_gbps: tuple[float, ...] = ()
    ratio_to_default: float | None = None  # median of the per-pair ratios
    cpu_s_per_gbit: float | None = None


class Tuning(Frozen):
    variants: tuple[TuningVariant, ...] = ()
    settings: Settings | None = None
    not_run: tuple[str, ...] = ()
    offloads_default: dict[str, str] | None = None  # the containers' eth0 offload flags


class ParityVariant(Frozen):
    """shoal with one per-packet difference taken away, against the minimal hand-written
    recipe in A B B A rounds: per round, the variant's runs ÷ the hand-written runs."""

    variant: str
    description: str
    hand_mbps: tuple[float, ...]
    variant_mbps: tuple[float, ...]
    throughput_ratios: tuple[float, ...]
    machine_cpu_ratios: tuple[float, ...]  # busy CPU s per Gbit of the whole machine
    path_cpu_ratios: tuple[float, ...]  # CPU s per Gbit of iperf3, wireguard-go, ksoftirqd


class Parity(Frozen):
    """One run of `python -m benchmarks.dataplane.parity` (issue 14's decomposition)."""

    label: str  # what shoal's code was at ("before", "after: ...")
    command: str
    generated: str
    rounds: int
    seconds: int
    rate: str | None = None  # iperf3 -b; None: unlimited
    variants: tuple[ParityVariant, ...] = ()
    notes: tuple[str, ...] = ()  # what the run showed, in the words of whoever ran it


class NfCostPart(Frozen):
    """One part of shoal's firewall, loaded `copies` times: per round, the time per packet
    without any of shoal's tables and what one copy adds to it."""

    part: str
    description: str
    packets: str  # which packets meet it
    baseline_ns: tuple[float, ...]
    added_ns: tuple[float, ...]


class NfCost(Frozen):
    """One run of `python -m benchmarks.dataplane.nfcost` (issue 14: each part apart)."""

    command: str
    generated: str
    rounds: int
    copies: int
    seconds: int
    parts: tuple[NfCostPart, ...] = ()
    notes: tuple[str, ...] = ()  # what the run showed, in the words of whoever ran it


class DataplaneResult(Frozen):
    status: Literal["ok"] = "ok"
    settings: Settings
    systems: dict[str, SystemResult]  # by system name, in the order run
    shoal_vs_handwg: Comparison
    tuning: Tuning
    parity: tuple[Parity, ...] = ()  # decomposition runs, added by their own command
    nfcost: tuple[NfCost, ...] = ()  # per-part costs, added by their own command too


def with_ratios(systems: dict[str, SystemResult]) -> tuple[dict[str, SystemResult], Comparison]:
    """Each ok system with its figures ÷ the baseline's, and shoal ÷ hand-written WireGuard."""
    base = systems.get("baseline")
    if base is not None and base.status == "ok":
        systems = {
            name: r.model_copy(update={"vs_baseline": r.ratios_to(base)}) if r.status == "ok" else r
            for name, r in systems.items()
        }
    shoal, handwg = systems.get("shoal"), systems.get("handwg")
    if shoal is not None and handwg is not None and shoal.status == handwg.status == "ok":
        return systems, compare(shoal, handwg)
    return systems, Comparison(ratios=Ratios(), meets_target=None)


def compare(shoal: SystemResult, handwg: SystemResult) -> Comparison:
    """shoal ÷ hand-written WireGuard, per round where both ran every round (else from the
    medians alone), and whether both targets hold."""
    tcp1 = _per_round(shoal.tcp1_runs_gbps, handwg.tcp1_runs_gbps)
    cpu = _per_round(shoal.tcp1_cpu_runs, handwg.tcp1_cpu_runs)
    cmp = Comparison(
        ratios=shoal.ratios_to(handwg),
        tcp1_rounds=tcp1,
        cpu_rounds=cpu,
        tcp1_paired=median(crossover(tcp1)),
        cpu_paired=median(crossover(cpu)),
        meets_target=None,
    )
    met = (
        cmp.tcp1 is not None
        and cmp.cpu is not None
        and cmp.tcp1 >= TARGET_TCP
        and cmp.cpu <= TARGET_CPU
    )
    return cmp.model_copy(update={"meets_target": met})


def crossover(rounds: Sequence[float]) -> tuple[float, ...]:
    """Each A B round's ratio with the next (B A) round's, as one figure: their geometric mean.
    Running second can cost a system a tenth of its throughput on this machine (the 15:47 UTC
    run of 2026-12-01: rounds 0.89, 1.04, 0.90, 1.11, 0.91, 1.14), and a median of single
    rounds then lands between the two orders; paired with its reverse, the order cancels. An
    odd last round has no reverse and would bring the order back: it is left out, unless it
    is the only round."""
    if len(rounds) < 2:
        return tuple(rounds)
    return tuple(math.sqrt(rounds[i] * rounds[i + 1]) for i in range(0, len(rounds) - 1, 2))


def _per_round(mine: Sequence[float | None], theirs: Sequence[float | None]) -> tuple[float, ...]:
    """Each round's ratio, or none at all when a round lacks either figure (a run that moved
    nothing has no CPU per Gbit). A system that fails mid-section is reported failed and never
    compared; the length check only keeps a mismatch from pairing the wrong rounds."""
    if len(mine) != len(theirs) or not mine:
        return ()
    pairs = [(a, b) for a, b in zip(mine, theirs, strict=True) if a is not None and b]
    return tuple(a / b for a, b in pairs) if len(pairs) == len(mine) else ()
