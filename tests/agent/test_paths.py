"""Path selection: which endpoint of each peer to use, in what order, when to move on, and
what `shoal status` says about it."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from shoal.agent.paths import PathSelector, candidates
from shoal.model.keys import PrivateKey
from shoal.model.netmap import Endpoint, EndpointKind, Node, nat_kind


def ep(text: str, kind: EndpointKind | None) -> Endpoint:
    host, port = text.split(":")
    return Endpoint(host=IPv4Address(host), port=int(port), kind=kind)


def node(name: str, *endpoints: Endpoint) -> Node:
    i = int(name[1:])
    return Node(
        id=f"n{i}",
        name=name,
        public_key=PrivateKey.generate().public_key(),
        mesh_ip=IPv4Address(f"100.64.0.{i}"),
        subnet=IPv4Network(f"10.42.{i}.0/24"),
        endpoints=endpoints,
    )


PUBLIC = node("h1", ep("192.0.2.11:51820", "public"))
EASY_A = node("h2", ep("192.168.2.2:51820", "lan"), ep("192.0.2.12:51820", "public"))
EASY_B = node("h3", ep("192.168.2.3:51820", "lan"), ep("192.0.2.12:1024", "public"))
EASY_C = node("h4", ep("192.168.4.4:51820", "lan"), ep("192.0.2.14:51820", "public"))
HARD_A = node("h5", ep("192.168.5.5:51820", "lan"), ep("192.0.2.15:40001", "symmetric"))
HARD_B = node("h6", ep("192.168.6.6:51820", "lan"), ep("192.0.2.16:40002", "symmetric"))
BLOCKED = node("h7", ep("192.168.7.7:51820", "lan"))
OLD = node("h8", ep("192.0.2.18:51820", None))


def order(me: Node, peer: Node) -> list[tuple[str, str]]:
    cands, _reason = candidates(me, peer)
    return [(str(c.endpoint), c.why) for c in cands]


def test_behind_one_nat_the_lan_comes_first() -> None:
    assert order(EASY_A, EASY_B) == [("192.168.2.3:51820", "lan")]


def test_across_nats_the_public_mapping_comes_first_then_the_lan() -> None:
    assert order(EASY_A, EASY_C) == [("192.0.2.14:51820", "public"), ("192.168.4.4:51820", "lan")]
    assert order(EASY_A, PUBLIC) == [("192.0.2.11:51820", "direct")]
    assert order(PUBLIC, HARD_A)[0] == ("192.0.2.15:40001", "public")
    assert order(PUBLIC, OLD) == [("192.0.2.18:51820", "direct")]


def test_no_path_is_explained() -> None:
    assert candidates(HARD_A, HARD_B) == ((), "symmetric NAT on both sides")
    assert candidates(PUBLIC, node("h9")) == ((), "h9 has no endpoint yet")
    paths = PathSelector()
    paths.update(HARD_A, [HARD_B], None, now=0.0)
    assert paths.path(HARD_B.public_key).description == (
        "no path: symmetric NAT on both sides, relay not available"
    )
    # UDP blocked: only a LAN address another network cannot reach; tried, last.
    assert order(PUBLIC, BLOCKED) == [("192.168.7.7:51820", "lan")]


def test_a_candidate_without_handshake_is_replaced_after_the_switch_time() -> None:
    paths = PathSelector(switch_seconds=6)
    key = EASY_C.public_key
    assert paths.update(EASY_A, [EASY_C], None, now=100.0)  # a new peer: its first candidate
    assert paths.endpoint(key) == "192.0.2.14:51820"
    assert paths.path(key).description == "trying public (1/2)"
    assert not paths.update(EASY_A, [EASY_C], {key: None}, now=105.0)
    assert paths.update(EASY_A, [EASY_C], {key: None}, now=106.0)
    assert paths.endpoint(key) == "192.168.4.4:51820"
    assert paths.update(EASY_A, [EASY_C], {key: None}, now=112.0)  # round robin
    assert paths.path(key).description.startswith("no path: no handshake over any candidate")
    # A handshake keeps the current one, and says how it is reached.
    assert not paths.update(EASY_A, [EASY_C], {key: 111.0}, now=130.0)
    assert paths.endpoint(key) == "192.0.2.14:51820"
    assert paths.path(key).description == "public"


def test_a_changed_netmap_starts_over_and_a_removed_peer_is_forgotten() -> None:
    paths = PathSelector(switch_seconds=6)
    paths.update(EASY_A, [EASY_C], None, now=0.0)
    paths.update(EASY_A, [EASY_C], {EASY_C.public_key: None}, now=10.0)
    moved = EASY_C.model_copy(update={"endpoints": (ep("192.0.2.14:2000", "public"),)})
    assert paths.update(EASY_A, [moved], None, now=11.0)
    assert paths.endpoint(EASY_C.public_key) == "192.0.2.14:2000"
    paths.update(EASY_A, [], None, now=12.0)
    assert paths.endpoints() == {}
    assert paths.path(EASY_C.public_key).description == "unknown"


def test_a_single_candidate_without_handshake_ends_as_no_path() -> None:
    paths = PathSelector(switch_seconds=6)
    key = BLOCKED.public_key
    paths.update(PUBLIC, [BLOCKED], None, now=0.0)
    assert not paths.update(PUBLIC, [BLOCKED], {key: None}, now=7.0)  # nothing else to try
    assert paths.path(key).description == (
        "no path: no handshake over any candidate (lan 192.168.7.7:51820), relay not available"
    )


def test_a_relay_is_asked_for_when_nothing_direct_is_left_and_used_last() -> None:
    paths = PathSelector(switch_seconds=6)
    hard, blocked = HARD_B.public_key, BLOCKED.public_key
    paths.update(HARD_A, [HARD_B], None, now=0.0)
    assert paths.needs_relay(hard, now=0.0)
    paths.set_relay(hard, ep("192.0.2.2:40000", None), now=0.0)
    assert not paths.needs_relay(hard, now=0.5)
    assert paths.update(HARD_A, [HARD_B], None, now=1.0)
    assert paths.endpoint(hard) == "192.0.2.2:40000"
    paths.update(HARD_A, [HARD_B], {hard: 2.0}, now=3.0)
    assert paths.path(hard).description == (
        "relayed via udp 192.0.2.2:40000 (symmetric NAT on both sides)"
    )
    # A peer with a direct candidate gets the relay only once that one failed.
    paths.update(PUBLIC, [BLOCKED], None, now=0.0)
    assert not paths.needs_relay(blocked, now=0.0)
    paths.update(PUBLIC, [BLOCKED], {blocked: None}, now=7.0)
    assert paths.needs_relay(blocked, now=7.0)
    paths.set_relay(blocked, ep("192.0.2.2:40002", None), now=7.0)
    paths.update(PUBLIC, [BLOCKED], None, now=8.0)
    assert paths.endpoint(blocked) == "192.168.7.7:51820"  # starts over, relay last
    paths.update(PUBLIC, [BLOCKED], {blocked: None}, now=14.0)
    assert paths.endpoint(blocked) == "192.0.2.2:40002"
    paths.update(PUBLIC, [BLOCKED], {blocked: None}, now=20.0)
    assert paths.path(blocked).description.endswith("relayed 192.0.2.2:40002), relay tried")
    # A relay that failed too is asked for again a minute later (new ports after a restart).
    assert not paths.needs_relay(blocked, now=30.0)
    assert paths.needs_relay(blocked, now=67.0)


def test_a_symmetric_peer_gets_no_endpoint_so_wireguard_follows_its_handshakes() -> None:
    paths = PathSelector(switch_seconds=6)
    key = HARD_A.public_key
    paths.update(PUBLIC, [HARD_A], None, now=0.0)
    assert paths.endpoint(key) is None  # the server's port would be wrong for us
    paths.update(PUBLIC, [HARD_A], {key: 1.0}, now=2.0)
    assert paths.path(key).description == "public"


NO_UDP = node("h10", ep("192.168.10.10:51820", None), ep("192.0.2.2:443", "relay"))
NO_UDP_2 = node("h11", ep("192.168.11.11:51820", None), ep("192.0.2.2:443", "relay"))


def test_a_host_without_udp_is_reached_only_through_its_tcp_relay() -> None:
    # From either side, and whatever the other side's NAT: UDP cannot work.
    assert order(PUBLIC, NO_UDP) == [("192.0.2.2:443", "relayed")]
    assert order(NO_UDP, HARD_A) == [("192.0.2.2:443", "relayed")]
    assert candidates(NO_UDP, NO_UDP_2)[1] == "UDP blocked at h10 and h11"
    loopback = Endpoint(host=IPv4Address("127.0.0.1"), port=40100)
    asked: list[tuple[str, str]] = []

    def tcp_local(peer: object, relay: Endpoint) -> Endpoint:
        asked.append((str(peer)[:4], str(relay)))
        return loopback

    paths = PathSelector(tcp_local=tcp_local)
    paths.update(PUBLIC, [NO_UDP], None, now=0.0)
    # WireGuard is given the loopback endpoint that carries the datagrams over the relay.
    assert paths.endpoint(NO_UDP.public_key) == "127.0.0.1:40100"
    assert set(asked) == {(str(NO_UDP.public_key)[:4], "192.0.2.2:443")}
    paths.update(PUBLIC, [NO_UDP], {NO_UDP.public_key: 9.0}, now=10.0)
    assert paths.path(NO_UDP.public_key).description == (
        "relayed via tcp 192.0.2.2:443 (UDP blocked at h10)"
    )
    # Failing handshakes never send it to the UDP relay: that cannot help either.
    paths.update(PUBLIC, [NO_UDP], {NO_UDP.public_key: None}, now=400.0)
    assert not paths.needs_relay(NO_UDP.public_key, now=400.0)
    assert list(paths.tcp_relayed()) == [NO_UDP.public_key]


def test_this_hosts_own_probe_outranks_its_lagging_netmap_entry() -> None:
    paths = PathSelector(
        tcp_local=lambda _peer, _relay: Endpoint(host=IPv4Address("127.0.0.1"), port=1)
    )
    paths.update(EASY_A, [PUBLIC], None, now=0.0)
    assert paths.endpoint(PUBLIC.public_key) == "192.0.2.11:51820"
    # The probe found no UDP: the TCP relay at once, before the netmap says so.
    assert paths.set_own(NO_UDP.endpoints)
    assert not paths.set_own(NO_UDP.endpoints)
    paths.update(EASY_A, [PUBLIC], None, now=1.0)
    assert paths.endpoint(PUBLIC.public_key) == "127.0.0.1:1"
    # UDP back: direct again.
    paths.set_own(EASY_A.endpoints)
    paths.update(NO_UDP, [PUBLIC], None, now=2.0)
    assert paths.endpoint(PUBLIC.public_key) == "192.0.2.11:51820"


def test_each_nodes_nat_kind_reads_off_the_endpoints_its_discovery_reported() -> None:
    assert [nat_kind(n.endpoints) for n in (PUBLIC, EASY_A, HARD_A, NO_UDP, OLD)] == [
        "none",
        "easy",
        "hard",
        "udp-blocked",
        None,  # an unverified address: no probe answer yet, or an agent from before discovery
    ]
