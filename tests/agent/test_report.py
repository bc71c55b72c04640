"""shoal.agent.report: what an agent tells the server about its paths, and how it measures RTT."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import timedelta
from ipaddress import IPv4Address, IPv4Network

import pytest

from shoal import __version__
from shoal.agent.report import Reporter, build_report, measure_rtts, path_kind
from shoal.controlclient.errors import ControlRejected, ControlUnreachable
from shoal.model.api import MAX_REPORT_PEERS, NodeReport
from shoal.model.keys import PrivateKey
from shoal.model.status import AgentState, AgentStatus, PeerStatus
from shoal.testing.clock import ManualClock

CLOCK_START = ManualClock().now()


def peer(i: int, path: str | None = "direct", handshake_s: float | None = 5.0) -> PeerStatus:
    return PeerStatus(
        name=f"h{i}",
        public_key=PrivateKey.generate().public_key(),
        mesh_ip=IPv4Address("100.64.0.0") + i,
        subnet=IPv4Network(f"10.42.{i % 250}.0/24"),
        path=path,
        last_handshake=None
        if handshake_s is None
        else CLOCK_START - timedelta(seconds=handshake_s),
    )


def status(*peers: PeerStatus) -> AgentStatus:
    return AgentStatus(state=AgentState.RUNNING, name="h0", peers=peers)


def ids(st: AgentStatus) -> dict[str, str]:
    return {p.name: "n" + p.name for p in st.peers}


@pytest.mark.parametrize(
    ("description", "age", "kind"),
    [
        ("direct", 5.0, "direct"),
        ("lan", 5.0, "direct"),
        ("public", 5.0, "direct"),
        ("relayed via 192.0.2.1:40000 (symmetric NAT)", 5.0, "relayed"),
        ("trying lan (1/2)", None, "trying"),
        ("trying lan (1/2)", 3.0, "direct"),  # the selector has not seen the handshake yet
        ("no path: x", 3.0, "direct"),
        (
            "no path: no handshake over any candidate (lan 192.0.2.2:51820), relay tried",
            None,
            "none",
        ),
        ("unknown", None, "none"),
        (None, 5.0, "direct"),
        (None, 400.0, "none"),
        (None, None, "none"),
    ],
)
def test_path_kinds(description: str | None, age: float | None, kind: str) -> None:
    assert path_kind(description, age) == kind


def test_the_report_counts_every_peer_and_details_the_worst_first() -> None:
    st = status(
        peer(1),
        peer(2, "relayed via 192.0.2.1:40000 (no direct handshake)"),
        peer(3, "no path: x", handshake_s=None),
        peer(4, "trying public (2/2)", handshake_s=900),
    )
    report = build_report(st, ids(st), {"h1": 0.4321, "h2": 3.0}, CLOCK_START)
    assert report.version == __version__
    assert [(p.peer, p.path) for p in report.peers] == [
        ("nh3", "none"),
        ("nh4", "trying"),
        ("nh2", "relayed"),
        ("nh1", "direct"),
    ]
    by_peer = {p.peer: p for p in report.peers}
    assert by_peer["nh1"].rtt_ms == 0.43 and by_peer["nh1"].handshake_age_seconds == 5.0
    assert by_peer["nh3"].handshake_age_seconds is None and by_peer["nh3"].rtt_ms is None
    assert by_peer["nh4"].handshake_age_seconds == 900
    c = report.counts
    assert (c.direct, c.relayed, c.trying, c.none) == (1, 1, 1, 1)
    assert c.rtt_median_ms == pytest.approx(1.72) and c.rtt_max_ms == 3.0


def test_a_large_mesh_sends_counts_of_all_and_details_of_a_bounded_few() -> None:
    st = status(*(peer(i) for i in range(1, 2001)), peer(5000, "no path: x", None))
    report = build_report(st, ids(st), {}, CLOCK_START)
    assert report.counts.direct == 2000 and report.counts.none == 1
    assert len(report.peers) == MAX_REPORT_PEERS
    assert report.peers[0].path == "none"  # the broken path is among the details
    assert len(report.model_dump_json()) < 16 * 1024  # the server's body limit


def test_peers_without_a_node_id_are_left_out() -> None:
    st = status(peer(1), peer(2))
    report = build_report(st, {"h1": "n1"}, {}, CLOCK_START)
    assert [p.peer for p in report.peers] == ["n1"]


async def test_rtt_of_loopback_is_measured_through_one_raw_socket() -> None:
    rtts = await measure_rtts([IPv4Address("127.0.0.1"), IPv4Address("127.0.0.2")], timeout=2)
    assert set(rtts) == {IPv4Address("127.0.0.1"), IPv4Address("127.0.0.2")}
    assert all(0 <= ms < 2000 for ms in rtts.values())
    # A documentation address nobody answers (no route here): missing, not an error.
    assert await measure_rtts([IPv4Address("192.0.2.254")], timeout=0.2) == {}
    assert await measure_rtts([]) == {}


class Sent:
    def __init__(self, fail: list[Exception] | None = None) -> None:
        self.reports: list[NodeReport] = []
        self.fail = fail or []

    async def __call__(self, report: NodeReport) -> None:
        if self.fail:
            raise self.fail.pop(0)
        self.reports.append(report)


async def test_the_reporter_pings_fresh_peers_only_and_sends_each_round() -> None:
    st = status(peer(1), peer(2, handshake_s=600), peer(3, handshake_s=None))
    pinged: list[list[IPv4Address]] = []

    async def measure(dsts: Sequence[IPv4Address]) -> Mapping[IPv4Address, float]:
        pinged.append(list(dsts))
        return {d: 1.5 for d in dsts}

    async def get_status() -> AgentStatus:
        return st

    clock = ManualClock()
    sent = Sent(fail=[ControlUnreachable("down"), ControlRejected("bad_request", "bad")])
    reporter = Reporter(get_status, lambda: ids(st), sent, clock, measure, interval=30)
    task = asyncio.create_task(reporter.run())
    try:
        await clock.advance(0)  # the first round, at once: unreachable
        await clock.advance(10)  # the second, 10 s later: refused
        await clock.advance(30)
        await clock.advance(30)
        assert len(sent.reports) == 2  # the failed rounds waited for the next
        assert pinged[0] == [IPv4Address("100.64.0.1")]  # h2's session is gone, h3 never had one
        by_peer = {p.peer: p.rtt_ms for p in sent.reports[0].peers}
        assert by_peer == {"nh1": 1.5, "nh2": None, "nh3": None}
    finally:
        task.cancel()


async def test_without_raw_sockets_the_report_goes_without_rtts() -> None:
    async def measure(dsts: Sequence[IPv4Address]) -> Mapping[IPv4Address, float]:
        raise PermissionError("Operation not permitted")

    st = status(peer(1))

    async def get_status() -> AgentStatus:
        return st

    sent = Sent()
    report = await Reporter(get_status, lambda: ids(st), sent, ManualClock(), measure).once()
    assert report.peers[0].rtt_ms is None and sent.reports == [report]
