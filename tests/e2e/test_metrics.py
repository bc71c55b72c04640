"""Prometheus scrapes a lab agent: `shoal up --metrics-listen 127.0.0.1:9469`, then /metrics
from the host itself shows the peer's handshake and bytes, the netmap and the reconciler."""

from __future__ import annotations

import os
import signal
import sys
import textwrap

import pytest

from shoal.lab import Lab, LabHost
from shoal.testing.prometheus import parse, value
from tests.e2e.runbook import host_ping, shoal, status, up, wait_until

pytestmark = pytest.mark.e2e

_SCRAPE = textwrap.dedent(
    """
    import sys, urllib.request
    with urllib.request.urlopen(sys.argv[1], timeout=5) as resp:
        print(resp.headers["Content-Type"])
        sys.stdout.write(resp.read().decode())
    """
)


def restart_with_metrics(lab: Lab, host: LabHost) -> None:
    pid = int((host.state_dir / "agent.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    wait_until("the agent to exit", lambda: not (host.state_dir / "agent.sock").exists(), 15)
    shoal(
        host, "up", "--name", host.name, "--advertise-addr", str(host.underlay_ip),
        "--state-dir", str(host.state_dir), "--metrics-listen", "127.0.0.1:9469",
    )  # fmt: skip


def test_an_agent_exposes_peers_netmap_and_reconciler(lab: Lab, join_token: str) -> None:
    h1, h2 = lab.hosts[:2]
    for host in (h1, h2):
        up(lab, host, join_token)  # "already running" when another module joined it
    restart_with_metrics(lab, h1)
    ip2 = status(h2)["mesh_ip"]
    wait_until("h1 -> h2 over the mesh", lambda: host_ping(h1, ip2))
    out = h1.exec([sys.executable, "-c", _SCRAPE, "http://127.0.0.1:9469/metrics"]).stdout
    content_type, _, text = out.partition("\n")
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    m = parse(text)
    st = status(h1)
    assert value(m, "shoal_netmap_revision") == st["netmap_revision"]
    assert value(m, "shoal_agent_state", state="RUNNING") == 1
    assert 0 <= value(m, "shoal_peer_handshake_age_seconds", peer=h2.name) < 180
    assert value(m, "shoal_peer_receive_bytes_total", peer=h2.name) > 0
    assert value(m, "shoal_reconcile_applies_total", subsystem="tunnel") >= 1
    assert value(m, "shoal_reconcile_failures_total", subsystem="tunnel") == 0
    # The listener is on loopback only: the underlay address does not answer.
    refused = h1.exec(
        [sys.executable, "-c", _SCRAPE, f"http://{h1.underlay_ip}:9469/metrics"], check=False
    )
    assert refused.returncode != 0 and "Connection refused" in refused.stderr
