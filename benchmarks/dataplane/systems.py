"""Data plane: the systems compared, each set up in a fresh 2-host lab and ready to measure.

    baseline  no overlay: static routes between the hosts' Docker bridges over the underlay
    handwg    hand-written WireGuard (the blog recipe) on wireguard-go, the binary shoal uses
    swarm     Docker Swarm's attachable overlay (VXLAN); its encrypted variant is probed too
    nebula    Nebula, lighthouse on h1, container subnets as unsafe_routes
    shoal     `shoal server` + `shoal up` on both hosts, containers on the `shoal` network

Each `setup_*` returns the two container endpoints to measure between; the lab's teardown
removes everything (see `benchmarks.dataplane.run`).
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path

from benchmarks import swarm
from benchmarks.dataplane.probes import Endpoint, endpoint, measure, netns
from benchmarks.dataplane.results import Settings, SystemResult
from shoal.lab import IMAGE, Lab, LabCommandFailed, LabError, LabHost
from shoal.lab.lab import run

# hand-written WireGuard and shoal last and side by side: in every round of the interleaved runs
# they run back to back (A B, then B A), the pairs shoal ÷ hand-written is judged on.
SYSTEMS = ("baseline", "swarm", "nebula", "handwg", "shoal")
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
    """The minimal hand-written recipe, and nothing else: a wireguard-go interface per host,
    keys from `wg genkey`, AllowedIPs = peer's WireGuard IP + peer's Docker subnet, `ip route
    add <peer subnet> dev wg0`, containers on the default bridge (docker0, MTU 1500), one ACCEPT
    in DOCKER-USER and one NAT exemption (`exempt_from_docker_firewall`). No nft table, no
    MSS clamp, no keepalive: per packet, FORWARD's jump to DOCKER-USER and one rule there."""
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


SETUPS: dict[str, Callable[[Lab], Setup]] = {
    "baseline": setup_baseline,
    "handwg": setup_handwg,
    "swarm": setup_swarm,
    "nebula": setup_nebula,
    "shoal": setup_shoal,
}


# -- after the measurement, in the same lab -------------------------------------------------


def probe_swarm_encrypted(lab: Lab, settings: Settings) -> SystemResult:
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
    label = LABELS["swarm-encrypted"]
    if passed:
        result = SystemResult.measured(label, measure(client, server, settings), None)
        return result.model_copy(update={"kernel": kernel})
    missing = [n for n, ok in kernel.items() if not ok and n != "xfrm"]
    why = f"kernel lacks {', '.join(missing)}" if missing else "ESP traffic is dropped"
    return SystemResult(
        status="not run",
        label=label,
        reason=(
            f"no traffic: ping e1 → e2 over the encrypted overlay failed for 6 s; {installed}; "
            f"{why} (/proc/crypto, /sys/module)"
        ),
        kernel=kernel,
    )
