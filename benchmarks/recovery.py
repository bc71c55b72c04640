"""DNS after SIGKILL of the agent: how long containers on that host go without mesh names.

    python -m benchmarks.recovery [--reps 5]   this measurement alone, in a fresh 2-host lab

The controlplane section (`make bench`) runs it too, on the lab of its join measurement.

SIGKILL leaves the host configured, the containers' DNS redirect included, but the resolver
it points at died with the agent: names stop resolving. In production systemd starts the
agent again (`Restart=always`, `RestartSec`, see `shoal.agent.systemd`); the lab has no
systemd, so this benchmark does what the unit does: it waits `RestartSec`, then runs the
unit's own command (`shoal up --foreground --state-dir DIR`, resuming from the state dir).

Per run: a container on the probe host asks Docker's embedded DNS for a container on another
host every few milliseconds (`benchmarks.dnsprobe`); the agent there is SIGKILLed; the outage
is from the kill to the first answer again, and, within it, from the restart to that answer.
The restarted agent's start-up stages come from its log. Target: outage within 2 s.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.dnsprobe import Prober
from benchmarks.join import Stage, agent_stages, shoal_up
from benchmarks.log import progress
from benchmarks.typed import Frozen, Percentiles
from shoal.agent.systemd import RESTART_SECONDS, AgentUnit
from shoal.lab import IMAGE, Lab, LabError, LabHost

DEFAULT_REPS = 5
TARGET_SECONDS = 2.0


class DnsRecovery(Frozen):
    restart_delay_s: float  # RestartSec: the wait before the restart, as the unit's
    outage_s: Percentiles  # SIGKILL → a mesh name resolves again in a container there
    restart_to_dns_s: Percentiles  # the restart issued → that name resolves again
    stages: tuple[Stage, ...] = ()  # medians of the restarted agent's start-up stages


def _agent_pid(host: LabHost) -> int:
    return int((host.state_dir / "agent.pid").read_text())


def _restart(host: LabHost) -> subprocess.Popen[bytes]:
    """The agent again, started the way its systemd unit starts it (foreground, resuming)."""
    unit = AgentUnit(state_dir=host.state_dir, docker_host=host.docker_host)
    return host.popen(unit.argv(), log=host.state_dir / "agent.log")


def dns_recovery(origin: LabHost, probe_host: LabHost, reps: int) -> DnsRecovery:
    """SIGKILL `probe_host`'s agent and restart it as systemd would, `reps` times; time until
    a container there resolves a container on `origin` again. Leaves an agent running on
    `probe_host` (started in the lab: `Lab.destroy` stops it)."""
    target, probe = "recovery-target", "recovery-probe"
    origin.run_container(target, network="shoal", image=IMAGE)
    probe_host.run_container(probe, network="shoal", image=IMAGE)
    prober = Prober(probe_host, probe)
    outages: list[float] = []
    restarts: list[float] = []
    runs: list[tuple[Stage, ...]] = []
    agent: subprocess.Popen[bytes] | None = None
    try:
        prober.wait("present", target)
        for rep in range(reps):
            pid = _agent_pid(probe_host)
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            if agent is not None:
                agent.wait(10)  # ours (the previous restart): reaped, not a zombie
            time.sleep(max(0.0, killed + RESTART_SECONDS - time.monotonic()))
            restarted = time.monotonic()
            agent = _restart(probe_host)
            resolved = prober.wait("present", target)
            outages.append(resolved - killed)
            restarts.append(resolved - restarted)
            progress(
                f"recovery {rep + 1}/{reps}: names back {outages[-1] * 1000:.0f} ms after kill"
            )
            _wait_ready(probe_host, pid)  # the next kill hits a started agent, not a starting one
            runs.append(agent_stages(probe_host.state_dir / "agent.log"))
    finally:
        prober.close()
        origin.docker("rm", "-f", target, check=False)
        probe_host.docker("rm", "-f", probe, check=False)
    names = list(dict.fromkeys(stage.name for run in runs for stage in run))
    stages = tuple(
        Stage(
            name=name,
            seconds=statistics.median(s.seconds for run in runs for s in run if s.name == name),
        )
        for name in names
    )
    return DnsRecovery(
        restart_delay_s=RESTART_SECONDS,
        outage_s=Percentiles.of(outages),
        restart_to_dns_s=Percentiles.of(restarts),
        stages=stages,
    )


def _wait_ready(host: LabHost, killed: int, timeout: float = 60.0) -> None:
    """Until the restarted agent wrote its pid file over the one `killed` left (an agent
    writes it once `shoal status` answers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _agent_pid(host) != killed:
                return
        except (OSError, ValueError):
            pass  # being written
        time.sleep(0.02)
    raise LabError(f"{host.name}: the restarted agent was not ready in {timeout:g} s")


def render(result: DnsRecovery) -> str:
    def ms(x: float) -> str:
        return f"{x * 1000:.0f} ms"

    o, r = result.outage_s, result.restart_to_dns_s
    lines = [
        f"DNS after SIGKILL of the agent ({o.n} runs; restarted {ms(result.restart_delay_s)}"
        " after the kill, as the systemd unit's RestartSec): containers there resolve a mesh"
        f" name again {ms(o.p50)} after the kill (p50, max {ms(o.max)}); from the restart"
        f" {ms(r.p50)} (p50, max {ms(r.max)}). Target: within {TARGET_SECONDS:g} s of the kill.",
    ]
    if result.stages:
        lines.append(
            "The restarted agent (medians): "
            + ", ".join(f"{s.name} {ms(s.seconds)}" for s in result.stages)
            + "."
        )
    return "\n".join(lines) + "\n"


def bench_recovery(name: str, reps: int) -> DnsRecovery:
    lab = Lab.create(name, hosts=2)
    try:
        lab.start_server()
        token = lab.create_token(reusable=True)
        h1, h2 = lab.hosts
        for host in (h1, h2):
            shoal_up(lab, host, token)
        return dns_recovery(h1, h2, reps)
    finally:
        lab.destroy()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recovery", description=__doc__)
    parser.add_argument("--reps", type=int, default=DEFAULT_REPS, help="kills measured")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    try:
        result = bench_recovery(f"dnsrec{int(time.time()) % 100000}", args.reps)
    except LabError as exc:
        print(f"benchmarks.recovery: {exc}", file=sys.stderr)
        return 2
    if args.json is not None:
        args.json.write_text(result.model_dump_json(indent=2) + "\n")
    print(f"load average before: {load[0]:.2f}, after: {os.getloadavg()[0]:.2f}")
    sys.stdout.write(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
