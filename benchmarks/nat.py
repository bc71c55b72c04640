"""NAT traversal figures: `python -m benchmarks.nat [--quick] [--json FILE]` (root).

One lab: h1 public, h2 behind an easy NAT, h3 and h4 each behind a symmetric ("hard") NAT,
h5 behind a firewall that passes only TCP to web ports. h1 joins first; then each other host
joins (`shoal up`) and the time until its first ping to the mesh IP of the peer
it pairs with (host → host over the mesh) is answered is its "time to a working path":

    easy → public         direct through the hole punch
    hard → public         direct (the public side follows the hard side's handshakes)
    hard ↔ hard           through the server's UDP relay
    udp-blocked → public  through the server's TCP relay

Then iperf3 TCP (1 stream) and ping RTT over the direct pair (h2 → h1), the UDP-relayed pair
(h4 → h3) and the TCP-relayed pair (h5 → h1), in rounds (direct, udp relay, tcp relay, then
again) so the shared machine's drifting load hits every path alike; each relayed figure ÷ the
direct one of its round, and the median of those (target: relayed >= 0.5x direct). CPU per
Gbit moved is counted per process from /proc: the relay (every process of the server's
namespace: `shoal server`, whose event loop also relays), the two end hosts' agents (on the
TCP path they carry WireGuard's datagrams to and from the relay) and their wireguard-go, and
the whole machine (which includes whatever else runs on it). All traffic is container →
container through shoal, between the lab's own namespaces.
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
from benchmarks.dataplane.results import IperfRun
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
    gbps: tuple[float, ...]  # each run's (one per round), received by the server
    cpu_s_per_gbit: tuple[float, ...]  # machine-wide busy CPU seconds per Gbit moved, per run
    rtt_ms: float | None = None  # busybox ping average
    # CPU seconds per Gbit moved, median of the runs, counted per process (see the docstring)
    relay_cpu_s_per_gbit: float | None = None
    agents_cpu_s_per_gbit: float | None = None  # both end hosts' agents together
    wireguard_cpu_s_per_gbit: float | None = None  # both end hosts' wireguard-go together

    @property
    def median_gbps(self) -> float:
        return statistics.median(self.gbps) if self.gbps else 0.0


class NatResult(Frozen):
    paths: tuple[PathFigure, ...]
    throughput: tuple[Throughput, ...]
    ratios: dict[str, float]  # each relayed path's median throughput / the direct one's
    # each relayed path's throughput / the direct one's of the same round, per round
    round_ratios: dict[str, tuple[float, ...]] = {}


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


def _cpu_by_command(netns: Sequence[str]) -> dict[str, float]:
    """CPU seconds (user + system, all threads) so far of the live processes in the named
    network namespaces (not their containers': those have namespaces of their own), summed
    per command name (/proc/PID/comm)."""
    inodes = {os.stat(NETNS_DIR / name).st_ino for name in netns}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.stat(proc / "ns" / "net").st_ino not in inodes:
                continue
            comm = (proc / "comm").read_text().strip()
            stat = (proc / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        out[comm] = out.get(comm, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


class _Run(Frozen):
    iperf_gbps: float
    gbit: float
    machine_cpu: float
    relay_cpu: float
    agents_cpu: float
    wireguard_cpu: float


def _measured_run(lab: Lab, client: Endpoint, server: Endpoint, seconds: int) -> _Run:
    """One iperf3 run with each party's CPU seconds: the server's namespace (the relay), the
    two end hosts' wireguard-go and their other processes (the agents; dockerd idles)."""
    ends = [client.host.netns, server.host.netns]
    relay0 = sum(_cpu_by_command([lab.server_netns]).values())
    ends0 = _cpu_by_command(ends)
    result: IperfRun = iperf(client, server, seconds)
    relay1 = sum(_cpu_by_command([lab.server_netns]).values())
    ends1 = _cpu_by_command(ends)
    spent = {comm: cpu - ends0.get(comm, 0.0) for comm, cpu in ends1.items()}
    wireguard = sum(cpu for comm, cpu in spent.items() if comm.startswith("wireguard"))
    return _Run(
        iperf_gbps=result.gbps,
        gbit=result.gbit,
        machine_cpu=result.cpu_seconds,
        relay_cpu=relay1 - relay0,
        agents_cpu=sum(spent.values()) - wireguard,
        wireguard_cpu=wireguard,
    )


def _per_gbit(runs: Sequence[_Run], cpu: str) -> float | None:
    values = [getattr(r, cpu) / r.gbit for r in runs if r.gbit]
    return statistics.median(values) if values else None


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
        seconds, rounds = (3, 1) if quick else (10, 3)
        runs: dict[str, list[_Run]] = {label: [] for _c, _s, label in THROUGHPUT}
        for round_ in range(rounds):
            for client, server, label in THROUGHPUT:
                r = _measured_run(lab, ends[client], ends[server], seconds)
                progress(f"nat: round {round_ + 1}: {label}: {r.iperf_gbps:.3f} Gbit/s")
                runs[label].append(r)
        figures = []
        for client, server, label in THROUGHPUT:
            rtts, _sent = ping_rtts(ends[client], ends[server].ip, 50 if quick else 200)
            done = runs[label]
            t = Throughput(
                path=label,
                gbps=tuple(r.iperf_gbps for r in done),
                cpu_s_per_gbit=tuple(r.machine_cpu / r.gbit if r.gbit else 0.0 for r in done),
                rtt_ms=statistics.mean(rtts) if rtts else None,
                relay_cpu_s_per_gbit=_per_gbit(done, "relay_cpu"),
                agents_cpu_s_per_gbit=_per_gbit(done, "agents_cpu"),
                wireguard_cpu_s_per_gbit=_per_gbit(done, "wireguard_cpu"),
            )
            progress(f"nat: {label}: {t.median_gbps:.3f} Gbit/s, rtt {t.rtt_ms or 0:.3f} ms")
            figures.append(t)
        direct = figures[0]
        relayed = [label for _c, _s, label in THROUGHPUT[1:]]
        round_ratios = {
            label: tuple(
                r.iperf_gbps / d.iperf_gbps
                for r, d in zip(runs[label], runs[direct.path], strict=True)
                if d.iperf_gbps
            )
            for label in relayed
        }
        ratios = {
            label: statistics.median(values) for label, values in round_ratios.items() if values
        }
        return NatResult(
            paths=tuple(paths), throughput=tuple(figures), ratios=ratios, round_ratios=round_ratios
        )
    finally:
        lab.destroy()


def render_markdown(result: NatResult) -> list[str]:
    """The section for docs/benchmarks.md: method, the figures as tables, how to read them."""
    out = [
        f"One lab of 5 hosts (`shoal lab up --nat {NAT}`: h1 public, h2 behind an easy NAT, "
        "h3 and h4 each behind a symmetric one, h5 with only TCP 80/443 out), the server on the "
        "public underlay relaying over UDP and over TCP/TLS on 443 (`python -m benchmarks.nat`, "
        "or `make bench` for every section). Time to a path: from `shoal up` starting on the "
        "joining host to the first answered ping to its peer's mesh IP (h1 already up). "
        "Throughput: container → container iperf3 TCP, 1 stream, 10 s per run, in rounds "
        "(direct, UDP relay, TCP relay, again), so each relayed run has a direct run of the "
        "same round to compare with; \u00d7 = median of those per-round ratios "
        "(target \u2265 0.5\u00d7). "
        "RTT: busybox ping every 10 ms \u00d7 200. CPU per Gbit moved, per process from /proc: the "
        "relay (`shoal server`, whose event loop relays), the two end hosts' agents (on the TCP "
        "path they carry every datagram between WireGuard and the relay), their wireguard-go, "
        "and the whole machine (which also counts whatever else ran on it).",
        "",
        "| pair | path | time to a path s |",
        "| --- | --- | ---: |",
    ]
    for p in result.paths:
        pair, _, path = p.pair.partition(" (")
        took = f"{p.seconds:.1f}" if p.seconds is not None else "none"
        out.append(f"| {pair} | {path.rstrip(')')} | {took} |")
    out += [
        "",
        "| path | TCP 1 stream Gbit/s | \u00d7 direct (rounds) | RTT avg ms | relay CPU s/Gbit "
        "| agents CPU s/Gbit | wireguard-go CPU s/Gbit | machine CPU s/Gbit |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for t in result.throughput:
        ratio = result.ratios.get(t.path)
        rounds = ", ".join(f"{r:.2f}" for r in result.round_ratios.get(t.path, ()))
        times = "1.00" if ratio is None else f"{ratio:.2f}" + (f" ({rounds})" if rounds else "")
        machine = statistics.median(t.cpu_s_per_gbit) if t.cpu_s_per_gbit else None
        out.append(
            f"| {t.path} | {t.median_gbps:.3f} | {times} | {_md(t.rtt_ms, 3)} "
            f"| {_md(t.relay_cpu_s_per_gbit)} | {_md(t.agents_cpu_s_per_gbit)} "
            f"| {_md(t.wireguard_cpu_s_per_gbit)} | {_md(machine)} |"
        )
    out += [
        "",
        "Reading: every path is bound by wireguard-go's per-packet cost on this 2-core machine "
        "(see the data-plane section), so a relay shows as the CPU it takes from the two "
        "WireGuards and as the extra hop in the RTT. The UDP relay costs one receive and one "
        "send system call per datagram in the server (batched per wakeup, no event-loop "
        "callback per datagram). The TCP relay adds, per datagram, a loopback UDP hop in each "
        "agent and TLS on both legs; no datagram is copied on its own (TLS decrypts into each "
        "stream's buffer, keys are rewritten in place, runs of frames leave as one write). The "
        "time to a relayed path is mostly the direct attempts it waits out first. Runs on "
        "this shared machine vary by 10-40 % with the other load: a relayed run faster than "
        "the direct one of its round is that noise, and only a ratio that holds in every "
        "round says more than it.",
    ]
    return out


def _md(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(result: NatResult) -> list[str]:
    lines = ["time to a working path (from `shoal up` to the first answered ping):"]
    for p in result.paths:
        lines.append(f"  {p.pair:<36} " + (f"{p.seconds:6.1f} s" if p.seconds else "  none"))
    lines.append("container -> container, iperf3 TCP 1 stream (median), ping RTT (avg),")
    lines.append("CPU s per Gbit moved: machine, relay process, agents, wireguard-go (medians):")
    for t in result.throughput:
        cpu = statistics.median(t.cpu_s_per_gbit) if t.cpu_s_per_gbit else 0.0
        lines.append(
            f"  {t.path:<10} {t.median_gbps:7.3f} Gbit/s  rtt {t.rtt_ms or 0:7.3f} ms  "
            f"cpu {cpu:5.1f} s/Gbit  relay {_cpu(t.relay_cpu_s_per_gbit)}  "
            f"agents {_cpu(t.agents_cpu_s_per_gbit)}  "
            f"wireguard-go {_cpu(t.wireguard_cpu_s_per_gbit)}"
        )
    for path, ratio in result.ratios.items():
        rounds = " ".join(f"{r:.2f}" for r in result.round_ratios.get(path, ()))
        each = f" (rounds: {rounds})" if rounds else ""
        lines.append(f"  {path} / direct: {ratio:.2f}x{each} (target >= 0.5x)")
    return lines


def _cpu(value: float | None) -> str:
    return f"{value:5.2f}" if value is not None else "    -"


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
