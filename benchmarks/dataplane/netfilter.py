"""Where the kernel spends its netfilter time, shoal against hand-written WireGuard (issue 14).

`python -m benchmarks.dataplane.netfilter [--pairs N] [--seconds S]` (root; wrap it in
`flock /tmp/shoal-bench.lock`): the two fresh 2-host labs of `benchmarks.dataplane.parity`, an
iperf3 TCP run in each, alternating (hand, shoal, hand, shoal, ...), with `perf record -a -g`
sampling the whole machine (cpu-clock) during each run. Every sample inside `nf_hook_slow` is
put down to the netfilter hook it ran at (the kernel function that called the hook: `ip_rcv`
is prerouting, `ip_local_deliver` input, `ip_forward` forward, `__ip_local_out` output) and the
hook function it was in (a table's chain, conntrack, NAT, br_netfilter). The table printed is
the share of all samples per (hook, function), each system's mean over its runs: a row shoal
has and the hand-written setup has not is a per-packet cost of shoal's, in CPU terms.

A second table takes the whole machine instead, per Gbit moved: CPU milliseconds by process
(wireguard-go, iperf3, ksoftirqd, idle, other) and the functions whose cost differs most. The
shares above miss what is not netfilter, and a share moves with throughput; per Gbit, the rows
add up to the whole difference in CPU a Gbit costs.

The parity variants take a difference away and compare throughput and CPU; this shows what
each difference costs without taking anything away, so differences of 1 % show above the noise
of runs on a shared machine.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.dataplane.parity import Run, both_labs, iperf_path, wireguard_go_pids
from benchmarks.dataplane.systems import Setup
from benchmarks.log import progress
from shoal.lab import LabError

# Kernel functions that call a netfilter hook, by the hook they are.
HOOKS = {
    "ip_rcv": "prerouting",
    "ip_local_deliver": "input",
    "ip_forward": "forward",
    "__ip_local_out": "output",
    "ip_output": "postrouting",
    "br_nf_pre_routing": "bridge prerouting (br_netfilter)",
    "br_handle_frame": "bridge prerouting",
    "br_nf_forward_ip": "bridge forward (br_netfilter)",
    "br_nf_post_routing": "bridge postrouting (br_netfilter)",
}
SAMPLE_HZ = 1999
SHOWN = 0.05  # % of all samples: rows below this in both systems are summed as "other"
FUNCTIONS_SHOWN = 30  # rows of the per-function table, largest differences first


Sample = tuple[str, list[str]]  # a sample's process name and its function names, leaf first


def samples(script: str) -> list[Sample]:
    """Each sample of `perf script` output, parsed once for both tables."""
    out: list[Sample] = []
    comm: str | None = None
    frames: list[str] = []
    for line in script.splitlines():
        if not line.strip():
            if comm is not None:
                out.append((comm, frames))
            comm = None
        elif not line[0].isspace():
            comm, frames = line.split()[0], []
        elif comm is not None:
            parts = line.split()
            if len(parts) >= 2:
                frames.append(re.sub(r"\+0x[0-9a-f]+$", "", parts[1]))
    if comm is not None:
        out.append((comm, frames))
    return out


def _process(comm: str) -> str:
    """A sample's process, by the part it plays in the path (kernel threads by kind)."""
    for name in ("wireguard-go", "iperf3", "ksoftirqd", "swapper"):
        if comm.startswith(name):
            return "idle" if name == "swapper" else name
    return "other"


def by_function(parsed: Sequence[Sample]) -> Counter[str]:
    """Samples by "process: function" (the function the sample was in), the whole machine."""
    out: Counter[str] = Counter()
    for comm, frames in parsed:
        out[f"{_process(comm)}: {frames[0] if frames else '?'}"] += 1
    return out


def attribute(parsed: Sequence[Sample]) -> tuple[Counter[str], int]:
    """Samples inside netfilter hooks by "hook: function", and the number of samples."""
    shares: Counter[str] = Counter()
    total = 0
    for _comm, frames in parsed:
        total += 1
        if "nf_hook_slow" not in frames:
            continue
        at = frames.index("nf_hook_slow")
        function = frames[at - 1] if at > 0 else "nf_hook_slow"
        caller = next((f for f in frames[at + 1 : at + 4] if f in HOOKS), None)
        hook = HOOKS.get(caller, "other hook") if caller is not None else "other hook"
        shares[f"{hook}: {function}"] += 1
    return shares, total


@dataclass(frozen=True)
class Profiled:
    """One profiled run: its result, its netfilter samples, all its samples by function."""

    run: Run
    hooks: Counter[str]
    total: int
    functions: Counter[str]
    window: float  # seconds sampled (perf stops before iperf3 does)

    def ms_per_gbit(self, key: str) -> float:
        """CPU milliseconds per Gbit moved that the machine spent in `key`."""
        gbit = self.run.mbps / 1000 * self.window
        return 1000 * self.functions[key] / SAMPLE_HZ / max(gbit, 1e-9)


def _profiled(setup: Setup, wg: Sequence[int], seconds: int, data: Path) -> Profiled:
    """One iperf3 run of `setup` with the whole machine sampled for most of it."""
    window = max(1, seconds - 2)
    record = ["perf", "record", "-a", "-g", "-e", "cpu-clock", "-F", str(SAMPLE_HZ)]
    perf = subprocess.Popen(
        [*record, "-o", str(data), "--", "sleep", str(window)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        run = iperf_path(setup.client, setup.server, wg, seconds, None)
    finally:
        perf.wait()  # (it ends by itself, before the run does)
    if perf.returncode != 0:
        raise LabError(f"perf record failed (exit {perf.returncode})")
    script = subprocess.run(
        ["perf", "script", "-i", str(data)], capture_output=True, text=True, check=True
    ).stdout
    parsed = samples(script)
    hooks, total = attribute(parsed)
    return Profiled(run, hooks, total, by_function(parsed), window)


def measure(pairs: int, seconds: int) -> dict[str, list[Profiled]]:
    """Both labs, `pairs` runs of each, alternating; every run's result and attribution."""
    out: dict[str, list[Profiled]] = {"hand": [], "shoal": []}
    with both_labs("nf") as ((hand_lab, hand), (shoal_lab, shoal)):
        systems = {
            "hand": (hand, wireguard_go_pids(hand_lab)),
            "shoal": (shoal, wireguard_go_pids(shoal_lab)),
        }
        with tempfile.TemporaryDirectory(prefix="shoal-nf-") as tmp:
            for i in range(pairs):
                for name in ("hand", "shoal") if i % 2 == 0 else ("shoal", "hand"):
                    setup, wg = systems[name]
                    got = _profiled(setup, wg, seconds, Path(tmp) / f"{name}{i}.data")
                    out[name].append(got)
                    progress(f"netfilter: {name} {got.run.mbps:.0f} Mbit/s, {got.total} samples")
    return out


def _mean_pct(runs: Sequence[Profiled], key: str) -> float:
    return sum(100 * r.hooks[key] / max(r.total, 1) for r in runs) / len(runs)


def _mean_ms(runs: Sequence[Profiled], key: str) -> float:
    return sum(r.ms_per_gbit(key) for r in runs) / len(runs)


def render(result: dict[str, list[Profiled]]) -> list[str]:
    hand, shoal = result["hand"], result["shoal"]
    keys = set().union(*(r.hooks for r in hand + shoal))
    rows = sorted(
        ((_mean_pct(hand, k), _mean_pct(shoal, k), k) for k in keys),
        key=lambda r: r[0] - r[1],
    )
    lines = [
        "| hook: function | hand-written % | shoal % | shoal - hand |",
        "| --- | ---: | ---: | ---: |",
    ]
    other = [0.0, 0.0]
    for h, s, key in rows:
        if max(h, s) < SHOWN:
            other[0] += h
            other[1] += s
            continue
        lines.append(f"| {key} | {h:.2f} | {s:.2f} | {s - h:+.2f} |")
    lines.append(f"| other | {other[0]:.2f} | {other[1]:.2f} | {other[1] - other[0]:+.2f} |")
    total_h = sum(r[0] for r in rows)
    total_s = sum(r[1] for r in rows)
    lines.append(
        f"| **all netfilter** | {total_h:.2f} | {total_s:.2f} | {total_s - total_h:+.2f} |"
    )
    for name, runs in (("hand-written", hand), ("shoal", shoal)):
        mbps = ", ".join(f"{r.run.mbps:.0f}" for r in runs)
        path = ", ".join(f"{r.run.path_per_gbit:.2f}" for r in runs)
        lines.append(f"- {name}: {mbps} Mbit/s; path CPU {path} s/Gbit")
    return [*lines, "", *render_functions(hand, shoal)]


def render_functions(hand: Sequence[Profiled], shoal: Sequence[Profiled]) -> list[str]:
    """The whole machine per Gbit moved: by process, then the functions that differ most."""
    keys = set().union(*(r.functions for r in [*hand, *shoal]))
    ms = {k: (_mean_ms(hand, k), _mean_ms(shoal, k)) for k in keys}
    lines = [
        "| process (whole machine) | hand-written ms/Gbit | shoal ms/Gbit | shoal - hand |",
        "| --- | ---: | ---: | ---: |",
    ]
    procs: dict[str, list[float]] = {}
    for key, (h, s) in ms.items():
        acc = procs.setdefault(key.split(":")[0], [0.0, 0.0])
        acc[0] += h
        acc[1] += s
    for proc, (h, s) in sorted(procs.items(), key=lambda kv: kv[1][0] - kv[1][1]):
        lines.append(f"| {proc} | {h:.0f} | {s:.0f} | {s - h:+.0f} |")
    busy = [sum(v[i] for p, v in procs.items() if p != "idle") for i in (0, 1)]
    lines.append(f"| **busy** | {busy[0]:.0f} | {busy[1]:.0f} | {busy[1] - busy[0]:+.0f} |")
    lines += [
        "",
        "| process: function | hand-written ms/Gbit | shoal ms/Gbit | shoal - hand |",
        "| --- | ---: | ---: | ---: |",
    ]
    differ = sorted(ms.items(), key=lambda kv: abs(kv[1][1] - kv[1][0]), reverse=True)
    for key, (h, s) in differ[:FUNCTIONS_SHOWN]:
        lines.append(f"| {key} | {h:.1f} | {s:.1f} | {s - h:+.1f} |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dataplane.netfilter", description=__doc__
    )
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args(argv)
    try:
        result = measure(args.pairs, args.seconds)
    except (LabError, OSError, subprocess.CalledProcessError) as exc:
        print(f"netfilter: {exc}", file=sys.stderr)
        return 2
    print("\n".join(render(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
