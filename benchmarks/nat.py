"""NAT traversal figures: `python -m benchmarks.nat [--quick] [--json FILE]` (root).

One lab: h1 public, h2 behind an easy NAT, h3 and h4 each behind a symmetric ("hard") NAT,
h5 behind a firewall that passes only TCP to web ports. h1 joins first; then each other host
joins (`shoal up`) and the time until its first ping to the mesh IP of the peer
it pairs with (host → host over the mesh) is answered is its "time to a working path":

    easy → public         direct through the hole punch
    hard → public         direct (the public side follows the hard side's handshakes)
    hard ↔ hard           through the server's UDP relay
    udp-blocked → public  through the server's TCP relay

Then iperf3 TCP (1 stream, median of the runs) and ping RTT over the direct pair (h1 ↔ h2),
the UDP-relayed pair (h3 ↔ h4) and the TCP-relayed pair (h5 ↔ h1), with machine CPU seconds
per Gbit moved, and each relayed figure ÷ the direct one (target: relayed >= 0.5x direct).
All traffic is container → container through shoal, between the lab's own namespaces.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.dataplane.probes import Endpoint, endpoint, iperf, ping_rtts
from benchmarks.log import progress
from benchmarks.typed import Frozen
from shoal.lab import Lab, LabHost, sweep
from shoal.lab.lab import run
from shoal.lab.nat import parse_nat
from shoal.lab.procs import NETNS_DIR

NAT = "h2=easy,h3=hard,h4=hard,h5=udp-blocked"
PAIRS = (  # (host joining, peer, what kind of path it is)
    ("h2", "h1", "easy -> public (direct)"),
    ("h3", "h1", "hard -> public (direct)"),
    ("h4", "h3", "hard <-> hard (UDP relay)"),
    ("h5", "h1", "udp-blocked -> public (TCP relay)"),
)  # time from `shoal up` on the first host to the first ping (host to host, mesh IPs)
THROUGHPUT = (  # (client, server, label)
    ("h2", "h1", "direct"),
    ("h4", "h3", "udp relay"),
    ("h5", "h1", "tcp relay"),
)
PATH_TIMEOUT = 120.0


class PathFigure(Frozen):
    pair: str
    seconds: float | None  # from `shoal up` starting to the first answered ping; None: none


class Throughput(Frozen):
    path: str
    gbps: tuple[float, ...]  # each run's, received by the server
    cpu_s_per_gbit: tuple[float, ...]  # machine-wide busy CPU seconds per Gbit moved, per run
    rtt_ms: float | None = None  # busybox ping average

    @property
    def median_gbps(self) -> float:
        return statistics.median(self.gbps) if self.gbps else 0.0


class NatResult(Frozen):
    paths: tuple[PathFigure, ...]
    throughput: tuple[Throughput, ...]
    ratios: dict[str, float]  # each relayed path's median throughput / the direct one's


def _shoal(host: LabHost, *args: str) -> None:
    shoal = str(Path(sys.executable).with_name("shoal"))
    host.exec([shoal, *args], timeout=120)


def _up(lab: Lab, host: LabHost, token: str) -> None:
    _shoal(
        host, "up", "--server", str(lab.server_url), "--token", token, "--name", host.name,
        "--advertise-addr", str(host.underlay_ip), "--state-dir", str(host.state_dir),
    )  # fmt: skip


def _container(host: LabHost) -> Endpoint:
    name = f"b{host.name}"
    host.run_container(name)
    return endpoint(host, name, "shoal")


def _mesh_ip(host: LabHost) -> str:
    shoal = str(Path(sys.executable).with_name("shoal"))
    out = host.exec([shoal, "status", "--json", "--state-dir", str(host.state_dir)], timeout=60)
    return str(json.loads(out.stdout)["mesh_ip"])


def _first_answer(host: LabHost, dst: str, started: float) -> float | None:
    argv = ["nsenter", f"--net={NETNS_DIR / host.netns}", "busybox", "ping", "-c", "1", "-W", "1"]
    while time.monotonic() - started < PATH_TIMEOUT:
        if run([*argv, dst], check=False, timeout=10).returncode == 0:
            return time.monotonic() - started
    return None


def run_nat(quick: bool = False) -> NatResult:
    sweep()
    lab = Lab.create(f"bn{os.getpid()}", hosts=5, nat=parse_nat(NAT))
    try:
        lab.start_server()
        token = lab.create_token(reusable=True)
        _up(lab, lab.host("h1"), token)
        paths = []
        for name, peer, label in PAIRS:
            host, dst = lab.host(name), _mesh_ip(lab.host(peer))
            started = time.monotonic()
            _up(lab, host, token)  # returns once the agent runs; the path comes after
            took = _first_answer(host, dst, started)
            progress(f"nat: {label}: " + (f"{took:.1f} s" if took is not None else "no path"))
            paths.append(PathFigure(pair=label, seconds=took))
        ends = {name: _container(lab.host(name)) for name in ("h1", "h2", "h3", "h4", "h5")}
        seconds, runs = (3, 1) if quick else (10, 3)
        figures = []
        for client, server, label in THROUGHPUT:
            iperfs = [iperf(ends[client], ends[server], seconds) for _ in range(runs)]
            rtts, _sent = ping_rtts(ends[client], ends[server].ip, 50 if quick else 200)
            t = Throughput(
                path=label,
                gbps=tuple(r.gbps for r in iperfs),
                cpu_s_per_gbit=tuple(r.cpu_seconds / r.gbit if r.gbit else 0.0 for r in iperfs),
                rtt_ms=statistics.mean(rtts) if rtts else None,
            )
            progress(f"nat: {label}: {t.median_gbps:.3f} Gbit/s, rtt {t.rtt_ms or 0:.3f} ms")
            figures.append(t)
        direct = figures[0].median_gbps
        ratios = {t.path: t.median_gbps / direct for t in figures[1:] if direct}
        return NatResult(paths=tuple(paths), throughput=tuple(figures), ratios=ratios)
    finally:
        lab.destroy()


def render_markdown(result: NatResult) -> list[str]:
    """The section for docs/benchmarks.md: the same figures as `render`, in a code block."""
    return [
        f"Hosts behind NATs in one lab (`{NAT}`, see benchmarks/nat.py): time to a working",
        "path per kind of pair, and throughput of relayed paths against a direct one.",
        "",
        "```",
        *render(result),
        "```",
    ]


def render(result: NatResult) -> list[str]:
    lines = ["time to a working path (from `shoal up` to the first answered ping):"]
    for p in result.paths:
        lines.append(f"  {p.pair:<36} " + (f"{p.seconds:6.1f} s" if p.seconds else "  none"))
    lines.append("container -> container, iperf3 TCP 1 stream (median), ping RTT (avg):")
    for t in result.throughput:
        cpu = statistics.median(t.cpu_s_per_gbit) if t.cpu_s_per_gbit else 0.0
        lines.append(
            f"  {t.path:<10} {t.median_gbps:7.3f} Gbit/s  rtt {t.rtt_ms or 0:7.3f} ms  "
            f"cpu {cpu:5.1f} s/Gbit"
        )
    for path, ratio in result.ratios.items():
        lines.append(f"  {path} / direct: {ratio:.2f}x (target >= 0.5x)")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.nat", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    result = run_nat(quick=args.quick)
    print("\n".join(render(result)))
    if args.json is not None:
        args.json.write_text(result.model_dump_json(indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
