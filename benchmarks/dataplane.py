"""Data plane: container → container across two lab hosts, per system, each in a fresh lab.

Systems (each set up and torn down here, nothing left behind):
    baseline  no overlay: static routes between the hosts' Docker bridges over the underlay
    handwg    hand-written WireGuard (the blog recipe) on wireguard-go, the binary shoal uses
    swarm     Docker Swarm's attachable overlay (VXLAN); its encrypted variant is probed too
    nebula    Nebula, lighthouse on h1, container subnets as unsafe_routes
    shoal     `shoal server` + `shoal up` on both hosts, containers on the `shoal` network

Per system: iperf3 TCP 1 and 4 streams (median of `runs` runs of `seconds` s), ping RTT avg and
p99 (busybox, 10 ms interval), first-packet time to a never-contacted peer, machine CPU seconds
per Gbit moved (/proc/stat). Tools run in the containers' network namespaces, entered from the
host (`nsenter -t PID -n`): all traffic stays inside the lab. Then, on the running shoal lab,
tuning variants (MTU, txqueuelen, offloads) are applied by hand and measured.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from shoal.bench import swarm
from shoal.lab import IMAGE, Lab, LabCommandFailed, LabError, LabHost
from shoal.lab.lab import listening, run

PORT = 5201
SYSTEMS = ("baseline", "handwg", "swarm", "nebula", "shoal")
LABELS = {
    "baseline": "no overlay (static routes)",
    "handwg": "hand-written WireGuard (wireguard-go)",
    "swarm": "Docker Swarm overlay (VXLAN)",
    "swarm-encrypted": "Docker Swarm overlay, encrypted (IPsec)",
    "nebula": "Nebula",
    "shoal": "shoal (wireguard-go)",
}
SHOAL = str(Path(sys.executable).with_name("shoal"))
DOCKER_POOL = "172.30.0.0/16"  # every lab dockerd's default bridge is 172.30.<i>.0/24
WG_IF = "wg0"
SHOAL_IF = "shoal0"
SHOAL_BRIDGE = "shoal-br0"
_REPLY = re.compile(r"seq=(\d+) .*time=([0-9.]+) ms")


@dataclass(frozen=True)
class Settings:
    """How long to measure: iperf3 runs x seconds (median kept), pings, tuning runs x seconds."""

    runs: int
    seconds: int
    ping_count: int
    tuning_runs: int
    tuning_seconds: int


FULL = Settings(runs=3, seconds=10, ping_count=200, tuning_runs=2, tuning_seconds=5)
QUICK = Settings(runs=1, seconds=2, ping_count=200, tuning_runs=1, tuning_seconds=2)
PING_ROUNDS = 4  # the pings of each system are split into this many rounds, interleaved


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


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


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@dataclass(frozen=True)
class IperfRun:
    gbps: float  # received by the server, Gbit/s
    gbit: float  # moved in total
    cpu_seconds: float  # machine-wide busy CPU seconds during the run
    retransmits: int | None


def iperf(client: Endpoint, server: Endpoint, seconds: int, streams: int = 1) -> IperfRun:
    """One iperf3 TCP run client → server (server `-s -1` in the server container's netns)."""
    srv = subprocess.Popen(
        netns(server.pid, ["iperf3", "-s", "-1", "-p", str(PORT)]),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not listening(server.pid, PORT):
            if srv.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"iperf3 server in {server.container} did not start")
            time.sleep(0.02)
        argv = ["iperf3", "-c", str(server.ip), "-p", str(PORT), "-t", str(seconds), "-J"]
        if streams > 1:
            argv += ["-P", str(streams)]
        cpu0 = cpu_busy_seconds()
        out = run(netns(client.pid, argv), check=False, timeout=seconds + 30)
        cpu = cpu_busy_seconds() - cpu0
    finally:
        _stop(srv)
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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


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
        _stop(proc)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def measure(
    client: Endpoint,
    server: Endpoint,
    settings: Settings,
    handshake_done: Callable[[], bool | None] = lambda: None,
) -> dict[str, Any]:
    """Every figure for one system; the first-packet probe comes first (nothing sent before)."""
    result: dict[str, Any] = {"status": "ok"}
    result["handshake_before_probe"] = handshake_done()
    result["first_packet_ms"] = first_packet_ms(client, server.ip)
    rtts, sent = ping_rtts(client, server.ip, settings.ping_count)
    result["rtt_avg_ms"] = statistics.fmean(rtts) if rtts else None
    result["rtt_p99_ms"] = percentile(rtts, 0.99) if rtts else None
    result["ping_loss"] = 1 - len(rtts) / sent
    for streams, key in ((1, "tcp1"), (4, "tcp4")):
        runs = [iperf(client, server, settings.seconds, streams) for _ in range(settings.runs)]
        result[f"{key}_runs_gbps"] = [r.gbps for r in runs]
        result[f"{key}_gbps"] = _median([r.gbps for r in runs])
        result[f"{key}_retransmits"] = [r.retransmits for r in runs]
        result[f"{key}_cpu_s_per_gbit"] = _median([r.cpu_seconds / r.gbit for r in runs if r.gbit])
        progress(f"  tcp {streams} stream(s): {result[f'{key}_gbps']:.3f} Gbit/s")
    result["cpu_s_per_gbit"] = result["tcp1_cpu_s_per_gbit"]
    return result


# -- shared host plumbing -------------------------------------------------------------------


def bridge_subnet(host: LabHost) -> IPv4Network:
    """The host dockerd's default bridge (docker0) subnet, as the lab configures it."""
    return IPv4Network(f"172.30.{host.index}.0/24")


def exempt_from_docker_firewall(host: LabHost) -> None:
    """Routed container ↔ container traffic through Docker's firewall (see LAB.md): accept it
    in DOCKER-USER (FORWARD policy is DROP) and keep it out of Docker's MASQUERADE."""
    rule = ["-s", DOCKER_POOL, "-d", DOCKER_POOL]
    host.exec(["iptables", "-I", "DOCKER-USER", "1", *rule, "-j", "ACCEPT"])
    host.exec(["iptables", "-t", "nat", "-I", "POSTROUTING", "1", *rule, "-j", "RETURN"])


def wait_for(what: str, probe: Callable[[], bool], timeout: float = 30.0) -> float:
    started = time.monotonic()
    while not probe():
        if time.monotonic() - started > timeout:
            raise LabError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def two_containers(lab: Lab, network: str) -> tuple[Endpoint, Endpoint]:
    h1, h2 = lab.host("h1"), lab.host("h2")
    for host, name in ((h1, "c1"), (h2, "c2")):
        host.run_container(name, network=network, image=IMAGE)
    return endpoint(h1, "c1", network), endpoint(h2, "c2", network)


def _routed_via(host: LabHost, subnet: str, dev: str) -> bool:
    return dev in host.exec(["ip", "route", "show", subnet], check=False).stdout


def _wg_allows(host: LabHost, ifname: str, subnet: str) -> bool:
    return subnet in host.exec(["wg", "show", ifname, "allowed-ips"], check=False).stdout


def wg_handshakes(host: LabHost, ifname: str) -> bool:
    """True if any peer of `ifname` on `host` has completed a handshake."""
    out = host.exec(["wg", "show", ifname, "latest-handshakes"], check=False).stdout
    return any(line.split()[-1] != "0" for line in out.splitlines() if line.split())


# -- the systems ----------------------------------------------------------------------------


@dataclass
class Setup:
    """A system ready to measure: the two endpoints and a handshake probe."""

    client: Endpoint
    server: Endpoint
    handshake_done: Callable[[], bool | None] = lambda: None
    notes: list[str] = field(default_factory=list)


def setup_baseline(lab: Lab) -> Setup:
    """Static routes between the Docker bridges over the underlay; Docker's firewall exempted."""
    h1, h2 = lab.host("h1"), lab.host("h2")
    for host, peer in ((h1, h2), (h2, h1)):
        host.exec(["ip", "route", "add", str(bridge_subnet(peer)), "via", str(peer.underlay_ip)])
        exempt_from_docker_firewall(host)
    client, server = two_containers(lab, "bridge")
    return Setup(client, server)


def setup_handwg(lab: Lab) -> Setup:
    """The blog recipe: a wireguard-go interface per host, keys from `wg genkey`, AllowedIPs =
    peer's WireGuard IP + peer's Docker subnet, `ip route add <peer subnet> dev wg0`."""
    h1, h2 = lab.host("h1"), lab.host("h2")
    pub: dict[str, str] = {}
    for host in (h1, h2):
        key = host.exec(["wg", "genkey"]).stdout.strip()
        keyfile = host.dir / "wg0.key"
        keyfile.write_text(key + "\n")
        keyfile.chmod(0o600)
        pub[host.name] = host.exec(["wg", "pubkey"], input=key + "\n").stdout.strip()
        host.popen(["wireguard-go", "-f", WG_IF], log=host.dir / "wireguard-go.log")
    for host in (h1, h2):
        sock = host.wg_run_dir / f"{WG_IF}.sock"
        wait_for(f"wireguard-go on {host.name}", sock.exists, timeout=10)
    for host, peer in ((h1, h2), (h2, h1)):
        allowed = f"10.99.0.{peer.index}/32,{bridge_subnet(peer)}"
        host.exec(
            [
                "wg",
                "set",
                WG_IF,
                "listen-port",
                "51820",
                "private-key",
                str(host.dir / "wg0.key"),
                "peer",
                pub[peer.name],
                "allowed-ips",
                allowed,
                "endpoint",
                f"{peer.underlay_ip}:51820",
            ]
        )
        host.exec(["ip", "addr", "add", f"10.99.0.{host.index}/24", "dev", WG_IF])
        host.exec(["ip", "link", "set", WG_IF, "up"])
        host.exec(["ip", "route", "add", str(bridge_subnet(peer)), "dev", WG_IF])
        exempt_from_docker_firewall(host)
    client, server = two_containers(lab, "bridge")
    return Setup(client, server, lambda: wg_handshakes(h1, WG_IF))


def setup_nebula(lab: Lab) -> Setup:
    """Nebula with certificates from nebula-cert, the lighthouse on h1, each host's Docker
    subnet in its certificate (`-subnets`) and routed by its peer as an unsafe_route."""
    h1, h2 = lab.host("h1"), lab.host("h2")
    pki = lab.dir / "nebula"
    pki.mkdir(exist_ok=True)
    ca_crt, ca_key = pki / "ca.crt", pki / "ca.key"
    run(
        [
            "nebula-cert",
            "ca",
            "-name",
            "shoal-bench",
            "-out-crt",
            str(ca_crt),
            "-out-key",
            str(ca_key),
        ]
    )
    lighthouse_ip = f"10.98.0.{h1.index}"
    for host, peer in ((h1, h2), (h2, h1)):
        crt, key = pki / f"{host.name}.crt", pki / f"{host.name}.key"
        run(
            [
                "nebula-cert",
                "sign",
                "-ca-crt",
                str(ca_crt),
                "-ca-key",
                str(ca_key),
                "-name",
                host.name,
                "-ip",
                f"10.98.0.{host.index}/24",
                "-subnets",
                str(bridge_subnet(host)),
                "-out-crt",
                str(crt),
                "-out-key",
                str(key),
            ]
        )
        any_rule = [{"port": "any", "proto": "any", "host": "any"}]
        config = {
            "pki": {"ca": str(ca_crt), "cert": str(crt), "key": str(key)},
            "static_host_map": {lighthouse_ip: [f"{h1.underlay_ip}:4242"]},
            "lighthouse": {
                "am_lighthouse": host is h1,
                "interval": 60,
                "hosts": [] if host is h1 else [lighthouse_ip],
            },
            "listen": {"host": "0.0.0.0", "port": 4242},
            "punchy": {"punch": False},
            "tun": {
                "dev": "nebula1",
                "unsafe_routes": [
                    {"route": str(bridge_subnet(peer)), "via": f"10.98.0.{peer.index}"}
                ],
            },
            "logging": {"level": "info"},
            "firewall": {"outbound": any_rule, "inbound": any_rule},
        }
        path = pki / f"{host.name}.yml"  # JSON is YAML
        path.write_text(json.dumps(config, indent=2))
        host.popen(["nebula", "-config", str(path)], log=host.dir / "nebula.log")
    for host, peer in ((h1, h2), (h2, h1)):
        subnet = str(bridge_subnet(peer))
        wait_for(
            f"nebula route to {subnet} on {host.name}",
            functools.partial(_routed_via, host, subnet, "nebula1"),
            timeout=20,
        )
        exempt_from_docker_firewall(host)
    client, server = two_containers(lab, "bridge")
    # h2's first contact is the lighthouse, which is h1: the h1-h2 tunnel exists before the probe.
    note = "lighthouse on h1 = the peer: h2 handshakes with it at start, before the probe"
    return Setup(client, server, lambda: True, [note])


def setup_swarm(lab: Lab) -> Setup:
    """A swarm (h1 manager, h2 worker) and an attachable overlay with a container per host."""
    info = swarm.swarm_up(lab)
    swarm.create_overlay(info, "benchnet")
    client, server = two_containers(lab, "benchnet")
    return Setup(client, server)


def setup_shoal(lab: Lab) -> Setup:
    """The shoal runbook: server, a reusable token, `shoal up` on both hosts, containers on
    `shoal`; ready once each host's WireGuard knows the other's container subnet (no traffic)."""
    url = lab.start_server()
    token = lab.create_token()
    h1, h2 = lab.host("h1"), lab.host("h2")
    notes: list[str] = []
    for host in (h1, h2):
        argv = [SHOAL, "up", "--server", url, "--token", token, "--name", host.name]
        argv += ["--advertise-addr", str(host.underlay_ip), "--state-dir", str(host.state_dir)]
        for attempt in range(1, 4):
            try:
                host.exec(argv, timeout=120)
                break
            except LabCommandFailed as exc:
                # Seen under load: wireguard-go's socket file exists a moment before it
                # listens, and the agent's first UAPI connect is refused. Retried, reported.
                last = (exc.stderr.strip() or exc.stdout.strip()).splitlines()[-1:]
                notes.append(f"{host.name}: `shoal up` attempt {attempt} failed: {' '.join(last)}")
                if attempt == 3:
                    raise
                time.sleep(1)
    client, server = two_containers(lab, "shoal")
    for host, peer in ((h1, server), (h2, client)):
        subnet = str(IPv4Network(f"{peer.ip}/24", strict=False))
        wait_for(
            f"{host.name}: WireGuard peer for {subnet}",
            functools.partial(_wg_allows, host, SHOAL_IF, subnet),
        )
    return Setup(client, server, lambda: wg_handshakes(h1, SHOAL_IF), notes)


# -- after the measurement, in the same lab -------------------------------------------------


def probe_swarm_encrypted(lab: Lab, settings: Settings) -> dict[str, Any]:
    """Swarm's encrypted overlay: measured if it passes traffic, else reported with why not."""
    info = swarm.SwarmInfo(lab, lab.host("h1"), (lab.host("h2"),), "", 0.0)
    swarm.create_overlay(info, "benchenc", encrypted=True)
    h1, h2 = lab.host("h1"), lab.host("h2")
    h1.run_container("e1", network="benchenc", image=IMAGE)
    h2.run_container("e2", network="benchenc", image=IMAGE)
    client, server = endpoint(h1, "e1", "benchenc"), endpoint(h2, "e2", "benchenc")
    passed = False
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline and not passed:
        ping = ["busybox", "ping", "-c", "1", "-W", "1", str(server.ip)]
        passed = run(netns(client.pid, ping), check=False, timeout=10).returncode == 0
    kernel = swarm.kernel_ipsec_support()
    states = h1.exec(["ip", "xfrm", "state"], check=False).stdout.count("proto esp")
    installed = (
        f"Docker installed {states} ESP xfrm state(s) on h1"
        if states
        else "Docker could not install any ESP xfrm state on h1"
    )
    if passed:
        result = measure(client, server, settings)
        result["kernel"] = kernel
        return result
    missing = [n for n, ok in kernel.items() if not ok and n != "xfrm"]
    why = f"kernel lacks {', '.join(missing)}" if missing else "ESP traffic is dropped"
    return {
        "status": "not run",
        "reason": (
            f"no traffic: ping e1 → e2 over the encrypted overlay failed for 6 s; {installed}; "
            f"{why} (/proc/crypto, /sys/module)"
        ),
        "kernel": kernel,
    }


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

    def _veths(self, host: LabHost) -> list[str]:
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
            for veth in self._veths(h):
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
                for dev in (SHOAL_IF, SHOAL_BRIDGE, *self._veths(e.host)):
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


def tune_shoal(lab: Lab, setup: Setup, settings: Settings) -> dict[str, Any]:
    """Each tuning variant applied by hand to the running shoal lab, TCP 1 stream measured.

    Runs are paired (default, then the variant, `tuning_runs` times) so that the background
    load of this shared machine hits both alike: a variant's ratio is the median of its
    per-pair ratios."""
    knobs = ShoalKnobs(lab, (setup.client, setup.server))
    variants: list[dict[str, Any]] = []
    result: dict[str, Any] = {"variants": variants, "settings": vars(settings)}
    if shutil.which("ethtool") is None:
        result["not_run"] = ["offload toggles: ethtool is not installed (apt install ethtool)"]
    else:
        result["offloads_default"] = knobs.offloads()
    seconds = settings.tuning_seconds
    defaults: list[IperfRun] = []
    with knobs.agents_paused():
        for v in knobs.variants():
            entry: dict[str, Any] = {"variant": v.name, "description": v.description}
            if v.name == "default":
                continue
            pairs: list[tuple[IperfRun, IperfRun]] = []
            try:
                for _ in range(settings.tuning_runs):
                    base = iperf(setup.client, setup.server, seconds)
                    v.apply()
                    try:
                        pairs.append((base, iperf(setup.client, setup.server, seconds)))
                    finally:
                        v.revert()
            except LabError as exc:
                entry["error"] = str(exc)
                progress(f"  tuning {v.name}: failed: {exc}")
            if pairs:
                defaults += [d for d, _ in pairs]
                entry["tcp1_gbps"] = _median([t.gbps for _, t in pairs])
                entry["default_tcp1_gbps"] = _median([d.gbps for d, _ in pairs])
                entry["tcp1_runs_gbps"] = [t.gbps for _, t in pairs]
                entry["default_runs_gbps"] = [d.gbps for d, _ in pairs]
                entry["ratio_to_default"] = _median([t.gbps / d.gbps for d, t in pairs if d.gbps])
                entry["cpu_s_per_gbit"] = _median(
                    [t.cpu_seconds / t.gbit for _, t in pairs if t.gbit]
                )
                progress(
                    f"  tuning {v.name}: {entry['tcp1_gbps']:.3f} Gbit/s, "
                    f"{entry['ratio_to_default']:.2f}x default"
                )
            variants.append(entry)
    if defaults:
        variants.insert(
            0,
            {
                "variant": "default",
                "description": "as shoal sets it up: MTU 1420 everywhere (every pair's first run)",
                "tcp1_gbps": _median([d.gbps for d in defaults]),
                "tcp1_runs_gbps": [d.gbps for d in defaults],
                "cpu_s_per_gbit": _median([d.cpu_seconds / d.gbit for d in defaults if d.gbit]),
                "ratio_to_default": 1.0,
            },
        )
    return result


# -- the section ----------------------------------------------------------------------------

SETUPS: dict[str, Callable[[Lab], Setup]] = {
    "baseline": setup_baseline,
    "handwg": setup_handwg,
    "swarm": setup_swarm,
    "nebula": setup_nebula,
    "shoal": setup_shoal,
}
_SHORT = {"baseline": "base", "handwg": "wg", "swarm": "swarm", "nebula": "neb", "shoal": "shoal"}


@dataclass
class Running:
    """A system's lab while the section runs."""

    name: str
    lab: Lab | None = None
    setup: Setup | None = None
    result: dict[str, Any] = field(default_factory=dict)


def _start(name: str, run_id: str) -> Running:
    """A fresh 2-host lab with the system set up; on failure the result says why."""
    progress(f"dataplane: setting up {name} ({LABELS[name]})")
    sysrun = Running(name)
    try:
        sysrun.lab = Lab.create(f"bench-{_SHORT[name]}-{run_id}", hosts=2)
        t0 = time.monotonic()
        sysrun.setup = SETUPS[name](sysrun.lab)
        sysrun.result = {"status": "ok", "setup_seconds": time.monotonic() - t0}
        if sysrun.setup.notes:
            sysrun.result["notes"] = list(sysrun.setup.notes)
    except (LabError, OSError, ValueError, KeyError) as exc:
        progress(f"dataplane: {name} failed: {exc}")
        sysrun.result = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
        sysrun.setup = None
    return sysrun


def _fail(sysrun: Running, exc: Exception) -> None:
    progress(f"dataplane: {sysrun.name} failed: {exc}")
    sysrun.result = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    sysrun.setup = None


def _measure_all(live: list[Running], settings: Settings) -> None:
    """First packet first (each system before any other traffic of its own), then latency and
    throughput, each interleaved across systems so the shared machine's background load hits
    all alike. Pings measured one system after the other differed by 20 % between shoal and
    hand-written WireGuard; interleaved, by 0-3 %."""
    for sysrun in live:
        if sysrun.setup is None:
            continue
        st, r = sysrun.setup, sysrun.result
        try:
            r["handshake_before_probe"] = st.handshake_done()
            r["first_packet_ms"] = first_packet_ms(st.client, st.server.ip)
            progress(f"  {sysrun.name}: first packet {r['first_packet_ms']} ms")
        except (LabError, OSError, ValueError, KeyError) as exc:
            _fail(sysrun, exc)
    rtts: dict[str, list[float]] = {s.name: [] for s in live}
    sent = dict.fromkeys(rtts, 0)
    for _ in range(PING_ROUNDS):
        for sysrun in live:
            if sysrun.setup is None:
                continue
            st = sysrun.setup
            try:
                replies, count = ping_rtts(
                    st.client, st.server.ip, settings.ping_count // PING_ROUNDS
                )
            except (LabError, OSError, ValueError, KeyError) as exc:
                _fail(sysrun, exc)
                continue
            rtts[sysrun.name] += replies
            sent[sysrun.name] += count
    for sysrun in live:
        if sysrun.setup is None:
            continue
        times, r = rtts[sysrun.name], sysrun.result
        r["rtt_avg_ms"] = statistics.fmean(times) if times else None
        r["rtt_p99_ms"] = percentile(times, 0.99) if times else None
        r["ping_loss"] = 1 - len(times) / sent[sysrun.name] if sent[sysrun.name] else None
        progress(f"  {sysrun.name}: rtt {r['rtt_avg_ms']} ms")
    for streams, key in ((1, "tcp1"), (4, "tcp4")):
        runs: dict[str, list[IperfRun]] = {s.name: [] for s in live}
        for i in range(settings.runs):
            for sysrun in live:
                if sysrun.setup is None:
                    continue
                try:
                    got = iperf(sysrun.setup.client, sysrun.setup.server, settings.seconds, streams)
                except (LabError, OSError, ValueError, KeyError) as exc:
                    _fail(sysrun, exc)
                    continue
                runs[sysrun.name].append(got)
                progress(f"  {key} run {i + 1}: {sysrun.name} {got.gbps:.3f} Gbit/s")
        for sysrun in live:
            if sysrun.setup is None:
                continue
            got_runs, r = runs[sysrun.name], sysrun.result
            r[f"{key}_runs_gbps"] = [x.gbps for x in got_runs]
            r[f"{key}_gbps"] = _median([x.gbps for x in got_runs])
            r[f"{key}_retransmits"] = [x.retransmits for x in got_runs]
            r[f"{key}_cpu_s_per_gbit"] = _median(
                [x.cpu_seconds / x.gbit for x in got_runs if x.gbit]
            )
    for sysrun in live:
        if sysrun.setup is not None:
            sysrun.result["cpu_s_per_gbit"] = sysrun.result.get("tcp1_cpu_s_per_gbit")


def add_ratios(systems: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each ok system's figures ÷ the baseline's, and shoal ÷ hand-written WireGuard."""
    keys = (
        "tcp1_gbps",
        "tcp4_gbps",
        "rtt_avg_ms",
        "rtt_p99_ms",
        "first_packet_ms",
        "cpu_s_per_gbit",
    )

    def ratios(num: dict[str, Any], den: dict[str, Any]) -> dict[str, float]:
        return {
            k: num[k] / den[k]
            for k in keys
            if isinstance(num.get(k), (int, float))
            and isinstance(den.get(k), (int, float))
            and den[k]
        }

    base = systems.get("baseline", {})
    for res in systems.values():
        if res.get("status") == "ok" and base.get("status") == "ok":
            res["vs_baseline"] = ratios(res, base)
    shoal, handwg = systems.get("shoal", {}), systems.get("handwg", {})
    if shoal.get("status") == "ok" and handwg.get("status") == "ok":
        r = ratios(shoal, handwg)
        return {"ratios": r, "target_tcp": 0.95, "meets_target": r.get("tcp1_gbps", 0) >= 0.95}
    return {"ratios": {}, "target_tcp": 0.95, "meets_target": None}


def run_dataplane(quick: bool = False, systems: tuple[str, ...] = SYSTEMS) -> dict[str, Any]:
    """The data-plane section: every system in its own fresh lab (all up together, measured
    interleaved), then Swarm's encrypted probe and shoal's tuning, then every lab removed."""
    settings = QUICK if quick else FULL
    run_id = secrets.token_hex(2)
    live: list[Running] = []
    results: dict[str, dict[str, Any]] = {}
    tuning: dict[str, Any] = {"not_run": ["shoal did not run"]}
    try:
        live = [_start(name, run_id) for name in systems]
        _measure_all(live, settings)
        for sysrun in live:
            results[sysrun.name] = sysrun.result
            if sysrun.setup is None or sysrun.lab is None:
                continue
            try:
                if sysrun.name == "swarm":
                    progress("dataplane: swarm-encrypted (probe)")
                    results["swarm-encrypted"] = probe_swarm_encrypted(sysrun.lab, settings)
                if sysrun.name == "shoal":
                    progress("dataplane: tuning shoal by hand")
                    tuning = tune_shoal(sysrun.lab, sysrun.setup, settings)
            except (LabError, OSError, ValueError, KeyError) as exc:
                progress(f"dataplane: {sysrun.name} extra step failed: {exc}")
                sysrun.result.setdefault("notes", []).append(f"extra step failed: {exc}")
    finally:
        for sysrun in live:
            if sysrun.lab is not None:
                try:
                    sysrun.lab.destroy()
                except LabError as exc:
                    progress(f"dataplane: {sysrun.name}: teardown: {exc}")
    for name, res in results.items():
        res["label"] = LABELS.get(name, name)
    return {
        "status": "ok",
        "settings": vars(settings),
        "systems": results,
        "shoal_vs_handwg": add_ratios(results),
        "tuning": tuning,
    }
