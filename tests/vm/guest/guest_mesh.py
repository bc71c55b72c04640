"""A mesh of 2 hosts on kernel WireGuard, inside the VM: each lab host runs its own dockerd
and agent, and the agents pick the kernel backend because the module is there. The operator's
runbook of tests/e2e, on the data plane most real hosts use."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from shoal.lab import Lab, LabHost
from tests.e2e.runbook import ping, start_web, status, up, wait_until

Mesh = dict[str, IPv4Address]  # host name -> its web container's IP
# Under emulation a Python process needs 15-20 s for its imports: stopping the agent and
# `shoal up` (resume) took 29-35 s on a quiet machine, 61 s at load average 9. The pinger must
# outlast that (asserted, so a slow VM cannot pass without having pinged through the restart).
PINGS, INTERVAL = 900, 0.1


def web(host: LabHost) -> str:
    return f"web-{host.name}"


@pytest.fixture(scope="module")
def mesh(lab: Lab, join_token: str) -> Mesh:
    # Both hosts at once: each `shoal up` is two Python start-ups (~40 s under emulation).
    with ThreadPoolExecutor(max_workers=len(lab.hosts)) as pool:
        list(pool.map(lambda h: up(lab, h, join_token), lab.hosts))
        ips = list(pool.map(lambda h: start_web(h, web(h)), lab.hosts))
    return {host.name: ip for host, ip in zip(lab.hosts, ips, strict=True)}


def test_agents_run_on_kernel_wireguard(lab: Lab, mesh: Mesh) -> None:
    for host in lab.hosts:
        s = status(host)
        assert (s["state"], s["dataplane"]) == ("RUNNING", "kernel"), s
        link = json.loads(host.exec(["ip", "-d", "-j", "link", "show", s["interface"]]).stdout)
        assert link[0]["linkinfo"]["info_kind"] == "wireguard"
        assert not list(host.wg_run_dir.iterdir())  # no userspace WireGuard socket


def test_containers_reach_each_other_by_ip_and_by_name(lab: Lab, mesh: Mesh) -> None:
    h1, h2 = lab.hosts
    wait_until("h1 -> h2 by IP", lambda: ping(h1, web(h1), mesh["h2"]), 60)
    wait_until("h2 -> h1 by IP", lambda: ping(h2, web(h2), mesh["h1"]), 60)
    for a, b in ((h1, h2), (h2, h1)):
        by_name = a.container_exec(web(a), ["ping", "-c", "1", "-W", "2", web(b)], check=False)
        assert by_name.returncode == 0, by_name.stdout + by_name.stderr
    # The kernel backend's stats reach `shoal status`: a handshake and bytes both ways.
    [peer] = status(h1)["peers"]
    assert peer["name"] == "h2" and peer["last_handshake"] is not None
    assert peer["rx_bytes"] > 0 and peer["tx_bytes"] > 0


def test_underlay_carries_only_encrypted_wireguard(lab: Lab, mesh: Mesh, tmp_path: Path) -> None:
    h1 = lab.hosts[0]
    pcap = tmp_path / "underlay.pcap"
    marker = "shoal-plaintext-marker-7f3a"
    capture = subprocess.Popen(
        ["ip", "netns", "exec", lab.underlay_netns, "tcpdump", "-i", "any", "-U", "-n",
         "-w", str(pcap), "ip"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_until("tcpdump to start", lambda: pcap.exists() and pcap.stat().st_size > 0, 30)
        h1.container_exec(
            web(h1), ["wget", "-q", "-O", "-", f"http://{mesh['h2']}:8080/{marker}"], check=False
        )
        assert ping(h1, web(h1), mesh["h2"], count=3)
        time.sleep(1)  # let tcpdump write the last packets out
    finally:
        capture.send_signal(signal.SIGINT)
        capture.wait(30)
    raw = pcap.read_bytes()
    assert marker.encode() not in raw
    summary = subprocess.run(
        ["tcpdump", "-n", "-r", str(pcap)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert [line for line in summary if ".51820" not in line and ".8443" not in line] == []
    assert any(".51820" in line and "UDP" in line for line in summary)
    assert not any("ICMP" in line for line in summary)


def test_agent_restart_drops_no_packet(lab: Lab, mesh: Mesh) -> None:
    h1 = lab.hosts[0]
    pid = int((h1.state_dir / "agent.pid").read_text())
    argv = ["exec", web(h1), "ping", "-i", str(INTERVAL), "-c", str(PINGS), str(mesh["h2"])]
    pinger = h1.docker_popen(argv)
    time.sleep(2)
    started = time.monotonic()
    h1.exec(["kill", "-TERM", str(pid)])
    wait_until("old agent to exit", lambda: not Path(f"/proc/{pid}").exists(), 30)
    up(lab, h1, None)  # resumes from the state dir; no token needed
    restart = time.monotonic() - started
    assert pinger.poll() is None, f"the pinger ended before the agent was back ({restart:.0f} s)"
    out, _ = pinger.communicate(timeout=PINGS * INTERVAL + 60)
    print(f"agent restart took {restart:.1f} s; pinger: {out.splitlines()[-2:]}")
    assert " 0% packet loss" in out, out
    assert status(h1)["state"] == "RUNNING"
