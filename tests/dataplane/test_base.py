"""The read → diff → write → log cycle of `WireGuardDataPlane`, over the in-memory backend in
both flavours (the real backends run it in test_wggo.py and the VM suite)."""

from __future__ import annotations

import logging
from ipaddress import IPv4Interface, IPv4Network

import pytest

from shoal.dataplane.base import LivePeer
from shoal.dataplane.errors import DataPlaneError
from shoal.model.keys import PrivateKey, PublicKey
from shoal.plan.hostconfig import InterfaceConfig, PeerConfig, TunnelConfig
from shoal.testing.fakes import FakeTunnel, Flavour

KEY = PrivateKey(b"\x01" * 32)
B, C = PrivateKey(b"\x02" * 32).public_key(), PrivateKey(b"\x03" * 32).public_key()
INTERFACE = InterfaceConfig(
    name="shoal0",
    private_key=KEY,
    listen_port=51820,
    address=IPv4Interface("100.64.0.1/10"),
    mtu=1420,
)


def peer(key: PublicKey, endpoint: str, *ips: str) -> PeerConfig:
    return PeerConfig(
        public_key=key, endpoint=endpoint, allowed_ips=tuple(IPv4Network(i) for i in ips)
    )


def tunnel(*peers: PeerConfig) -> TunnelConfig:
    return TunnelConfig(interface=INTERFACE, peers=peers)


@pytest.mark.parametrize("flavour", ["kernel", "wireguard-go"])
async def test_apply_converges_and_logs_each_change(
    flavour: Flavour, caplog: pytest.LogCaptureFixture
) -> None:
    plane = FakeTunnel(flavour)
    caplog.set_level(logging.INFO, logger="shoal")
    assert await plane.apply(tunnel(peer(B, "192.0.2.2:51820", "100.64.0.2/32"))) is True
    me = KEY.public_key().short()
    assert plane.dump() == (
        f"shoal0 {flavour} up mtu 1420 address 100.64.0.1/10 port 51820 key {me}\n"
        f"shoal0 peer {B.short()} endpoint 192.0.2.2:51820 allowed-ips 100.64.0.2/32 keepalive 25"
    )
    assert caplog.messages == [
        f"shoal0: private key set (public {KEY.public_key()})",
        "shoal0: listen-port 0 => 51820",
        f"shoal0: peer {B.short()} added (endpoint 192.0.2.2:51820, allowed-ips 100.64.0.2/32, "
        "keepalive 25)",
    ]
    caplog.clear()
    assert await plane.apply(tunnel(peer(B, "192.0.2.2:51820", "100.64.0.2/32"))) is False
    assert caplog.messages == []

    await plane.apply(
        tunnel(
            peer(B, "192.0.2.2:51820", "100.64.0.2/32", "10.42.2.0/24"),
            peer(C, "192.0.2.3:51820", "100.64.0.3/32"),
        )
    )
    # One line per change, by peer key (C's sorts first).
    assert caplog.messages == [
        f"shoal0: peer {C.short()} added (endpoint 192.0.2.3:51820, allowed-ips 100.64.0.3/32, "
        "keepalive 25)",
        f"shoal0: peer {B.short()} allowed-ips 100.64.0.2/32 => 10.42.2.0/24, 100.64.0.2/32",
    ]
    assert await plane.apply(tunnel(peer(C, "192.0.2.3:51820", "100.64.0.3/32"))) is True
    assert [p.public_key for p in await plane.stats()] == [C]
    assert await plane.teardown() is True
    assert plane.dump() == ""
    assert await plane.teardown() is False


async def test_a_roamed_peer_keeps_its_endpoint_until_the_netmap_changes_it() -> None:
    plane = FakeTunnel()
    cfg = tunnel(peer(B, "192.0.2.2:51820", "100.64.0.2/32"))
    await plane.apply(cfg)
    # WireGuard followed the peer behind a NAT to another address.
    device = plane.wireguard.links["shoal0"]
    device.peers[B] = LivePeer(B, "198.51.100.9:40000", device.peers[B].allowed_ips, 25)
    assert await plane.apply(cfg) is False
    assert "endpoint 198.51.100.9:40000" in plane.dump()
    await plane.apply(tunnel(peer(B, "192.0.2.22:51820", "100.64.0.2/32")))
    assert "endpoint 192.0.2.22:51820" in plane.dump()


async def test_a_crashed_wireguard_go_is_recreated_whole() -> None:
    plane = FakeTunnel("wireguard-go")
    cfg = tunnel(peer(B, "192.0.2.2:51820", "100.64.0.2/32"))
    await plane.apply(cfg)
    want = plane.dump()
    plane.wireguard.crash()
    with pytest.raises(DataPlaneError, match="does not answer"):
        await plane.stats()
    assert await plane.apply(cfg) is True
    assert plane.dump() == want


async def test_a_plane_keeps_only_its_own_interface() -> None:
    with pytest.raises(DataPlaneError, match="keeps shoal0, not wg9"):
        await FakeTunnel().apply(
            TunnelConfig(interface=INTERFACE.model_copy(update={"name": "wg9"}), peers=())
        )
