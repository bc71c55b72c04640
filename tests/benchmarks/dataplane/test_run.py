"""The data-plane section's orchestration with stand-in labs and probes: every system set up,
measured interleaved, its figures and ratios assembled, a failing system reported with its
reason, and every lab removed. (The probes themselves need the lab: `make bench`.)"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

import pytest

from benchmarks.dataplane import run
from benchmarks.dataplane.probes import Endpoint
from benchmarks.dataplane.results import IperfRun, Settings, SystemResult, Tuning
from benchmarks.dataplane.systems import Setup
from shoal.lab import LabError

GBPS = {"baseline": 10.0, "handwg": 0.5, "swarm": 9.0, "shoal": 0.49}


class FakeLab:
    def __init__(self, name: str, destroyed: list[str]) -> None:
        self.name = name
        self._destroyed = destroyed

    def destroy(self) -> None:
        self._destroyed.append(self.name)


def _setup(system: str) -> Any:
    def setup(lab: FakeLab) -> Setup:
        if system == "nebula":
            raise LabError("nebula died")
        ends = [Endpoint(None, system, 1, IPv4Address(f"10.0.0.{i}")) for i in (1, 2)]
        return Setup(ends[0], ends[1], lambda: system == "shoal", [f"{system} set up"])

    return setup


@pytest.fixture
def destroyed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    gone: list[str] = []

    class Labs:
        @staticmethod
        def create(name: str, hosts: int) -> FakeLab:
            return FakeLab(name, gone)

    def iperf(client: Endpoint, server: Endpoint, seconds: int, streams: int) -> IperfRun:
        gbps = GBPS[client.container] * (1.1 if streams == 4 else 1.0)
        return IperfRun(gbps=gbps, gbit=gbps * seconds, cpu_seconds=seconds, retransmits=0)

    monkeypatch.setattr(run, "Lab", Labs)
    monkeypatch.setattr(run, "SETUPS", {name: _setup(name) for name in run.SYSTEMS})
    monkeypatch.setattr(run, "first_packet_ms", lambda client, ip: 1.5)
    monkeypatch.setattr(run, "ping_rtts", lambda client, ip, count: ([0.2] * count, count))
    monkeypatch.setattr(run, "iperf", iperf)
    encrypted = SystemResult(status="not run", label="encrypted", reason="kernel lacks esp4")
    monkeypatch.setattr(run, "probe_swarm_encrypted", lambda lab, settings: encrypted)
    monkeypatch.setattr(
        run, "tune_shoal", lambda lab, setup, settings: Tuning(not_run=("by hand: later",))
    )
    return gone


def test_every_system_measured_compared_and_removed(destroyed: list[str]) -> None:
    result = run.run_dataplane(quick=True)

    assert list(result.systems) == [
        "baseline", "swarm", "swarm-encrypted", "nebula", "handwg", "shoal",
    ]  # fmt: skip
    shoal = result.systems["shoal"]
    assert shoal.status == "ok" and shoal.label == "shoal (wireguard-go)"
    assert shoal.tcp1_gbps == pytest.approx(0.49)
    assert shoal.tcp4_gbps == pytest.approx(0.539)
    assert shoal.rtt_avg_ms == pytest.approx(0.2) and shoal.ping_loss == 0
    assert shoal.handshake_before_probe is True and shoal.first_packet_ms == 1.5
    assert shoal.cpu_s_per_gbit == pytest.approx(1 / 0.49)
    assert shoal.notes == ("shoal set up",)
    assert shoal.vs_baseline is not None
    assert shoal.vs_baseline.tcp1_gbps == pytest.approx(0.049)

    nebula = result.systems["nebula"]
    assert nebula.status == "failed" and nebula.reason == "LabError: nebula died"
    assert nebula.vs_baseline is None
    assert result.systems["swarm-encrypted"].reason == "kernel lacks esp4"

    cmp = result.shoal_vs_handwg
    assert cmp.ratios.tcp1_gbps == pytest.approx(0.98) and cmp.meets_target is True
    assert cmp.tcp1_rounds == pytest.approx((0.98,)) and cmp.tcp1 == pytest.approx(0.98)
    assert result.tuning.not_run == ("by hand: later",)
    assert result.settings == Settings(
        runs=1, seconds=2, ping_count=200, tuning_runs=1, tuning_seconds=2
    )
    # One lab per system, nebula's too (made before its setup failed): every one removed.
    assert [name.rsplit("-", 1)[0] for name in destroyed] == [
        "bench-base", "bench-swarm", "bench-neb", "bench-wg", "bench-shoal",
    ]  # fmt: skip
