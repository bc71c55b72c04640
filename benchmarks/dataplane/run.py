"""Data plane: container → container across two lab hosts, per system, each in a fresh lab.

Per system: iperf3 TCP 1 and 4 streams (median of `runs` runs of `seconds` s), ping RTT avg and
p99 (busybox, 10 ms interval), first-packet time to a never-contacted peer, machine CPU seconds
per Gbit moved (/proc/stat). All labs are up together and every kind of run is interleaved
across systems. Then Swarm's encrypted overlay is probed, and shoal is tuned by hand.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from benchmarks.dataplane.probes import first_packet_ms, iperf, ping_rtts
from benchmarks.dataplane.results import (
    FULL,
    QUICK,
    DataplaneResult,
    Measured,
    SystemResult,
    Tuning,
    with_ratios,
)
from benchmarks.dataplane.systems import LABELS, SETUPS, SYSTEMS, Setup, probe_swarm_encrypted
from benchmarks.dataplane.tuning import tune_shoal
from benchmarks.log import progress
from shoal.lab import Lab, LabError

PING_ROUNDS = 4  # the pings of each system are split into this many rounds, interleaved
_SHORT = {"baseline": "base", "handwg": "wg", "swarm": "swarm", "nebula": "neb", "shoal": "shoal"}
# What a system failing to set up or measure raises; anything else is a bug and ends the run.
FAILURES = (LabError, OSError, ValueError, KeyError)


@dataclass
class Running:
    """A system's lab while the section runs; `failure` once it failed (it is then skipped)."""

    name: str
    lab: Lab | None = None
    setup: Setup | None = None
    setup_seconds: float | None = None
    measured: Measured = field(default_factory=Measured)
    notes: list[str] = field(default_factory=list)
    failure: str | None = None

    def fail(self, exc: Exception) -> None:
        progress(f"dataplane: {self.name} failed: {exc}")
        self.failure = f"{type(exc).__name__}: {exc}"
        self.setup = None

    def result(self) -> SystemResult:
        label = LABELS.get(self.name, self.name)
        if self.failure is not None:
            return SystemResult(status="failed", label=label, reason=self.failure)
        return SystemResult.measured(label, self.measured, self.setup_seconds, self.notes)


def _start(name: str, run_id: str) -> Running:
    """A fresh 2-host lab with the system set up; on failure the result says why."""
    progress(f"dataplane: setting up {name} ({LABELS[name]})")
    sysrun = Running(name)
    try:
        sysrun.lab = Lab.create(f"bench-{_SHORT[name]}-{run_id}", hosts=2)
        t0 = time.monotonic()
        sysrun.setup = SETUPS[name](sysrun.lab)
        sysrun.setup_seconds = time.monotonic() - t0
        sysrun.notes += sysrun.setup.notes
    except FAILURES as exc:
        sysrun.fail(exc)
    return sysrun


def _measure_all(live: list[Running], runs: int, seconds: int, ping_count: int) -> None:
    """First packet first (each system before any other traffic of its own), then latency and
    throughput, each interleaved across systems (throughput runs in A B C, C B A order) so the
    shared machine's background load hits all alike. Pings measured one system after the
    other differed by 20 % between shoal and hand-written WireGuard; interleaved, by 0-3 %."""
    for sysrun in live:
        if sysrun.setup is None:
            continue
        st, m = sysrun.setup, sysrun.measured
        try:
            m.handshake_before_probe = st.handshake_done()
            m.first_packet_ms = first_packet_ms(st.client, st.server.ip)
            progress(f"  {sysrun.name}: first packet {m.first_packet_ms} ms")
        except FAILURES as exc:
            sysrun.fail(exc)
    for _ in range(PING_ROUNDS):
        for sysrun in live:
            if sysrun.setup is None:
                continue
            st, m = sysrun.setup, sysrun.measured
            try:
                replies, count = ping_rtts(st.client, st.server.ip, ping_count // PING_ROUNDS)
            except FAILURES as exc:
                sysrun.fail(exc)
                continue
            m.rtts_ms += replies
            m.pings_sent += count
    for streams in (1, 4):
        for i in range(runs):
            # A B C, then C B A: every pair of systems meets in A B B A order, so a load that
            # drifts during a round hits both alike; the last two (hand-written WireGuard,
            # shoal) run back to back in every round.
            for sysrun in live if i % 2 == 0 else live[::-1]:
                if sysrun.setup is None:
                    continue
                st, m = sysrun.setup, sysrun.measured
                try:
                    got = iperf(st.client, st.server, seconds, streams)
                except FAILURES as exc:
                    sysrun.fail(exc)
                    continue
                (m.tcp1 if streams == 1 else m.tcp4).append(got)
                progress(f"  tcp{streams} run {i + 1}: {sysrun.name} {got.gbps:.3f} Gbit/s")


def run_dataplane(quick: bool = False, systems: tuple[str, ...] = SYSTEMS) -> DataplaneResult:
    """The data-plane section: every system in its own fresh lab (all up together, measured
    interleaved), then Swarm's encrypted probe and shoal's tuning, then every lab removed."""
    settings = QUICK if quick else FULL
    run_id = secrets.token_hex(2)
    live: list[Running] = []
    extra: dict[str, SystemResult] = {}
    tuning = Tuning(not_run=("shoal did not run",))
    try:
        live = [_start(name, run_id) for name in systems]
        _measure_all(live, settings.runs, settings.seconds, settings.ping_count)
        for sysrun in live:
            if sysrun.setup is None or sysrun.lab is None:
                continue
            try:
                if sysrun.name == "swarm":
                    progress("dataplane: swarm-encrypted (probe)")
                    extra["swarm-encrypted"] = probe_swarm_encrypted(sysrun.lab, settings)
                if sysrun.name == "shoal":
                    progress("dataplane: tuning shoal by hand")
                    tuning = tune_shoal(sysrun.lab, sysrun.setup, settings)
            except FAILURES as exc:
                progress(f"dataplane: {sysrun.name} extra step failed: {exc}")
                sysrun.notes.append(f"extra step failed: {exc}")
    finally:
        for sysrun in live:
            if sysrun.lab is not None:
                try:
                    sysrun.lab.destroy()
                except LabError as exc:
                    progress(f"dataplane: {sysrun.name}: teardown: {exc}")
    results: dict[str, SystemResult] = {}
    for sysrun in live:
        results[sysrun.name] = sysrun.result()
        if sysrun.name == "swarm" and "swarm-encrypted" in extra:
            results["swarm-encrypted"] = extra["swarm-encrypted"]
    results, comparison = with_ratios(results)
    return DataplaneResult(
        settings=settings, systems=results, shoal_vs_handwg=comparison, tuning=tuning
    )
