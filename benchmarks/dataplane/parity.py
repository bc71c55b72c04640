"""Where shoal's data plane differs from hand-written WireGuard, by measurement (issue 14).

`python -m benchmarks.dataplane.parity [--rounds N] [--seconds S] [--rate R] [--only V]` (root,
wrap it in `flock /tmp/shoal-bench.lock`; `--save F`, then `--load F --note ... --publish docs`
adds a run to docs/benchmarks.{json,md}): two fresh 2-host labs, the minimal hand-written
recipe (`systems.setup_handwg`) and shoal (`systems.setup_shoal`). Each variant takes one of
shoal's per-packet differences away on the running shoal lab (the agents paused so their
resync does not undo it), or adds one back, and is measured against the hand-written lab in
A B B A rounds (B A A B every other round), iperf3 TCP 1 stream.

Per run: throughput, the machine's busy CPU seconds per Gbit (/proc/stat) and the *path's* CPU
seconds per Gbit: the two iperf3 processes, both wireguard-go processes and ksoftirqd, which do
nearly all the per-packet work (softirq runs in their context). On this shared 2-core machine
the machine-wide figure carries everyone else's load; the path's is the quieter one. With
`--rate` (e.g. 120M) both systems move the same rate and CPU per Gbit is the cost alone.
A variant's ratio is the median over rounds of (variant's runs ÷ hand-written's runs).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.dataplane.probes import PORT, Endpoint, cpu_busy_seconds, iperf_server, netns
from benchmarks.dataplane.publish import add_arguments, publish
from benchmarks.dataplane.render import parity_md
from benchmarks.dataplane.results import Parity, ParityVariant
from benchmarks.dataplane.systems import SHOAL_BRIDGE, SHOAL_IF, Setup, setup_handwg, setup_shoal
from benchmarks.dataplane.tuning import ShoalKnobs
from benchmarks.log import progress
from shoal.lab import Lab, LabError, LabHost
from shoal.lab.lab import run

TICK = os.sysconf("SC_CLK_TCK")
MESH_POOL = "10.42.0.0/16"


@dataclass(frozen=True)
class Run:
    mbps: float
    gbit: float
    machine_s: float  # busy CPU seconds of the whole machine during the run
    path_s: float  # CPU seconds of iperf3 (both ends), wireguard-go (both hosts), ksoftirqd

    @property
    def machine_per_gbit(self) -> float:
        return self.machine_s / self.gbit

    @property
    def path_per_gbit(self) -> float:
        return self.path_s / self.gbit


def _pids(match: Callable[[Path], bool]) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if match(proc):
                    out.append(int(proc.name))
            except OSError:
                continue  # gone meanwhile
    return out


def wireguard_go_pids(lab: Lab) -> list[int]:
    """The wireguard-go processes in the lab's host namespaces."""
    inodes = {os.stat(f"/var/run/netns/{h.netns}").st_ino for h in lab.hosts}
    return _pids(
        lambda p: (
            b"wireguard-go" in (p / "cmdline").read_bytes()
            and os.stat(p / "ns" / "net").st_ino in inodes
        )
    )


def _cpu_seconds(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def _children_seconds() -> float:
    t = os.times()
    return t.children_user + t.children_system


def iperf_path(
    client: Endpoint, server: Endpoint, wg: Sequence[int], seconds: int, rate: str | None
) -> Run:
    """One iperf3 TCP run client → server with the machine's and the path's CPU time."""
    srv = iperf_server(server)
    argv = ["iperf3", "-c", str(server.ip), "-p", str(PORT), "-t", str(seconds), "-J"]
    argv += ["-b", rate] if rate else []
    soft = _pids(lambda p: (p / "comm").read_text().startswith("ksoftirqd"))
    m0, c0, w0 = cpu_busy_seconds(), _children_seconds(), _cpu_seconds([*wg, *soft])
    out = subprocess.run(netns(client.pid, argv), capture_output=True, text=True, check=False)
    srv.wait(timeout=15)  # reaped: its CPU time counts in the children's
    m1, c1, w1 = cpu_busy_seconds(), _children_seconds(), _cpu_seconds([*wg, *soft])
    try:
        got = json.loads(out.stdout)["end"]["sum_received"]
    except (ValueError, KeyError) as exc:
        raise LabError(f"iperf3 gave no result: {out.stderr[-300:]}") from exc
    return Run(got["bits_per_second"] / 1e6, got["bytes"] * 8 / 1e9, m1 - m0, c1 - c0 + w1 - w0)


# -- the differences, each taken away on both shoal hosts -------------------------------------


class Differences:
    """Hand-applied removals of one of shoal's per-packet differences, and their reverts."""

    def __init__(self, lab: Lab, knobs: ShoalKnobs) -> None:
        self.hosts = lab.hosts
        self.knobs = knobs
        self.saved: dict[tuple[str, str], str] = {}

    def bridge_mtu(self, mtu: int) -> None:
        """The containers' eth0, their veths and the bridge (shoal0 and its routes stay at
        1420, as docker0 is at 1500 in the hand recipe)."""
        for e in self.knobs.endpoints:
            run(netns(e.pid, ["ip", "link", "set", "eth0", "mtu", str(mtu)]))
            for veth in self.knobs.veths(e.host):
                e.host.exec(["ip", "link", "set", veth, "mtu", str(mtu)])
            e.host.exec(["ip", "link", "set", SHOAL_BRIDGE, "mtu", str(mtu)])

    def _drop_table(self, family: str) -> None:
        for h in self.hosts:
            self.saved[(h.name, family)] = h.exec(["nft", "list", "table", family, "shoal"]).stdout
            h.exec(["nft", "delete", "table", family, "shoal"])

    def _restore_table(self, family: str) -> None:
        for h in self.hosts:
            h.exec(["nft", "-f", "-"], input=self.saved.pop((h.name, family)))

    def _drop_chain(self, chain: str) -> None:
        """One base chain of `inet shoal` deleted (the table is restored whole)."""
        for h in self.hosts:
            self.saved[(h.name, "inet")] = h.exec(["nft", "list", "table", "inet", "shoal"]).stdout
            h.exec(["nft", "delete", "chain", "inet", "shoal", chain])

    def _restore_chain(self) -> None:
        for h in self.hosts:
            saved = self.saved.pop((h.name, "inet"))
            h.exec(["nft", "-f", "-"], input=f"delete table inet shoal\n{saved}")

    def _drop_first_rules(self) -> None:
        """The rules issue 14 put first in `inet shoal`'s input and forward chains (WireGuard's
        datagrams, the mesh's established flows) deleted: the chains as they were before."""
        for h in self.hosts:
            self.saved[(h.name, "inet")] = h.exec(["nft", "list", "table", "inet", "shoal"]).stdout
            for chain in ("input", "forward"):
                listing = h.exec(["nft", "-a", "list", "chain", "inet", "shoal", chain]).stdout
                for line in listing.splitlines():
                    rule, _, handle = line.strip().partition(" # handle ")
                    if handle and (
                        rule.startswith("udp dport ")
                        or (rule.startswith("iifname ") and "established,related accept" in rule)
                    ):
                        h.exec(["nft", "delete", "rule", "inet", "shoal", chain, "handle", handle])

    def agents(self, sig: signal.Signals) -> None:
        for e in self.knobs.endpoints:
            os.kill(int((e.host.state_dir / "agent.pid").read_text().strip()), sig)

    def raw_prerouting(self, on: bool) -> None:
        """The prerouting chain shoal had before issue 14 (priority raw: the same guards as
        input and forward have now, met by every packet), added back beside them."""
        for h in self.hosts:
            if not on:
                h.exec(["nft", "delete", "chain", "inet", "shoal", "old_prerouting"])
                continue
            vmap = (
                f'{{ "lo" : accept, "{SHOAL_IF}" : accept, '
                f'"{SHOAL_BRIDGE}" : goto from_containers }}'
            )
            script = (
                "add chain inet shoal old_prerouting "
                "{ type filter hook prerouting priority raw; policy accept; }\n"
                f"add rule inet shoal old_prerouting iifname vmap {vmap}\n"
                "add rule inet shoal old_prerouting ip daddr @pools drop\n"
            )
            h.exec(["nft", "-f", "-"], input=script)

    def _docker_user(self, host: LabHost, op: str, rule: list[str]) -> None:
        host.exec(["iptables", op, "DOCKER-USER", *rule])

    def flat_forward(self, on: bool) -> None:
        """DOCKER-USER's jump to SHOAL-FORWARD replaced by the hand recipe's one ACCEPT."""
        accept = ["-s", MESH_POOL, "-d", MESH_POOL, "-j", "ACCEPT"]
        for h in self.hosts:
            if on:
                self._docker_user(h, "-I", ["1", *accept])
                self._docker_user(h, "-D", ["-j", "SHOAL-FORWARD"])
            else:
                self._docker_user(h, "-I", ["1", "-j", "SHOAL-FORWARD"])
                self._docker_user(h, "-D", accept)

    def variants(self) -> dict[str, tuple[str, Callable[[], None], Callable[[], None]]]:
        noop: Callable[[], None] = lambda: None  # noqa: E731

        def both(*steps: Callable[[], None]) -> Callable[[], None]:
            def run_all() -> None:
                for step in steps:
                    step()

            return run_all

        return {
            "shoal": ("shoal as it sets itself up", noop, noop),
            "no-bridge-table": (
                "without the `bridge shoal` table (per-container anti-spoofing)",
                lambda: self._drop_table("bridge"),
                lambda: self._restore_table("bridge"),
            ),
            "no-inet-table": (
                "without the `inet shoal` table (mesh guard, host guard, MSS clamp, policy)",
                lambda: self._drop_table("inet"),
                lambda: self._restore_table("inet"),
            ),
            **{
                f"no-inet-{chain}": (
                    f"without `inet shoal`'s {chain} base chain",
                    functools.partial(self._drop_chain, chain),
                    self._restore_chain,
                )
                for chain in ("prerouting", "input", "forward")
            },
            "no-first-rules": (
                "without the first rules of issue 14 (WireGuard's datagrams in input, the mesh's "
                "established flows in forward): the chains as they were before",
                self._drop_first_rules,
                self._restore_chain,
            ),
            "agents-running": (
                "shoal's agents left running during the runs (every other variant pauses them)",
                functools.partial(self.agents, signal.SIGCONT),
                functools.partial(self.agents, signal.SIGSTOP),
            ),
            "raw-prerouting": (
                "with the raw-priority prerouting chain of before (as on main until issue 14)",
                lambda: self.raw_prerouting(True),
                lambda: self.raw_prerouting(False),
            ),
            "flat-forward": (
                "one ACCEPT in DOCKER-USER instead of the jump to SHOAL-FORWARD",
                lambda: self.flat_forward(True),
                lambda: self.flat_forward(False),
            ),
            "bridge-mtu-1500": (
                "containers, veths and bridge at MTU 1500 (as docker0), shoal0 at 1420",
                lambda: self.bridge_mtu(1500),
                lambda: self.bridge_mtu(1420),
            ),
            "hand-firewall": (
                "all three: only the hand recipe's rules left",
                both(
                    lambda: self._drop_table("bridge"),
                    lambda: self._drop_table("inet"),
                    lambda: self.flat_forward(True),
                ),
                both(
                    lambda: self.flat_forward(False),
                    lambda: self._restore_table("inet"),
                    lambda: self._restore_table("bridge"),
                ),
            ),
        }


def _per_round(
    var: Sequence[Run], hand: Sequence[Run], key: Callable[[Run], float]
) -> tuple[float, ...]:
    """Per A B B A round (two runs each): mean of the variant's ÷ mean of the hand-written."""
    return tuple(
        statistics.fmean(key(r) for r in var[i : i + 2])
        / statistics.fmean(key(r) for r in hand[i : i + 2])
        for i in range(0, min(len(var), len(hand)) - 1, 2)
    )


def measure_variants(
    hand: Setup, shoal: Setup, shoal_lab: Lab, hand_wg: Sequence[int], args: argparse.Namespace
) -> list[ParityVariant]:
    """Every chosen variant against the hand-written lab, A B B A, the agents paused."""
    wg = wireguard_go_pids(shoal_lab)
    knobs = ShoalKnobs(shoal_lab, (shoal.client, shoal.server))
    diffs = Differences(shoal_lab, knobs)
    chosen = {k: v for k, v in diffs.variants().items() if not args.only or k in args.only}
    out: list[ParityVariant] = []
    with knobs.agents_paused():
        for name, (what, apply, revert) in chosen.items():
            hand_runs: list[Run] = []
            var_runs: list[Run] = []
            for r in range(args.rounds):
                for side in "ABBA" if r % 2 == 0 else "BAAB":
                    if side == "A":
                        got = iperf_path(hand.client, hand.server, hand_wg, args.seconds, args.rate)
                        hand_runs.append(got)
                        continue
                    apply()
                    try:
                        got = iperf_path(shoal.client, shoal.server, wg, args.seconds, args.rate)
                    finally:
                        revert()
                    var_runs.append(got)
                progress(
                    f"parity {name} round {r + 1}: hand "
                    f"{', '.join(f'{x.mbps:.0f}' for x in hand_runs[-2:])} / {name} "
                    f"{', '.join(f'{x.mbps:.0f}' for x in var_runs[-2:])} Mbit/s"
                )
            v = ParityVariant(
                variant=name,
                description=what,
                hand_mbps=tuple(x.mbps for x in hand_runs),
                variant_mbps=tuple(x.mbps for x in var_runs),
                throughput_ratios=_per_round(var_runs, hand_runs, lambda x: x.mbps),
                machine_cpu_ratios=_per_round(var_runs, hand_runs, lambda x: x.machine_per_gbit),
                path_cpu_ratios=_per_round(var_runs, hand_runs, lambda x: x.path_per_gbit),
            )
            progress(
                f"parity {name}: x{statistics.median(v.throughput_ratios):.3f} throughput, "
                f"x{statistics.median(v.path_cpu_ratios):.3f} path CPU/Gbit "
                f"({min(v.path_cpu_ratios):.2f}-{max(v.path_cpu_ratios):.2f})"
            )
            out.append(v)
    return out


@contextlib.contextmanager
def both_labs(prefix: str) -> Iterator[tuple[tuple[Lab, Setup], tuple[Lab, Setup]]]:
    """Two fresh 2-host labs, the minimal hand-written recipe's and shoal's, each set up;
    both removed after."""
    run_id = secrets.token_hex(2)
    labs: list[Lab] = []
    try:
        hand_lab = Lab.create(f"{prefix}-wg-{run_id}", hosts=2)
        labs.append(hand_lab)
        hand = setup_handwg(hand_lab)
        shoal_lab = Lab.create(f"{prefix}-sh-{run_id}", hosts=2)
        labs.append(shoal_lab)
        shoal = setup_shoal(shoal_lab)
        yield (hand_lab, hand), (shoal_lab, shoal)
    finally:
        for lab in labs:
            try:
                lab.destroy()
            except LabError as exc:
                progress(f"{prefix}: teardown of {lab.name}: {exc}")


def _measure(args: argparse.Namespace) -> Parity:
    """Both labs made, every chosen variant measured, both labs removed."""
    with both_labs("par") as ((hand_lab, hand), (shoal_lab, shoal)):
        variants = measure_variants(hand, shoal, shoal_lab, wireguard_go_pids(hand_lab), args)
    command = (
        f"python -m benchmarks.dataplane.parity --rounds {args.rounds} --seconds {args.seconds}"
    )
    command += f" --rate {args.rate}" if args.rate else ""
    command += "".join(f" --only {name}" for name in args.only)
    return Parity(
        label=args.label,
        command=command,
        generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        rounds=args.rounds,
        seconds=args.seconds,
        rate=args.rate,
        variants=tuple(variants),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dataplane.parity", description=__doc__
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--rate", default=None, help="iperf3 -b (default: unlimited)")
    parser.add_argument("--only", action="append", default=[], help="a variant (repeatable)")
    parser.add_argument("--label", default="this checkout", help="what shoal's code is at")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        if args.load is not None:
            result = Parity.model_validate_json(args.load.read_text())
        else:
            result = _measure(args)
        update: dict[str, object] = {"notes": (*result.notes, *args.note)}
        if args.label != parser.get_default("label"):
            update["label"] = args.label
        result = result.model_copy(update=update)
        if args.save is not None:
            args.save.write_text(result.model_dump_json(indent=2) + "\n")
        print("\n".join(parity_md(result)))
        if args.publish is not None:
            publish(args.publish, "parity", result)
    except (LabError, OSError, ValueError) as exc:
        print(f"parity: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
