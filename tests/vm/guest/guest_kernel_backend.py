"""`KernelWireGuard` against the real wireguard module (runs inside the VM, as root): the
tunnel adapter's `apply` (link, device and peer diff), `stats` and `teardown` on the kernel
backend.

State is read back with the real tools (`wg show dump`, `ip -j link`), not through the backend:
the backend must agree with what the kernel holds. The second device, for the handshake, lives
in a network namespace of its own, cabled to this one by a veth pair and set up by hand with
`ip` and `wg`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from shoal.dataplane.errors import DataPlaneError
from shoal.dataplane.kernel import KernelWireGuard
from shoal.model.keys import PrivateKey, PublicKey
from shoal.plan.hostconfig import InterfaceConfig, PeerConfig, TunnelConfig

IFNAME = "shoalk0"
PEER_NS = "kwg-peer"
HERE, THERE = "198.51.100.1", "198.51.100.2"  # the veth pair: this namespace, PEER_NS


@dataclass(frozen=True)
class WgPeer:
    """One peer line of `wg show IF dump`."""

    endpoint: str | None
    allowed_ips: tuple[str, ...]
    latest_handshake: int
    rx: int
    tx: int
    keepalive: int


@dataclass(frozen=True)
class WgDevice:
    private_key: str
    listen_port: int
    peers: dict[str, WgPeer]


def sh(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr}"
    return proc.stdout


def wg_dump(ifname: str = IFNAME) -> WgDevice:
    lines = [line.split("\t") for line in sh("wg", "show", ifname, "dump").splitlines()]
    private_key, _public, port, _fwmark = lines[0]
    peers = {
        key: WgPeer(
            endpoint=None if endpoint == "(none)" else endpoint,
            allowed_ips=tuple(sorted(ips.split(","))) if ips != "(none)" else (),
            latest_handshake=int(handshake),
            rx=int(rx),
            tx=int(tx),
            keepalive=0 if keepalive == "off" else int(keepalive),
        )
        for key, _psk, endpoint, ips, handshake, rx, tx, keepalive in lines[1:]
    }
    return WgDevice(private_key, int(port), peers)


def link_kind(ifname: str) -> str | None:
    proc = subprocess.run(["ip", "-d", "-j", "link", "show", ifname], capture_output=True)
    if proc.returncode != 0:
        return None
    kind: str = json.loads(proc.stdout)[0]["linkinfo"]["info_kind"]
    return kind


def interface(port: int = 51820, key: PrivateKey | None = None) -> InterfaceConfig:
    return InterfaceConfig(
        name=IFNAME,
        private_key=key or PrivateKey.generate(),
        listen_port=port,
        address=IPv4Interface("10.99.0.1/24"),
        mtu=1420,
    )


def peer(key: PublicKey, endpoint: str | None, *ips: str, keepalive: int = 25) -> PeerConfig:
    return PeerConfig(
        public_key=key,
        endpoint=endpoint,
        allowed_ips=tuple(IPv4Network(ip) for ip in ips),
        keepalive=keepalive,
    )


def tunnel(cfg: InterfaceConfig, *peers: PeerConfig) -> TunnelConfig:
    return TunnelConfig(interface=cfg, peers=tuple(sorted(peers, key=lambda p: str(p.public_key))))


@pytest.fixture
async def plane() -> AsyncIterator[KernelWireGuard]:
    backend = KernelWireGuard(IFNAME)
    yield backend
    await backend.teardown()


@pytest.fixture
def peer_ns() -> Iterator[str]:
    """PEER_NS cabled to this namespace: HERE on kv0, THERE on kv1 inside."""
    sh("ip", "netns", "add", PEER_NS)
    try:
        sh("ip", "link", "add", "kv0", "type", "veth", "peer", "name", "kv1", "netns", PEER_NS)
        sh("ip", "addr", "add", f"{HERE}/24", "dev", "kv0")
        sh("ip", "link", "set", "kv0", "up")
        sh("ip", "-n", PEER_NS, "addr", "add", f"{THERE}/24", "dev", "kv1")
        sh("ip", "-n", PEER_NS, "link", "set", "kv1", "up")
        sh("ip", "-n", PEER_NS, "link", "set", "lo", "up")
        yield PEER_NS
    finally:
        subprocess.run(["ip", "netns", "del", PEER_NS], check=False)
        subprocess.run(["ip", "link", "del", "kv0"], capture_output=True, check=False)


async def test_apply_creates_a_kernel_link_once_and_reconfigures_it(
    plane: KernelWireGuard,
) -> None:
    cfg = interface()
    assert plane.name == "kernel"
    assert await plane.apply(tunnel(cfg)) is True
    assert link_kind(IFNAME) == "wireguard"
    device = wg_dump()
    assert (device.private_key, device.listen_port) == (cfg.private_key.to_base64(), 51820)
    addrs = json.loads(sh("ip", "-j", "addr", "show", IFNAME))[0]
    assert addrs["mtu"] == 1420 and "UP" in addrs["flags"]
    assert [(a["local"], a["prefixlen"]) for a in addrs["addr_info"]] == [("10.99.0.1", 24)]

    assert await plane.apply(tunnel(cfg)) is False  # nothing to do: nothing done

    moved = interface(port=51999, key=cfg.private_key)
    assert await plane.apply(tunnel(moved)) is True
    assert wg_dump().listen_port == 51999
    rekeyed = interface(port=51999)
    assert await plane.apply(tunnel(rekeyed)) is True
    assert wg_dump().private_key == rekeyed.private_key.to_base64()
    assert await plane.apply(tunnel(rekeyed)) is False


async def test_apply_adds_changes_and_removes_only_the_peers_that_differ(
    plane: KernelWireGuard,
) -> None:
    cfg = interface()
    a, b = PrivateKey.generate().public_key(), PrivateKey.generate().public_key()
    want = tunnel(
        cfg,
        peer(a, "192.0.2.11:51820", "10.42.1.0/24", "100.64.0.2/32"),
        peer(b, "192.0.2.12:51820", "10.42.2.0/24"),
    )
    assert await plane.apply(want) is True
    peers = wg_dump().peers
    assert peers[str(a)].endpoint == "192.0.2.11:51820"
    assert peers[str(a)].allowed_ips == ("10.42.1.0/24", "100.64.0.2/32")
    assert peers[str(a)].keepalive == 25
    assert peers[str(b)].allowed_ips == ("10.42.2.0/24",)
    assert await plane.apply(want) is False

    # a's subnet grows, b moves and slows its keepalive.
    a_grown = peer(a, "192.0.2.11:51820", "10.42.1.0/24", "10.42.9.0/24", "100.64.0.2/32")
    changed = tunnel(cfg, a_grown, peer(b, "192.0.2.99:51820", "10.42.2.0/24", keepalive=10))
    assert await plane.apply(changed) is True
    peers = wg_dump().peers
    assert peers[str(a)].allowed_ips == ("10.42.1.0/24", "10.42.9.0/24", "100.64.0.2/32")
    assert (peers[str(b)].endpoint, peers[str(b)].keepalive) == ("192.0.2.99:51820", 10)
    assert await plane.apply(changed) is False

    assert await plane.apply(tunnel(cfg, a_grown)) is True  # b leaves
    assert set(wg_dump().peers) == {str(a)}
    assert await plane.apply(tunnel(cfg)) is True
    assert wg_dump().peers == {}
    assert await plane.apply(tunnel(cfg)) is False


async def test_stats_report_a_handshake_between_two_namespaces(
    plane: KernelWireGuard, peer_ns: str, tmp_path: Path
) -> None:
    here = interface()
    there_key = PrivateKey.generate()
    await plane.apply(tunnel(here, peer(there_key.public_key(), f"{THERE}:51821", "10.99.0.2/32")))
    ns = ["ip", "netns", "exec", peer_ns]
    sh(*ns, "ip", "link", "add", "wg1", "type", "wireguard")
    key_file = tmp_path / "there.key"
    key_file.write_text(there_key.to_base64() + "\n")
    key_file.chmod(0o600)
    sh(*ns, "wg", "set", "wg1", "private-key", str(key_file), "listen-port", "51821",
       "peer", str(here.private_key.public_key()), "endpoint", f"{HERE}:51820",
       "allowed-ips", "10.99.0.1/32")  # fmt: skip
    sh(*ns, "ip", "addr", "add", "10.99.0.2/24", "dev", "wg1")
    sh(*ns, "ip", "link", "set", "wg1", "up")

    sh("ping", "-c", "3", "-W", "5", "10.99.0.2")

    [stats] = await plane.stats()
    assert stats.public_key == there_key.public_key()
    assert stats.endpoint == f"{THERE}:51821"
    assert stats.last_handshake is not None
    assert stats.rx_bytes > 0 and stats.tx_bytes > 0
    live = wg_dump().peers[str(there_key.public_key())]
    assert (stats.rx_bytes, stats.tx_bytes) == (live.rx, live.tx)
    assert int(stats.last_handshake.timestamp()) == live.latest_handshake


async def test_teardown_removes_the_link_once(plane: KernelWireGuard) -> None:
    await plane.apply(tunnel(interface()))
    assert await plane.teardown() is True
    assert link_kind(IFNAME) is None
    assert await plane.teardown() is False
    with pytest.raises(DataPlaneError, match=IFNAME):
        await plane.stats()
