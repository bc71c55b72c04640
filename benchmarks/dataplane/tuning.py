"""Tuning shoal by hand: settings (MTU, txqueuelen, offloads) applied to a running 2-host shoal
lab, each measured against shoal's default in pairs of iperf3 runs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from benchmarks.dataplane.probes import Endpoint, iperf, netns
from benchmarks.dataplane.results import IperfRun, Settings, Tuning, TuningVariant, median
from benchmarks.dataplane.systems import SHOAL_BRIDGE, SHOAL_IF, Setup
from benchmarks.log import progress
from shoal.lab import Lab, LabError, LabHost
from shoal.lab.lab import run


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    apply: Callable[[], None]
    revert: Callable[[], None]


class ShoalKnobs:
    """Hand-applied settings on a running 2-host shoal lab, both hosts symmetrically.

    The agents are stopped (SIGSTOP) meanwhile so their periodic resync does not undo them."""

    def __init__(self, lab: Lab, endpoints: tuple[Endpoint, Endpoint]) -> None:
        self.lab = lab
        self.endpoints = endpoints

    @contextlib.contextmanager
    def agents_paused(self) -> Iterator[None]:
        pids = [int((e.host.state_dir / "agent.pid").read_text().strip()) for e in self.endpoints]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def veths(self, host: LabHost) -> list[str]:
        out = host.exec(["ip", "-j", "link", "show", "master", SHOAL_BRIDGE]).stdout
        return [link["ifname"] for link in json.loads(out or "[]")]

    def set_mtu(self, mtu: int) -> None:
        """WireGuard interface, its routes, the bridge, its ports and the containers' eth0."""
        for e in self.endpoints:
            h = e.host
            h.exec(["ip", "link", "set", SHOAL_IF, "mtu", str(mtu)])
            for route in json.loads(h.exec(["ip", "-j", "route", "show", "dev", SHOAL_IF]).stdout):
                if "prefsrc" not in route:
                    continue
                h.exec(
                    ["ip", "route", "replace", route["dst"], "dev", SHOAL_IF]
                    + ["src", route["prefsrc"], "mtu", str(mtu)]
                    + (["proto", str(route["protocol"])] if "protocol" in route else [])
                )
            run(netns(e.pid, ["ip", "link", "set", "eth0", "mtu", str(mtu)]))
            for veth in self.veths(h):
                h.exec(["ip", "link", "set", veth, "mtu", str(mtu)])
            h.exec(["ip", "link", "set", SHOAL_BRIDGE, "mtu", str(mtu)])

    def set_underlay_mtu(self, mtu: int) -> None:
        """The simulated wire: every host's eth0 and the underlay bridge's ports."""
        ul = self.lab.underlay_netns
        ports = json.loads(run(["ip", "-n", ul, "-j", "link", "show", "master", "br0"]).stdout)
        for port in ports:
            run(["ip", "-n", ul, "link", "set", port["ifname"], "mtu", str(mtu)])
        for host in self.lab.hosts:
            host.exec(["ip", "link", "set", "eth0", "mtu", str(mtu)])
        run(["ip", "-n", "sl-" + self.lab.name + "-srv", "link", "set", "eth0", "mtu", str(mtu)])

    def jumbo_on(self) -> None:
        self.set_underlay_mtu(9000)
        self.set_mtu(8920)

    def jumbo_off(self) -> None:
        self.set_mtu(1420)
        self.set_underlay_mtu(1500)

    def set_txqueuelen(self, qlen: int) -> None:
        for e in self.endpoints:
            e.host.exec(["ip", "link", "set", SHOAL_IF, "txqueuelen", str(qlen)])

    def set_offload(self, features: dict[str, str], where: str) -> None:
        """ethtool -K on the containers' eth0 ("container"), or on shoal0, the bridge and its
        veths ("host")."""
        args = [x for kv in features.items() for x in kv]
        for e in self.endpoints:
            if where == "container":
                run(netns(e.pid, ["ethtool", "-K", "eth0", *args]), check=False)
            else:
                for dev in (SHOAL_IF, SHOAL_BRIDGE, *self.veths(e.host)):
                    e.host.exec(["ethtool", "-K", dev, *args], check=False)

    def offloads(self) -> dict[str, str]:
        """The offload flags of the first container's eth0 (for the report)."""
        out = run(netns(self.endpoints[0].pid, ["ethtool", "-k", "eth0"]), check=False).stdout
        keep = (
            "tcp-segmentation-offload",
            "generic-segmentation-offload",
            "generic-receive-offload",
        )
        return {
            k.strip(): v.split()[0]
            for k, _, v in (line.partition(":") for line in out.splitlines())
            if k.strip() in keep and v.strip()
        }

    def txqueuelen(self) -> int:
        out = self.endpoints[0].host.exec(["ip", "-j", "link", "show", SHOAL_IF]).stdout
        return int(json.loads(out)[0].get("txqlen", 500))

    def variants(self) -> list[Variant]:
        qlen = self.txqueuelen()
        noop: Callable[[], None] = lambda: None  # noqa: E731
        out = [
            Variant("default", "as shoal sets it up: MTU 1420 everywhere", noop, noop),
            Variant(
                "mtu-1280",
                "MTU 1280 (shoal0, routes, bridge, containers)",
                lambda: self.set_mtu(1280),
                lambda: self.set_mtu(1420),
            ),
            Variant(
                "mtu-1440",
                "MTU 1440: the most a 1500-byte IPv4 underlay carries (60 B overhead)",
                lambda: self.set_mtu(1440),
                lambda: self.set_mtu(1420),
            ),
            Variant(
                "mtu-8920-jumbo",
                "underlay MTU 9000 (jumbo frames), MTU 8920 in the mesh",
                self.jumbo_on,
                self.jumbo_off,
            ),
            Variant(
                "txqueuelen-10000",
                f"shoal0 txqueuelen {qlen} → 10000",
                lambda: self.set_txqueuelen(10000),
                lambda: self.set_txqueuelen(qlen),
            ),
        ]
        if shutil.which("ethtool") is None:
            return out
        off = {"tso": "off", "gso": "off"}
        on = {"tso": "on", "gso": "on"}
        out += [
            Variant(
                "tso-gso-off",
                "ethtool -K tso off gso off in the containers (segment early)",
                lambda: self.set_offload(off, "container"),
                lambda: self.set_offload(on, "container"),
            ),
            Variant(
                "gro-off",
                "ethtool -K gro off on shoal0, the bridge and its veths",
                lambda: self.set_offload({"gro": "off"}, "host"),
                lambda: self.set_offload({"gro": "on"}, "host"),
            ),
        ]
        return out


def tune_shoal(lab: Lab, setup: Setup, settings: Settings) -> Tuning:
    """Each tuning variant applied by hand to the running shoal lab, TCP 1 stream measured.

    Runs are paired (default, then the variant, `tuning_runs` times) so that the background
    load of this shared machine hits both alike: a variant's ratio is the median of its
    per-pair ratios."""
    knobs = ShoalKnobs(lab, (setup.client, setup.server))
    variants: list[TuningVariant] = []
    not_run: tuple[str, ...] = ()
    offloads: dict[str, str] | None = None
    if shutil.which("ethtool") is None:
        not_run = ("offload toggles: ethtool is not installed (apt install ethtool)",)
    else:
        offloads = knobs.offloads()
    seconds = settings.tuning_seconds
    defaults: list[IperfRun] = []
    with knobs.agents_paused():
        for v in knobs.variants():
            if v.name == "default":
                continue
            pairs: list[tuple[IperfRun, IperfRun]] = []
            error: str | None = None
            try:
                for _ in range(settings.tuning_runs):
                    base = iperf(setup.client, setup.server, seconds)
                    v.apply()
                    try:
                        pairs.append((base, iperf(setup.client, setup.server, seconds)))
                    finally:
                        v.revert()
            except LabError as exc:
                error = str(exc)
                progress(f"  tuning {v.name}: failed: {exc}")
            entry = TuningVariant(variant=v.name, description=v.description, error=error)
            if pairs:
                defaults += [d for d, _ in pairs]
                entry = entry.model_copy(
                    update={
                        "tcp1_gbps": median([t.gbps for _, t in pairs]),
                        "default_tcp1_gbps": median([d.gbps for d, _ in pairs]),
                        "tcp1_runs_gbps": tuple(t.gbps for _, t in pairs),
                        "default_runs_gbps": tuple(d.gbps for d, _ in pairs),
                        "ratio_to_default": median([t.gbps / d.gbps for d, t in pairs if d.gbps]),
                        "cpu_s_per_gbit": median(
                            [t.cpu_seconds / t.gbit for _, t in pairs if t.gbit]
                        ),
                    }
                )
                progress(
                    f"  tuning {v.name}: {entry.tcp1_gbps or 0:.3f} Gbit/s, "
                    f"{entry.ratio_to_default or 0:.2f}x default"
                )
            variants.append(entry)
    if defaults:
        variants.insert(
            0,
            TuningVariant(
                variant="default",
                description="as shoal sets it up: MTU 1420 everywhere (every pair's first run)",
                tcp1_gbps=median([d.gbps for d in defaults]),
                tcp1_runs_gbps=tuple(d.gbps for d in defaults),
                cpu_s_per_gbit=median([d.cpu_seconds / d.gbit for d in defaults if d.gbit]),
                ratio_to_default=1.0,
            ),
        )
    return Tuning(
        variants=tuple(variants), settings=settings, not_run=not_run, offloads_default=offloads
    )
