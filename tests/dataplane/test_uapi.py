"""The pure parts of the data plane: UAPI text protocol, the device and the peer diff."""

from __future__ import annotations

from datetime import UTC, datetime
from ipaddress import IPv4Interface, IPv4Network

from shoal.dataplane.base import LivePeer, PeerChange, PeerDiff, diff_device, diff_peers
from shoal.dataplane.uapi import parse_get, render_device, render_peers, reply_errno
from shoal.model.keys import PrivateKey, PublicKey
from shoal.plan.hostconfig import InterfaceConfig, PeerConfig

K1 = PublicKey(bytes([1]) * 32)
K2 = PublicKey(bytes([2]) * 32)
K3 = PublicKey(bytes([3]) * 32)


def nets(*texts: str) -> tuple[IPv4Network, ...]:
    return tuple(IPv4Network(t) for t in texts)


GET_REPLY = (
    f"private_key={'11' * 32}\n"
    "listen_port=51820\n"
    f"public_key={K1.hex()}\n"
    f"preshared_key={'00' * 32}\n"
    "protocol_version=1\n"
    "endpoint=192.0.2.2:51820\n"
    "last_handshake_time_sec=1700000000\n"
    "last_handshake_time_nsec=500000000\n"
    "tx_bytes=92\n"
    "rx_bytes=148\n"
    "persistent_keepalive_interval=25\n"
    "allowed_ip=100.64.0.2/32\n"
    "allowed_ip=10.42.2.0/24\n"
    "allowed_ip=fd00::/64\n"
    f"public_key={K2.hex()}\n"
    "last_handshake_time_sec=0\n"
    "last_handshake_time_nsec=0\n"
    "tx_bytes=0\n"
    "rx_bytes=0\n"
    "persistent_keepalive_interval=0\n"
    "errno=0\n\n"
)


def test_parse_get() -> None:
    device = parse_get(GET_REPLY)
    assert device.private_key == PrivateKey(bytes([0x11]) * 32)
    assert device.listen_port == 51820
    assert device.peers == {
        K1: LivePeer(
            public_key=K1,
            endpoint="192.0.2.2:51820",
            allowed_ips=nets("10.42.2.0/24", "100.64.0.2/32"),
            keepalive=25,
            last_handshake=datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC),
            rx_bytes=148,
            tx_bytes=92,
        ),
        K2: LivePeer(public_key=K2, endpoint=None, allowed_ips=(), keepalive=0),
    }
    assert reply_errno(GET_REPLY) == 0
    assert reply_errno("errno=-22\n\n") == -22


def test_render() -> None:
    assert render_device(None, 51821) == "set=1\nlisten_port=51821\n\n"
    diff = PeerDiff(
        remove=(K3,),
        change=(
            PeerChange(K1, allowed_ips=nets("10.42.2.0/24", "100.64.0.2/32")),
            PeerChange(K2, endpoint="192.0.2.3:51820", keepalive=25, allowed_ips=()),
        ),
        lines=(),
    )
    # The removal last: an allowed IP moving to another peer is never without one.
    assert render_peers(diff) == (
        f"set=1\npublic_key={K1.hex()}\nreplace_allowed_ips=true\n"
        "allowed_ip=10.42.2.0/24\nallowed_ip=100.64.0.2/32\n"
        f"public_key={K2.hex()}\nendpoint=192.0.2.3:51820\npersistent_keepalive_interval=25\n"
        f"replace_allowed_ips=true\npublic_key={K3.hex()}\nremove=true\n\n"
    )


def live(key: PublicKey, endpoint: str | None, *ips: str) -> LivePeer:
    return LivePeer(public_key=key, endpoint=endpoint, allowed_ips=nets(*ips), keepalive=25)


def want(key: PublicKey, endpoint: str | None, *ips: str) -> PeerConfig:
    return PeerConfig(public_key=key, endpoint=endpoint, allowed_ips=nets(*ips))


def test_diff_touches_only_what_differs() -> None:
    current = {
        K1: live(K1, "192.0.2.2:51820", "10.42.2.0/24"),
        K2: live(K2, "192.0.2.3:51820", "10.42.3.0/24", "100.64.0.3/32"),
        K3: live(K3, None, "10.42.4.0/24"),
    }
    desired = [
        want(K1, "192.0.2.2:51820", "10.42.2.0/24"),  # unchanged
        want(K2, "192.0.2.3:51820", "100.64.0.3/32", "10.42.3.0/24"),  # same set, other order
    ]
    assert diff_peers("shoal0", current, desired, {}).remove == (K3,)
    assert not diff_peers("shoal0", {k: current[k] for k in (K1, K2)}, desired, {})

    desired.append(want(K3, "192.0.2.4:51820", "10.42.4.0/24", "100.64.0.4/32"))
    diff = diff_peers("shoal0", current, desired, {})
    assert diff.remove == ()
    assert diff.change == (
        PeerChange(
            K3, endpoint="192.0.2.4:51820", allowed_ips=nets("10.42.4.0/24", "100.64.0.4/32")
        ),
    )
    assert diff.lines == (
        f"shoal0: peer {K3.short()} endpoint None => 192.0.2.4:51820",
        f"shoal0: peer {K3.short()} allowed-ips 10.42.4.0/24 => 10.42.4.0/24, 100.64.0.4/32",
    )

    diff = diff_peers("shoal0", current, [desired[0]], {})
    assert diff.remove == tuple(sorted((K2, K3), key=str))
    assert diff.change == ()


def test_diff_adds_new_peers_after_updates() -> None:
    diff = diff_peers("shoal0", {}, [want(K1, None, "10.42.2.0/24")], {})
    assert diff.change == (PeerChange(K1, None, nets("10.42.2.0/24"), 25),)
    assert diff.lines == (
        f"shoal0: peer {K1.short()} added (endpoint None, allowed-ips 10.42.2.0/24, keepalive 25)",
    )


def test_a_roamed_endpoint_is_left_alone_until_the_netmap_changes_it() -> None:
    roamed = {K1: live(K1, "198.51.100.7:40000", "10.42.2.0/24")}
    wanted = [want(K1, "192.0.2.2:51820", "10.42.2.0/24")]
    # We set 192.0.2.2 ourselves; WireGuard moved on: not a change.
    assert not diff_peers("shoal0", roamed, wanted, {K1: "192.0.2.2:51820"})
    # The netmap now names another endpoint: set it.
    moved = [want(K1, "192.0.2.9:51820", "10.42.2.0/24")]
    diff = diff_peers("shoal0", roamed, moved, {K1: "192.0.2.2:51820"})
    assert diff.change == (PeerChange(K1, endpoint="192.0.2.9:51820"),)
    # A fresh agent (nothing set yet) converges to the netmap once.
    assert diff_peers("shoal0", roamed, wanted, {}).change == (
        PeerChange(K1, endpoint="192.0.2.2:51820"),
    )


def test_a_peer_roamed_onto_a_relay_socket_is_put_back_on_the_planned_path() -> None:
    # Packets still in the TCP relay after both sides went direct made WireGuard roam onto
    # the agent's loopback socket: the netmap says direct, so the plan wins.
    stuck = {K1: live(K1, "127.0.0.1:46588", "10.42.2.0/24")}
    wanted = [want(K1, "192.0.2.2:51820", "10.42.2.0/24")]
    diff = diff_peers("shoal0", stuck, wanted, {K1: "192.0.2.2:51820"})
    assert diff.change == (PeerChange(K1, endpoint="192.0.2.2:51820"),)
    # Planned through the relay, the loopback endpoint is the path itself.
    relayed = [want(K1, "127.0.0.1:46588", "10.42.2.0/24")]
    assert not diff_peers("shoal0", stuck, relayed, {K1: "127.0.0.1:46588"})


def test_device_diff_sets_only_what_differs() -> None:
    key = PrivateKey(bytes([7]) * 32)
    cfg = InterfaceConfig(
        name="shoal0",
        private_key=key,
        listen_port=51820,
        address=IPv4Interface("100.64.0.1/10"),
        mtu=1420,
    )
    assert not diff_device(cfg, key, 51820)
    fresh = diff_device(cfg, None, 0)
    assert (fresh.private_key, fresh.listen_port) == (key, 51820)
    assert fresh.lines == (
        f"shoal0: private key set (public {key.public_key()})",
        "shoal0: listen-port 0 => 51820",
    )
    moved = diff_device(cfg, key, 4000)
    assert (moved.private_key, moved.listen_port) == (None, 51820)
    assert moved.lines == ("shoal0: listen-port 4000 => 51820",)
