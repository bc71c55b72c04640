"""Traversal's pure and state-keeping parts: endpoint discovery's guards (a server that
answers neither UDP nor TCP is down, not this host's UDP blocked; UDP that worked is judged
blocked only by discoveries in a row), the nearest healthy TCP
relay, and how `shoal status` shows each peer's path (the rest of traversal runs end to end in
tests/e2e/test_nat.py)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from shoal.agent import traversal
from shoal.agent.endpoints import Discovery
from shoal.agent.paths import PathSelector
from shoal.agent.tcprelay import RelayTarget, TcpRelayClient
from shoal.agent.traversal import (
    BLOCKED_CONFIRMATIONS,
    RELAYS_SECONDS,
    Traversal,
    relay_endpoint,
    relay_target,
    tcp_reachable,
)
from shoal.controlclient.errors import ControlUnreachable
from shoal.model.api import RelayGrant, RelayList, RelayServer
from shoal.model.keys import PrivateKey
from shoal.model.netmap import Endpoint, NetworkMap, Node
from shoal.model.status import RelayUse
from shoal.testing import builders
from shoal.testing.clock import ManualClock
from shoal.testing.fakes import FakeTunnel

LOOPBACK = IPv4Address("127.0.0.1")


async def test_a_listening_server_is_reachable_a_closed_port_is_not() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        assert await tcp_reachable(f"https://127.0.0.1:{port}", LOOPBACK)
    assert not await tcp_reachable(f"https://127.0.0.1:{port}", LOOPBACK, timeout=1)


async def test_the_first_server_of_a_list_is_tried() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        urls = f"https://127.0.0.1:{port},https://127.0.0.2:{port}"
        assert await tcp_reachable(urls, LOOPBACK)


# -- the nearest healthy relay -------------------------------------------------------------

SERVER = IPv4Address("192.0.2.2")
NEAR = RelayServer(host=IPv4Address("198.51.100.7"), port=443, public_key=None, cert_sha256=None)
FAR = RelayServer(host=IPv4Address("203.0.113.9"), port=443, public_key=None, cert_sha256=None)
OWN = RelayServer(host=None, port=443, public_key=None, cert_sha256=None)  # the server's own


def target(relay: RelayServer) -> RelayTarget:
    return relay_target((relay,), SERVER, Endpoint(host=relay.host or SERVER, port=relay.port))


def at(relay: RelayServer) -> Endpoint:
    return Endpoint(host=relay.host or SERVER, port=relay.port, kind="relay")


def never(_t: RelayTarget) -> bool:
    return False


def test_the_relay_with_the_lowest_connect_time_is_chosen_not_the_first_listed() -> None:
    relays = (OWN, FAR, NEAR)
    rtts = {target(OWN): 80.0, target(FAR): 140.0, target(NEAR): 12.0}
    assert relay_endpoint(relays, SERVER, never, rtts) == at(NEAR)
    # Within jitter of each other (one machine room): the server's order of preference.
    assert relay_endpoint(relays, SERVER, never, {target(OWN): 0.12, target(NEAR): 0.08}) == (
        at(OWN)
    )
    # Not measured yet: the server's order of preference.
    assert relay_endpoint(relays, SERVER, never) == at(OWN)
    # A relay that did not accept is not healthy, however it was listed.
    assert relay_endpoint(relays, SERVER, never, {**rtts, target(NEAR): None}) == at(OWN)


def test_a_dying_relay_fails_over_to_the_next_nearest_and_none_left_keeps_the_first() -> None:
    relays = (OWN, FAR, NEAR)
    rtts = {target(OWN): 80.0, target(FAR): 140.0, target(NEAR): 12.0}
    down = {target(NEAR)}
    assert relay_endpoint(relays, SERVER, down.__contains__, rtts, at(NEAR)) == at(OWN)
    everything = set(map(target, relays))
    assert relay_endpoint(relays, SERVER, everything.__contains__, rtts, at(NEAR)) == at(OWN)
    assert relay_endpoint((), SERVER, never, rtts) is None


def test_the_home_relay_is_kept_until_another_is_clearly_nearer() -> None:
    relays = (OWN, NEAR)
    # Jitter (a loaded host): 9 ms against 6 ms is no reason to move every peer's path.
    assert relay_endpoint(
        relays, SERVER, never, {target(OWN): 9.0, target(NEAR): 6.0}, at(OWN)
    ) == (at(OWN))
    # Half the time but only 4 ms nearer: still kept.
    assert relay_endpoint(
        relays, SERVER, never, {target(OWN): 8.0, target(NEAR): 4.0}, at(OWN)
    ) == (at(OWN))
    # Another region: 80 ms against 12 ms.
    assert relay_endpoint(
        relays, SERVER, never, {target(OWN): 80.0, target(NEAR): 12.0}, at(OWN)
    ) == (at(NEAR))


# -- a Traversal on fakes ------------------------------------------------------------------

KEY = PrivateKey(bytes([1]) * 32)
STANDALONE = RelayServer(host=SERVER, port=80, public_key=None, cert_sha256=None)


class Harness:
    """A Traversal whose server, relays and round trips are the test's: `rtts` answers the
    measurements (by relay port), `measured` records them."""

    def __init__(self, netmap: NetworkMap) -> None:
        self.netmap = netmap
        self.clock = ManualClock()
        self.relays: tuple[RelayServer, ...] = (OWN, STANDALONE)
        self.rtts: dict[int, float | None] = {443: 20.0, 80: 3.0}
        self.measured: list[str] = []
        self.tcp = TcpRelayClient(
            listen_port=51820,
            ssl_context=ssl.create_default_context,
            private_key=lambda: KEY,
            server_mac_key=self._no_key,
        )
        self.paths = PathSelector(tcp_local=lambda peer, ep: self.traversal.tcp_local(peer, ep))
        self.traversal = Traversal(
            server_url=f"https://{SERVER}:8443",
            listen_port=51820,
            local=lambda: None,
            node_key=KEY.public_key,
            mac_key=self._no_key,
            report=self._ignore,
            relay=self._grant,
            relays=self._list,
            netmap=lambda: self.netmap,
            replan=lambda: None,
            tunnel=FakeTunnel(),
            clock=self.clock,
            paths=self.paths,
            tcp_relay=self.tcp,
            measure=self._measure,
        )
        self.traversal.server = SERVER

    async def _no_key(self) -> bytes:
        raise ControlUnreachable("not in this test")

    async def _ignore(self, _endpoints: tuple[Endpoint, ...]) -> None:
        return None

    async def _grant(self, _peer: str) -> RelayGrant:
        return RelayGrant(port=40000)

    async def _list(self) -> RelayList:
        return RelayList(relays=self.relays)

    async def _measure(self, relay: RelayTarget) -> float | None:
        self.measured.append(str(relay))
        return self.rtts[relay.port]

    def handshake(self, peer: Node, at: float) -> None:
        me = self.netmap.self_node
        self.paths.update(me, self.netmap.peers, {peer.public_key: at}, now=at + 1)


@pytest.fixture
def lonely() -> Iterator[Harness]:
    h = Harness(builders.netmap(1, [2]))
    yield h
    h.tcp.close()


async def test_relays_are_timed_every_30_seconds_and_at_once_when_the_list_changes(
    lonely: Harness,
) -> None:
    t = lonely.traversal
    await t.refresh_relays()
    await t.measure_relays()
    assert sorted(lonely.measured) == ["192.0.2.2:443", "192.0.2.2:80"]
    nearest = relay_endpoint(t.relays, SERVER, lonely.tcp.failing, t.rtts)
    assert nearest == Endpoint(host=SERVER, port=80, kind="relay")  # the standalone, 3 ms
    await lonely.clock.advance(RELAYS_SECONDS / 2)
    await t.measure_relays()
    assert len(lonely.measured) == 2
    lonely.relays = (OWN,)  # the standalone was removed from the server
    await lonely.clock.advance(RELAYS_SECONDS)
    await t.refresh_relays()
    await t.measure_relays()
    assert lonely.measured[2:] == ["192.0.2.2:443"]
    assert relay_endpoint(t.relays, SERVER, lonely.tcp.failing, t.rtts) == at(OWN)


HARD_ME = builders.node(1).model_copy(
    update={"endpoints": (Endpoint(host=IPv4Address("198.51.100.1"), port=1, kind="symmetric"),)}
)
HARD_PEER = builders.node(2).model_copy(
    update={"endpoints": (Endpoint(host=IPv4Address("198.51.100.2"), port=2, kind="symmetric"),)}
)
BLOCKED_PEER = builders.node(3).model_copy(
    update={
        "endpoints": (
            Endpoint(host=IPv4Address("192.168.3.3"), port=51820),
            Endpoint(host=SERVER, port=80, kind="relay"),
        )
    }
)


async def test_status_names_the_udp_relay_on_the_server_and_why() -> None:
    h = Harness(
        builders.netmap(1, []).model_copy(update={"self_node": HARD_ME, "peers": (HARD_PEER,)})
    )
    try:
        peer = HARD_PEER.public_key
        h.paths.update(HARD_ME, [HARD_PEER], None, now=0.0)
        assert h.paths.needs_relay(peer, now=0.0)
        h.paths.set_relay(peer, Endpoint(host=SERVER, port=40000), now=0.0)
        h.paths.update(HARD_ME, [HARD_PEER], None, now=1.0)
        # A handshake over the relay being tried, before the selector saw it: relayed.
        early = h.traversal.route(peer, "192.0.2.2:40000", fresh=True)
        assert (early.via, early.endpoint, early.why) == (
            "relayed",
            "192.0.2.2:40000",
            "symmetric NAT on both sides",
        )
        assert h.traversal.route(peer, None, fresh=False).via == "trying"
        h.handshake(HARD_PEER, 2.0)
        route = h.traversal.route(peer, "192.0.2.2:40000", fresh=True)
        assert route.via == "relayed"
        assert route.endpoint == "192.0.2.2:40000"
        assert route.relay == RelayUse(transport="udp", address="192.0.2.2:40000", on_server=True)
        assert route.why == "symmetric NAT on both sides"
    finally:
        h.tcp.close()


async def test_status_shows_a_tcp_relayed_peer_at_its_relay_never_at_the_loopback_socket() -> None:
    h = Harness(builders.netmap(1, []).model_copy(update={"peers": (BLOCKED_PEER,)}))
    try:
        await h.traversal.refresh_relays()
        peer = BLOCKED_PEER.public_key
        h.paths.update(h.netmap.self_node, [BLOCKED_PEER], None, now=0.0)
        loopback = h.paths.endpoint(peer)
        assert loopback is not None and loopback.startswith("127.0.0.1:")
        # Before the selector saw a handshake, WireGuard already sends to the loopback socket.
        early = h.traversal.route(peer, loopback, fresh=True)
        assert (early.via, early.endpoint) == ("relayed", "192.0.2.2:80")
        h.handshake(BLOCKED_PEER, 2.0)
        route = h.traversal.route(peer, loopback, fresh=True)
        assert route.via == "relayed"
        assert route.endpoint == "192.0.2.2:80"
        # The standalone relay on the server's address is not the server's own relay.
        assert route.relay == RelayUse(
            transport="tcp", address="192.0.2.2:80", on_server=False, local=loopback
        )
        assert route.why == "UDP blocked at h3"
    finally:
        h.tcp.close()


async def test_status_shows_a_direct_peer_direct_once_its_handshake_is_fresh(
    lonely: Harness,
) -> None:
    peer = lonely.netmap.peers[0]
    lonely.paths.update(lonely.netmap.self_node, [peer], None, now=0.0)
    trying = lonely.traversal.route(peer.public_key, None, fresh=False)
    assert (trying.via, trying.endpoint, trying.relay) == ("trying", "192.0.2.12:51820", None)
    # The selector learns of the handshake a tick late; WireGuard's endpoint is the truth.
    route = lonely.traversal.route(peer.public_key, "192.0.2.12:51820", fresh=True)
    assert (route.via, route.endpoint, route.relay, route.why) == (
        "direct",
        "192.0.2.12:51820",
        None,
        None,
    )
    # A loopback socket that is not (or no longer) the agent's is never shown as the peer's.
    stale = lonely.traversal.route(peer.public_key, "127.0.0.1:40999", fresh=True)
    assert stale.endpoint == "192.0.2.12:51820"


def discovering(h: Harness, monkeypatch: pytest.MonkeyPatch, found: list[Discovery]) -> None:
    """Each discovery of `h` finds the next of `found`; the server answers TCP."""

    async def discover(*_args: object) -> Discovery:
        return found.pop(0)

    async def reachable(*_args: object, **_kwargs: object) -> bool:
        return True

    async def key() -> bytes:
        return bytes(32)

    monkeypatch.setattr(traversal, "discover", discover)
    monkeypatch.setattr(traversal, "tcp_reachable", reachable)
    monkeypatch.setattr(h.traversal, "_mac_key", key)


async def test_udp_blocked_where_it_worked_is_believed_on_the_second_discovery_in_a_row(
    lonely: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server coming back answers TCP before its probe responder listens: one unanswered
    # probe must not move every peer onto a TCP relay.
    own = Endpoint(host=IPv4Address("192.0.2.11"), port=51820)
    answered = Discovery(local=own, mapped=((own.host, own.port), (own.host, own.port)))
    silent = Discovery(local=own, mapped=(None, None))
    discovering(lonely, monkeypatch, [answered, silent, answered, silent, silent, silent])
    verdicts = []
    for _ in range(6):
        await lonely.traversal.discover_and_report()
        verdicts.append(lonely.traversal.nat)
    assert BLOCKED_CONFIRMATIONS == 2
    assert verdicts == ["none", "none", "none", "none", "udp-blocked", "udp-blocked"]
    assert any(e.kind == "relay" for e in lonely.paths.own() or ())


async def test_a_first_discovery_without_udp_is_taken_at_once(
    lonely: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    discovering(lonely, monkeypatch, [Discovery(local=None, mapped=(None, None))])
    await lonely.traversal.discover_and_report()
    assert lonely.traversal.nat == "udp-blocked"
