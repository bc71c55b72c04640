"""The agent's Prometheus `/metrics`, opt-in with `shoal up --metrics-listen ADDR:PORT`.

Only on loopback or this node's mesh IP (`--metrics-listen mesh:9469`), never the underlay:
the counters say which hosts talk to which and how much. (shoal's firewall closes the host's
own ports to the mesh: a scraper on another host needs an access rule, or a local proxy.)

    shoal_agent_info{node,dataplane,interface}           1
    shoal_agent_state{state}                             1 for the current state, else 0
    shoal_agent_health_warning{code}                     1 per active health warning
    shoal_netmap_revision                                the netmap the host follows
    shoal_netmap_age_seconds                             since it arrived
    shoal_peer_info{peer,endpoint,path}                  1 per peer; path is "direct"
    shoal_peer_handshake_age_seconds{peer}               peers that ever shook hands
    shoal_peer_receive_bytes_total{peer}                 WireGuard's counters
    shoal_peer_transmit_bytes_total{peer}
    shoal_reconcile_applies_total{subsystem}             applies since start (failed included)
    shoal_reconcile_failures_total{subsystem}
    shoal_reconcile_consecutive_failures{subsystem}      0 once an apply succeeded
    shoal_reconcile_last_success_timestamp_seconds{subsystem}
    shoal_dns_queries_total                              queries the responder parsed
    shoal_dns_responses_total{result}                    answered, forwarded, servfail,
                                                         refused, malformed, truncated,
                                                         dropped, errors

`render_metrics` is pure (a snapshot in, text out); `serve_metrics` is the listener.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from aiohttp import web

from shoal.agent.config import MetricsListenRefused
from shoal.agent.reconciler import SubsystemState
from shoal.dns import DnsStats
from shoal.model.prometheus import CONTENT_TYPE, Family, Sample, render
from shoal.model.status import AgentState, AgentStatus


@dataclass(frozen=True, slots=True)
class AgentSnapshot:
    status: AgentStatus
    subsystems: tuple[SubsystemState, ...]
    dns: DnsStats | None  # None: the responder does not run
    now: datetime


def render_metrics(snap: AgentSnapshot) -> str:
    s = snap.status
    fams = [
        Family(
            "shoal_agent_info",
            "gauge",
            "The agent: node name, data plane and interface.",
            (
                Sample(
                    1,
                    node=s.name or "",
                    dataplane=s.dataplane or "",
                    interface=s.interface or "",
                ),
            ),
        ),
        Family(
            "shoal_agent_state",
            "gauge",
            "1 for the agent's current state.",
            tuple(Sample(int(state is s.state), state=state.value) for state in AgentState),
        ),
        Family(
            "shoal_agent_health_warning",
            "gauge",
            "1 per active health warning, by code.",
            tuple(Sample(1, code=w.code) for w in s.health),
        ),
    ]
    if s.netmap_revision is not None:
        fams.append(
            Family(
                "shoal_netmap_revision",
                "gauge",
                "Revision of the netmap this host follows.",
                (Sample(s.netmap_revision),),
            )
        )
    if s.netmap_received_at is not None:
        age = (snap.now - s.netmap_received_at).total_seconds()
        fams.append(
            Family(
                "shoal_netmap_age_seconds",
                "gauge",
                "Seconds since that netmap arrived.",
                (Sample(age),),
            )
        )
    peers = sorted(s.peers, key=lambda p: p.name)
    fams += [
        Family(
            "shoal_peer_info",
            "gauge",
            "1 per peer, with the endpoint in use and the path kind.",
            tuple(Sample(1, peer=p.name, endpoint=p.endpoint or "", path="direct") for p in peers),
        ),
        Family(
            "shoal_peer_handshake_age_seconds",
            "gauge",
            "Seconds since the last WireGuard handshake (peers that ever shook hands).",
            tuple(
                Sample((snap.now - p.last_handshake).total_seconds(), peer=p.name)
                for p in peers
                if p.last_handshake is not None
            ),
        ),
        Family(
            "shoal_peer_receive_bytes_total",
            "counter",
            "Bytes received from the peer through the tunnel.",
            tuple(Sample(p.rx_bytes, peer=p.name) for p in peers),
        ),
        Family(
            "shoal_peer_transmit_bytes_total",
            "counter",
            "Bytes sent to the peer through the tunnel.",
            tuple(Sample(p.tx_bytes, peer=p.name) for p in peers),
        ),
        Family(
            "shoal_reconcile_applies_total",
            "counter",
            "Applies of each subsystem since the agent started, failed ones included.",
            tuple(Sample(x.applies_total, subsystem=x.name) for x in snap.subsystems),
        ),
        Family(
            "shoal_reconcile_failures_total",
            "counter",
            "Failed applies of each subsystem since the agent started.",
            tuple(Sample(x.failures_total, subsystem=x.name) for x in snap.subsystems),
        ),
        Family(
            "shoal_reconcile_consecutive_failures",
            "gauge",
            "Failed applies in a row (0 once one succeeded).",
            tuple(Sample(x.failures, subsystem=x.name) for x in snap.subsystems),
        ),
        Family(
            "shoal_reconcile_last_success_timestamp_seconds",
            "gauge",
            "Unix time of each subsystem's last successful apply.",
            tuple(
                Sample(x.last_applied_at.timestamp(), subsystem=x.name)
                for x in snap.subsystems
                if x.last_applied_at is not None
            ),
        ),
    ]
    if snap.dns is not None:
        counts = dataclasses.asdict(snap.dns)
        queries = counts.pop("queries")
        fams += [
            Family(
                "shoal_dns_queries_total",
                "counter",
                "DNS queries the responder parsed since it bound.",
                (Sample(queries),),
            ),
            Family(
                "shoal_dns_responses_total",
                "counter",
                "DNS outcomes by result since the responder bound.",
                tuple(Sample(n, result=result) for result, n in sorted(counts.items())),
            ),
        ]
    return render(fams)


async def serve_metrics(
    host: str, port: int, snapshot: Callable[[], Awaitable[AgentSnapshot]]
) -> web.AppRunner:
    """GET /metrics on host:port; MetricsListenRefused when it cannot bind."""

    async def get_metrics(_: web.Request) -> web.Response:
        text = render_metrics(await snapshot())
        return web.Response(text=text, headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", get_metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise MetricsListenRefused(f"cannot listen for metrics on {host}:{port}: {exc}") from exc
    return runner
