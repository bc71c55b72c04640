"""The probes of the data-plane section: iperf3 throughput, busybox ping RTTs, the first packet
to a never-contacted peer and machine-wide CPU seconds, each run in a container's network
namespace entered from the host (`nsenter -t PID -n`): all traffic stays inside the lab."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from benchmarks.dataplane.results import IperfRun, Measured, Settings, median
from benchmarks.log import progress
from shoal.lab import LabError, LabHost
from shoal.lab.lab import listening, run

PORT = 5201
_REPLY = re.compile(r"seq=(\d+) .*time=([0-9.]+) ms")


@dataclass(frozen=True)
class Endpoint:
    """A container as a traffic endpoint: its host, name, init PID and address."""

    host: LabHost
    container: str
    pid: int
    ip: IPv4Address


def endpoint(host: LabHost, container: str, network: str) -> Endpoint:
    return Endpoint(
        host, container, host.container_pid(container), host.container_ip(container, network)
    )


def netns(pid: int, argv: list[str]) -> list[str]:
    """`argv` run in the network namespace of `pid` (only the netns: the host's binaries)."""
    return ["nsenter", "-t", str(pid), "-n", *argv]


# -- measurements ---------------------------------------------------------------------------


def cpu_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot, all cores (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen[Any]) -> None:
    """`proc` ended: SIGTERM, SIGKILL if it is still there 3 s later."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def iperf_server(server: Endpoint) -> subprocess.Popen[bytes]:
    """A one-shot iperf3 server (`-s -1`) in the server container's netns, once it listens."""
    return serve_iperf(netns(server.pid, []), PORT, server.container)


def serve_iperf(enter: list[str], port: int, where: str) -> subprocess.Popen[bytes]:
    """A one-shot iperf3 server on `port`, started by `enter` (a command that enters a network
    namespace and execs the rest, as `nsenter` and `ip netns exec` do), once it listens."""
    srv = subprocess.Popen(
        [*enter, "iperf3", "-s", "-1", "-p", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while not listening(srv.pid, port):
        if srv.poll() is not None or time.monotonic() > deadline:
            stop(srv)
            raise LabError(f"iperf3 server in {where} did not start")
        time.sleep(0.02)
    return srv


def iperf(client: Endpoint, server: Endpoint, seconds: int, streams: int = 1) -> IperfRun:
    """One iperf3 TCP run client → server (server `-s -1` in the server container's netns)."""
    srv = iperf_server(server)
    try:
        argv = ["iperf3", "-c", str(server.ip), "-p", str(PORT), "-t", str(seconds), "-J"]
        if streams > 1:
            argv += ["-P", str(streams)]
        cpu0 = cpu_busy_seconds()
        out = run(netns(client.pid, argv), check=False, timeout=seconds + 30)
        cpu = cpu_busy_seconds() - cpu0
    finally:
        stop(srv)
    try:
        data: dict[str, Any] = json.loads(out.stdout)
    except ValueError as exc:
        raise LabError(f"iperf3 gave no JSON (exit {out.returncode}): {out.stderr[-300:]}") from exc
    if "error" in data:
        raise LabError(f"iperf3 {client.container} → {server.ip}: {data['error']}")
    received = data["end"]["sum_received"]
    sent = data["end"].get("sum_sent", {})
    return IperfRun(
        gbps=received["bits_per_second"] / 1e9,
        gbit=received["bytes"] * 8 / 1e9,
        cpu_seconds=cpu,
        retransmits=sent.get("retransmits"),
    )


def ping_rtts(client: Endpoint, dst: IPv4Address, count: int) -> tuple[list[float], int]:
    """busybox ping every 10 ms from the client's netns: (RTTs in ms, packets sent)."""
    out = run(
        netns(client.pid, ["busybox", "ping", "-i", "0.01", "-c", str(count), "-W", "2", str(dst)]),
        check=False,
        timeout=count * 0.05 + 30,
    )
    return [float(m.group(2)) for m in _REPLY.finditer(out.stdout)], count


def first_packet_ms(client: Endpoint, dst: IPv4Address, timeout: float = 5.0) -> float | None:
    """Time until the first reply from a never-contacted peer, in ms (handshakes included).

    Pings every 10 ms; the first reply with sequence number n came n x 10 ms + its RTT after
    the first echo was sent. None if nothing answered within `timeout` seconds."""
    count = int(timeout / 0.01)
    proc = subprocess.Popen(
        netns(client.pid, ["busybox", "ping", "-i", "0.01", "-c", str(count), str(dst)]),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = _REPLY.search(line)
            if m:
                return int(m.group(1)) * 10.0 + float(m.group(2))
        return None
    finally:
        stop(proc)


def measure(
    client: Endpoint,
    server: Endpoint,
    settings: Settings,
    handshake_done: Callable[[], bool | None] = lambda: None,
) -> Measured:
    """Every figure for one system, one after the other (no interleaving: for a system
    measured on its own); the first-packet probe comes first (nothing sent before)."""
    m = Measured(handshake_before_probe=handshake_done())
    m.first_packet_ms = first_packet_ms(client, server.ip)
    m.rtts_ms, m.pings_sent = ping_rtts(client, server.ip, settings.ping_count)
    for streams, runs in ((1, m.tcp1), (4, m.tcp4)):
        runs += [iperf(client, server, settings.seconds, streams) for _ in range(settings.runs)]
        progress(f"  tcp {streams} stream(s): {median([r.gbps for r in runs]) or 0:.3f} Gbit/s")
    return m
