"""The mesh as an operator uses it: three hosts join with one command each, containers reach
each other by IP across hosts, encrypted, through agent restarts and server outages."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from shoal.lab import Lab, LabHost
from tests.e2e.runbook import (
    admin,
    host_ping,
    ping,
    shoal,
    start_web,
    status,
    up,
    wait_until,
    whoami,
)

pytestmark = pytest.mark.e2e

Mesh = dict[str, IPv4Address]  # host name -> its web container's IP


def web(host: LabHost) -> str:
    return f"web-{host.name}"


@pytest.fixture(scope="module")
def late_host(lab: Lab) -> LabHost:
    """The host that joins while traffic runs (made on first use)."""
    return lab.add_host()


@pytest.fixture(scope="module")
def mesh(lab: Lab, join_token: str) -> Mesh:
    for host in lab.hosts[:3]:
        up(lab, host, join_token)
    return {host.name: start_web(host, web(host)) for host in lab.hosts[:3]}


def test_containers_reach_each_other_across_hosts_with_source_ip_preserved(
    lab: Lab, mesh: Mesh
) -> None:
    hosts = lab.hosts[:3]
    for a, b in itertools.permutations(hosts, 2):
        wait_until(f"{a.name} -> {b.name} ping", lambda a=a, b=b: ping(a, web(a), mesh[b.name]))
        # TCP too, and the server sees the real container address: no NAT inside the mesh.
        assert whoami(a, web(a), mesh[b.name]) == str(mesh[a.name])


def test_status_lists_every_peer_with_a_handshake(lab: Lab, mesh: Mesh) -> None:
    s = status(lab.hosts[0])
    assert s["state"] == "RUNNING", s["health"]
    assert s["dataplane"] == "wireguard-go"
    peers = {p["name"]: p for p in s["peers"]}
    assert {"h2", "h3"} <= set(peers)
    for p in peers.values():
        assert p["last_handshake"] is not None
        assert p["rx_bytes"] > 0 and p["tx_bytes"] > 0


def test_the_join_token_is_in_no_process_argv_or_environment(
    lab: Lab, mesh: Mesh, join_token: str
) -> None:
    """Issue 7 finding 5: the token stayed in `ps` for the agent's whole life."""
    seen = 0
    for host in lab.hosts[:3]:
        pids = subprocess.run(
            ["ip", "netns", "pids", host.netns], capture_output=True, text=True, check=True
        ).stdout.split()
        for pid in pids:
            for what in ("cmdline", "environ"):
                try:
                    text = Path(f"/proc/{pid}/{what}").read_bytes()
                except OSError:
                    continue  # exited meanwhile
                seen += 1
                assert join_token.encode() not in text, f"token in /proc/{pid}/{what}"
                assert b"SHOAL-1-" not in text, f"a join token in /proc/{pid}/{what}"
    assert seen >= 6  # at least every agent was looked at


def test_underlay_carries_only_encrypted_wireguard(lab: Lab, mesh: Mesh, tmp_path: Path) -> None:
    h1 = lab.hosts[0]
    pcap = tmp_path / "underlay.pcap"
    marker = "shoal-plaintext-marker-7f3a"
    capture = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            lab.underlay_netns,
            "tcpdump",
            "-i",
            "any",
            "-U",
            "-n",
            "-w",
            str(pcap),
            "ip",  # IPv4: the underlay; link-local IPv6 chatter of new veths is not traffic
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until("tcpdump to start", lambda: pcap.exists() and pcap.stat().st_size > 0, 10)
        # A recognisable payload over TCP: an HTTP request whose path is the marker.
        h1.container_exec(
            web(h1),
            ["wget", "-q", "-O", "-", f"http://{mesh['h2']}:8080/{marker}"],
            check=False,
        )
        assert ping(h1, web(h1), mesh["h2"], count=3)
        time.sleep(0.5)  # let tcpdump flush the last packets
    finally:
        capture.send_signal(signal.SIGINT)
        capture.wait(10)
    raw = pcap.read_bytes()
    assert marker.encode() not in raw
    summary = subprocess.run(
        ["tcpdump", "-n", "-r", str(pcap)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    not_wireguard = [
        line
        for line in summary
        if ".51820" not in line and ".8443" not in line  # WireGuard, or TLS to the server
    ]
    assert not_wireguard == []
    assert any(".51820" in line and "UDP" in line for line in summary)
    assert not any("ICMP" in line for line in summary)


def test_agent_restart_drops_no_packet(lab: Lab, mesh: Mesh) -> None:
    h1 = lab.hosts[0]
    pid = int((h1.state_dir / "agent.pid").read_text())
    pinger = h1.docker_popen(["exec", web(h1), "ping", "-i", "0.05", "-c", "120", str(mesh["h2"])])
    time.sleep(1)
    os.kill(pid, signal.SIGTERM)
    wait_until("old agent to exit", lambda: not _alive(pid), 15)
    # Only the containers' DNS redirect went with it (its resolver did); the mesh stayed.
    nat = h1.exec(["iptables-save", "-t", "nat"]).stdout.splitlines()
    assert [rule for rule in nat if rule.startswith("-A SHOAL-DNS")] == []
    assert any(rule.startswith("-A SHOAL-POSTROUTING") for rule in nat)
    up(lab, h1, None)  # resumes from the state dir; no token needed
    nat = h1.exec(["iptables-save", "-t", "nat"]).stdout.splitlines()
    assert len([rule for rule in nat if rule.startswith("-A SHOAL-DNS")]) == 2
    out, _ = pinger.communicate(timeout=60)
    assert " 0% packet loss" in out, out
    assert status(h1)["state"] == "RUNNING"


def test_traffic_flows_while_the_server_is_down(lab: Lab, mesh: Mesh) -> None:
    h1, h3 = lab.hosts[0], lab.hosts[2]
    lab.stop_server(kill=True)
    try:
        wait_until("h1 to notice", lambda: status(h1)["state"] == "DEGRADED", 40)
        assert any(h["code"] == "control-unreachable" for h in status(h1)["health"])
        assert ping(h1, web(h1), mesh["h3"], count=3)
        assert whoami(h3, web(h3), mesh["h1"]) == str(mesh["h3"])
    finally:
        lab.start_server()
    wait_until("h1 to reconnect", lambda: status(h1)["state"] == "RUNNING", 40)


def test_a_fourth_host_joins_while_traffic_runs(
    lab: Lab, mesh: Mesh, join_token: str, late_host: LabHost
) -> None:
    h1 = lab.hosts[0]
    pinger = h1.docker_popen(["exec", web(h1), "ping", "-i", "0.1", "-c", "100", str(mesh["h2"])])
    h4 = late_host
    started = time.monotonic()
    said = up(lab, h4, join_token).stdout  # "shoal: h4 is up: mesh IP 100.64.0.4, ..."
    joined = time.monotonic() - started
    mesh_ip4 = said.split("mesh IP ")[1].split(",")[0]
    wait_until("h1 -> h4 over the mesh", lambda: host_ping(h1, mesh_ip4), 30)
    first_packet = time.monotonic() - started
    ip4 = start_web(h4, web(h4))
    seconds = {
        h.name: wait_until(f"{h.name} -> h4", lambda h=h: ping(h, web(h), ip4), 30)
        for h in lab.hosts[:3]
    }
    print(
        f"\nh4: `shoal up` returned after {joined:.2f}s, first cross-host packet (h1 -> h4 mesh IP)"
        f" after {first_packet:.2f}s; containers on h1..h3 reached h4's new container within"
        f" {max(seconds.values()):.2f}s of its start"
    )
    out, _ = pinger.communicate(timeout=60)
    assert " 0% packet loss" in out, out


@pytest.fixture
def late_host_up(lab: Lab, mesh: Mesh, join_token: str, late_host: LabHost) -> LabHost:
    """The late host in the mesh with its web container: joined by the test of its join when
    that ran first, else here, so that each test also runs alone."""
    up(lab, late_host, join_token)  # "already running" after the join test
    running = late_host.docker("ps", "-q", "--filter", f"name=^{web(late_host)}$").stdout
    if not running.strip():
        start_web(late_host, web(late_host))
    return late_host


def test_down_keeps_a_network_in_use_and_leave_removes_the_node(
    lab: Lab, late_host_up: LabHost
) -> None:
    h1, h4 = lab.hosts[0], late_host_up
    out = shoal(h4, "down", "--state-dir", str(h4.state_dir)).stdout
    assert "kept Docker network 'shoal'" in out and web(h4) in out
    assert h4.exec(["ip", "link", "show", "shoal0"], check=False).returncode != 0
    assert "SHOAL" not in h4.exec(["iptables-save"]).stdout
    assert "shoal" not in h4.exec(["nft", "list", "tables"]).stdout
    h4.docker("rm", "-f", web(h4))
    # The agent is gone now: `down --leave` works from the state dir alone.
    out = shoal(h4, "down", "--leave", "--state-dir", str(h4.state_dir)).stdout
    assert "left the mesh" in out
    assert h4.docker("network", "ls", "-q", "--filter", "name=^shoal$").stdout.strip() == ""
    nodes = {n["name"] for n in json.loads(admin(lab, "nodes", "--json").stdout)}
    assert h4.name not in nodes
    wait_until("h1 to drop h4", lambda: h4.name not in {p["name"] for p in status(h1)["peers"]})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
