"""The agent's /metrics: what a snapshot renders to (parsed strictly), the listen address
rules, and the real listener on loopback."""

from __future__ import annotations

import asyncio
import urllib.request
from datetime import timedelta
from ipaddress import IPv4Address, IPv4Network

import pytest

from shoal.agent.config import MetricsListenRefused, parse_metrics_listen
from shoal.agent.health import Health
from shoal.agent.metrics import AgentSnapshot, render_metrics, serve_metrics
from shoal.agent.reconciler import Reconciler
from shoal.dns import DnsStats
from shoal.firewall.errors import FirewallError
from shoal.model.keys import PrivateKey
from shoal.model.status import AgentState, AgentStatus, HealthWarning, PeerStatus
from shoal.plan.hostconfig import plan_host
from shoal.testing.builders import netmap
from shoal.testing.clock import ManualClock
from shoal.testing.fakes import FakeHost
from shoal.testing.prometheus import parse, value

KEY = PrivateKey(b"\x07" * 32)


async def snapshot() -> AgentSnapshot:
    """h1 with peers h2 (shook hands 7 s ago) and h3 (never); the firewall failed once."""
    host, clock = FakeHost(), ManualClock()
    health = Health(clock)
    reconciler = Reconciler(host.adapters, lambda m: plan_host(m, KEY, 51820), health, clock)
    reconciler.offer(netmap(1, [2, 3], revision=42))
    host.firewall.fail = FirewallError("iptables-restore failed")
    with pytest.raises(FirewallError):
        await reconciler.first_apply()
    now = clock.now()
    peer = PrivateKey(b"\x02" * 32).public_key()
    status = AgentStatus(
        state=AgentState.DEGRADED,
        health=(HealthWarning(code="firewall-failed", message="...", since=now),),
        name="h1",
        dataplane="wireguard-go",
        interface="shoal0",
        netmap_revision=42,
        netmap_received_at=now - timedelta(seconds=90),
        peers=(
            PeerStatus(name="h2", public_key=peer, mesh_ip=IPv4Address("100.64.0.2"),
                       subnet=IPv4Network("10.42.2.0/24"), endpoint="192.0.2.12:51820",
                       last_handshake=now - timedelta(seconds=7), rx_bytes=1000, tx_bytes=2000),
            PeerStatus(name="h3", public_key=peer, mesh_ip=IPv4Address("100.64.0.3"),
                       subnet=IPv4Network("10.42.3.0/24")),
        ),
    )  # fmt: skip
    dns = DnsStats(queries=10, answered=6, forwarded=2, refused=1, servfail=1)
    return AgentSnapshot(status=status, subsystems=reconciler.subsystems(), dns=dns, now=now)


async def test_a_snapshot_renders_every_family() -> None:
    m = parse(render_metrics(await snapshot()))
    assert value(m, "shoal_agent_info", node="h1", dataplane="wireguard-go", interface="shoal0")
    assert value(m, "shoal_agent_state", state="DEGRADED") == 1
    assert value(m, "shoal_agent_state", state="RUNNING") == 0
    assert value(m, "shoal_agent_health_warning", code="firewall-failed") == 1
    assert value(m, "shoal_netmap_revision") == 42
    assert value(m, "shoal_netmap_age_seconds") == 90
    assert value(m, "shoal_peer_handshake_age_seconds", peer="h2") == 7
    assert ("shoal_peer_handshake_age_seconds", frozenset({("peer", "h3")})) not in m
    assert value(m, "shoal_peer_receive_bytes_total", peer="h2") == 1000
    assert value(m, "shoal_peer_transmit_bytes_total", peer="h2") == 2000
    assert value(m, "shoal_peer_info", peer="h2", endpoint="192.0.2.12:51820", path="direct")
    assert value(m, "shoal_reconcile_applies_total", subsystem="firewall") == 1
    assert value(m, "shoal_reconcile_failures_total", subsystem="firewall") == 1
    assert value(m, "shoal_reconcile_consecutive_failures", subsystem="firewall") == 1
    assert value(m, "shoal_reconcile_failures_total", subsystem="routing") == 0
    assert value(m, "shoal_reconcile_last_success_timestamp_seconds", subsystem="routing") > 0
    assert value(m, "shoal_dns_queries_total") == 10
    assert value(m, "shoal_dns_responses_total", result="refused") == 1
    assert value(m, "shoal_dns_responses_total", result="answered") == 6


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("127.0.0.1", ("127.0.0.1", 9469)),
        ("127.0.0.2:9100", ("127.0.0.2", 9100)),
        ("mesh", ("mesh", 9469)),
        ("mesh:9470", ("mesh", 9470)),
    ],
)
def test_metrics_listen_on_loopback_or_the_mesh_ip(text: str, want: tuple[str, int]) -> None:
    assert parse_metrics_listen(text) == want


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("192.0.2.11:9469", "only loopback or `mesh`"),
        ("0.0.0.0", "only loopback or `mesh`"),
        ("localhost:x", r"expected ADDR\[:PORT\]"),
        ("127.0.0.1:70000", r"expected ADDR\[:PORT\]"),
    ],
)
def test_other_listen_addresses_are_refused(text: str, message: str) -> None:
    with pytest.raises(MetricsListenRefused, match=message):
        parse_metrics_listen(text)


async def test_the_listener_serves_the_text_format_and_names_a_busy_port() -> None:
    snap = await snapshot()

    async def get() -> AgentSnapshot:
        return snap

    runner = await serve_metrics("127.0.0.1", 0, get)
    try:
        port = runner.addresses[0][1]
        url = f"http://127.0.0.1:{port}/metrics"
        with await asyncio.to_thread(urllib.request.urlopen, url, timeout=5) as resp:
            assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            assert value(parse(resp.read().decode()), "shoal_netmap_revision") == 42
        with pytest.raises(
            MetricsListenRefused, match=f"cannot listen for metrics on 127.0.0.1:{port}"
        ):
            await serve_metrics("127.0.0.1", port, get)
    finally:
        await runner.cleanup()
