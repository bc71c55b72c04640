"""Joining a host: from `shoal up` on a new host to the first reply of a container there from a
container on another host; the median and p90 of several joins, and where the time goes.

    python -m benchmarks.join [--reps 7]     this measurement alone, in a fresh 3-host lab

The controlplane section (`make bench`) runs the same measurement beside Docker Swarm's.

Each join: `shoal up --server URL --token T ...` on h3 (h1 and h2 joined before, h1 runs the
container pinged), `docker run -d` a container on h3's `shoal` network, then ping h1's
container from it until the first reply; then `shoal down --leave` for the next run.

The breakdown: the agent logs its start-up stages (`startup:`: `cli` is the `shoal up`
process until it forked the agent — interpreter start and the CLI's imports —, `cached-dns`
the names a resumed agent answers from its cached netmap (with their imports; nothing to
answer on a fresh join), `imports` the agent's remaining imports, then data plane, key,
Docker, CA, facts, registration, state, the first apply and the local API) and the first
apply per subsystem (`first apply:`, the subsystems run side by side), and the CPU time all
that used (`shoal up` before the fork included). Around them the benchmark's own stages:
`ready→exit` (the agent ready until `shoal up` returned), `docker-run` and `first-reply`.

With `--baseline-src OTHER/src` the joins alternate between this checkout and that code (the
other half of an A/B comparison: the shared machine's load hits both alike).

Units: seconds in the results, milliseconds when printed.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from benchmarks.log import progress
from benchmarks.typed import Frozen
from shoal.lab import IMAGE, Lab, LabError, LabHost

SHOAL = str(Path(sys.executable).with_name("shoal"))
DEFAULT_REPS = 7


class Stage(Frozen):
    name: str
    seconds: float


class JoinRun(Frozen):
    command_s: float  # the join command's own duration
    first_packet_s: float  # join command started → first reply of a container there
    # shoal only: the agent's start-up stages, then its first apply per subsystem (the
    # subsystems overlap: their sum can exceed the stage "first-apply"), then the
    # benchmark's own stages after the agent was ready.
    stages: tuple[Stage, ...] = ()
    # CPU seconds of `shoal up` and the agent until ready (less load-dependent than wall time).
    cpu_s: float | None = None


def _p90(values: Sequence[float]) -> float:
    """The 90th percentile, nearest rank (of 7 runs: the 7th; of 10: the 9th)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, -(-9 * len(ordered) // 10) - 1))]


def _median_of_known(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


class JoinSummary(Frozen):
    runs: tuple[JoinRun, ...]
    command_s: float  # medians of the runs
    first_packet_s: float
    stages: tuple[Stage, ...] = ()  # median of each stage over the runs that logged it
    # p90 of the runs (None: a result written before they were kept).
    command_p90_s: float | None = None
    first_packet_p90_s: float | None = None
    cpu_s: float | None = None  # median of the runs that logged it

    @classmethod
    def of(cls, runs: Sequence[JoinRun]) -> JoinSummary:
        names = list(dict.fromkeys(stage.name for run in runs for stage in run.stages))
        return cls(
            runs=tuple(runs),
            command_s=statistics.median(r.command_s for r in runs),
            first_packet_s=statistics.median(r.first_packet_s for r in runs),
            command_p90_s=_p90([r.command_s for r in runs]),
            first_packet_p90_s=_p90([r.first_packet_s for r in runs]),
            cpu_s=_median_of_known([r.cpu_s for r in runs]),
            stages=tuple(
                Stage(
                    name=name,
                    seconds=statistics.median(
                        s.seconds for run in runs for s in run.stages if s.name == name
                    ),
                )
                for name in names
            ),
        )


_STAGE = re.compile(r"([\w-]+) (\d+) ms")
_CPU = re.compile(r"^\d+ ms, cpu (\d+) ms: ")


def agent_stages(log: Path) -> tuple[Stage, ...]:
    """The newest `startup:` and `first apply:` lines of an agent log as stages (the first
    apply's subsystems prefixed `apply/`); () when the log has none."""
    startup = apply = ""
    for line in log.read_text(errors="replace").splitlines():
        if " startup: " in line:
            startup = line.split(" startup: ", 1)[1].split(": ", 1)[-1]
        elif " first apply: " in line:
            apply = line.split(" first apply: ", 1)[1]
    stages = [Stage(name=n, seconds=int(ms) / 1000) for n, ms in _STAGE.findall(startup)]
    stages += [Stage(name=f"apply/{n}", seconds=int(ms) / 1000) for n, ms in _STAGE.findall(apply)]
    return tuple(stages)


def agent_cpu(log: Path) -> float | None:
    """The CPU seconds of the newest start-up in an agent log (the `shoal up` process before
    the fork included); None when the log has no such line."""
    newest = None
    for line in log.read_text(errors="replace").splitlines():
        if " startup: " in line:
            newest = _CPU.match(line.split(" startup: ", 1)[1])
    return int(newest.group(1)) / 1000 if newest else None


def first_reply(host: LabHost, container: str, dst: str, timeout: float = 30.0) -> float:
    """CLOCK_MONOTONIC time of the first ping reply from `container` to `dst`."""
    pid = str(host.container_pid(container))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ping = ["nsenter", "-t", pid, "-n", "busybox", "ping", "-c", "1", "-W", "1", dst]
        if subprocess.run(ping, capture_output=True, check=False).returncode == 0:
            return time.monotonic()
    raise LabError(f"{host.name}/{container}: no reply from {dst} in {timeout:g} s")


def shoal_up(lab: Lab, host: LabHost, token: str, env: Mapping[str, str] | None = None) -> None:
    host.exec(
        [SHOAL, "up", "--server", str(lab.server_url), "--token", token, "--name", host.name,
         "--advertise-addr", str(host.underlay_ip), "--state-dir", str(host.state_dir)],
        timeout=120,
        env=env,
    )  # fmt: skip


def join_once(
    lab: Lab, host: LabHost, token: str, anchor: str, tag: str, env: Mapping[str, str] | None
) -> JoinRun:
    """Join `host`, time it to the first reply of a new container there from `anchor` (an
    IP on another host), then leave again. `env`: extra environment of the shoal commands."""
    container = f"newcomer-{tag}"
    started = time.monotonic()
    shoal_up(lab, host, token, env)
    joined = time.monotonic()
    host.run_container(container, network="shoal", image=IMAGE)
    created = time.monotonic()
    first = first_reply(host, container, anchor)
    log = host.state_dir / "agent.log"
    stages = agent_stages(log)
    # The agent's start-up line covers `shoal up` from its process start (`cli`) to the agent
    # being ready; the rest of the command is the hand-over to the CLI and its exit.
    agent = sum(s.seconds for s in stages if not s.name.startswith("apply/"))
    after = (
        Stage(name="ready→exit", seconds=max(0.0, joined - started - agent)),
        Stage(name="docker-run", seconds=created - joined),
        Stage(name="first-reply", seconds=first - created),
    )
    host.docker("rm", "-f", container)
    host.exec([SHOAL, "down", "--leave", "--state-dir", str(host.state_dir)], env=env, timeout=120)
    return JoinRun(
        command_s=joined - started,
        first_packet_s=first - started,
        stages=stages + after if stages else (),
        cpu_s=agent_cpu(log),
    )


def measure_joins(lab: Lab, host: LabHost, token: str, anchor: str, reps: int) -> JoinSummary:
    """Join `host` `reps` times (leaving after each); see `join_once`."""
    runs = []
    for rep in range(reps):
        runs.append(join_once(lab, host, token, anchor, str(rep), None))
        progress(
            f"join {rep + 1}/{reps}: first reply after {runs[-1].first_packet_s * 1000:.0f} ms"
        )
    return JoinSummary.of(runs)


def render(summary: JoinSummary, title: str = "join") -> str:
    """The summary as text: totals (median, p90), then each stage's median."""

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x * 1000:.0f} ms"

    lines = [
        f"{title} ({len(summary.runs)} runs): first cross-host packet p50"
        f" {ms(summary.first_packet_s)}, p90 {ms(summary.first_packet_p90_s)};"
        f" `shoal up` p50 {ms(summary.command_s)}, p90 {ms(summary.command_p90_s)};"
        f" CPU until ready p50 {ms(summary.cpu_s)}",
        "runs (first packet): " + ", ".join(ms(r.first_packet_s) for r in summary.runs),
        "stages (medians; apply/ subsystems run side by side within first-apply):",
    ]
    lines += [f"  {s.name:<22} {ms(s.seconds):>8}" for s in summary.stages]
    return "\n".join(lines) + "\n"


def bench_join(
    name: str, reps: int, baseline_src: Path | None = None
) -> tuple[JoinSummary, JoinSummary | None]:
    """A fresh 3-host lab: h1 and h2 joined, h1 runs the container pinged, h3 joins `reps`
    times. With `baseline_src` (another checkout's `src`), h3 joins as often with that code
    too, the two alternating so the machine's load hits both alike: (this, baseline)."""
    lab = Lab.create(name, hosts=3)
    try:
        lab.start_server()
        token = lab.create_token(reusable=True)
        h1, h2, h3 = lab.hosts
        for host in (h1, h2):
            shoal_up(lab, host, token)
        h1.run_container("anchor", network="shoal", image=IMAGE)
        anchor = str(h1.container_ip("anchor"))
        if baseline_src is None:
            return measure_joins(lab, h3, token, anchor, reps), None
        # PYTHONPATH comes before the editable install's path entry: that code runs instead.
        baseline_env = {"PYTHONPATH": str(baseline_src)}
        this: list[JoinRun] = []
        base: list[JoinRun] = []
        for rep in range(reps):
            this.append(join_once(lab, h3, token, anchor, f"a{rep}", None))
            base.append(join_once(lab, h3, token, anchor, f"b{rep}", baseline_env))
            progress(
                f"join {rep + 1}/{reps}: first reply after {this[-1].first_packet_s * 1000:.0f}"
                f" ms (baseline {base[-1].first_packet_s * 1000:.0f} ms)"
            )
        return JoinSummary.of(this), JoinSummary.of(base)
    finally:
        lab.destroy()


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} ({os.cpu_count()} CPUs)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.join", description=__doc__)
    parser.add_argument("--reps", type=int, default=DEFAULT_REPS, help="joins measured")
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="another checkout's src/ directory: alternate joins with that code (A/B)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    load_before = _load()
    try:
        this, baseline = bench_join(
            f"join{int(time.time()) % 100000}", args.reps, args.baseline_src
        )
    except LabError as exc:
        print(f"benchmarks.join: {exc}", file=sys.stderr)
        return 2
    if args.json is not None:
        args.json.write_text(this.model_dump_json(indent=2) + "\n")
    sys.stdout.write(f"before: {load_before}; after: {_load()}\n")
    sys.stdout.write(render(this))
    if baseline is not None:
        sys.stdout.write(render(baseline, f"baseline {args.baseline_src}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
