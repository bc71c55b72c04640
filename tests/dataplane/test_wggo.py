"""wireguard-go for real: two hosts (network namespaces) joined by a veth, a mesh between them.

Each `ns.run` forks a fresh process with a fresh `WireGuardGo`, the way an agent restart does:
the interface and wireguard-go must survive it untouched.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
from datetime import datetime
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from shoal.dataplane import PeerStats, WireGuardGo
from shoal.model.keys import PrivateKey, PublicKey
from shoal.plan.hostconfig import InterfaceConfig, PeerConfig, TunnelConfig
from tests.hostnet.netns import Netns, NetnsFactory, unique_ifname


@pytest.fixture(autouse=True)
def _wireguard_go_installed() -> None:
    if shutil.which("wireguard-go") is None:
        pytest.fail("wireguard-go not found: run scripts/install-deps.sh")


class Host:
    def __init__(self, ns: Netns, underlay: str, mesh: str, log_dir: Path) -> None:
        self.ns = ns
        self.underlay = underlay
        self.key = PrivateKey.generate()
        self.interface = InterfaceConfig(
            name=unique_ifname(),
            private_key=self.key,
            listen_port=51820,
            address=IPv4Interface(f"{mesh}/10"),
            mtu=1420,
        )
        self.log_dir = log_dir

    @property
    def public_key(self) -> PublicKey:
        return self.key.public_key()

    def as_peer(self) -> PeerConfig:
        return PeerConfig(
            public_key=self.public_key,
            endpoint=f"{self.underlay}:51820",
            allowed_ips=(IPv4Network(f"{self.interface.address.ip}/32"),),
        )

    def plane(self) -> WireGuardGo:
        return WireGuardGo(self.log_dir, ifname=self.interface.name)

    def apply(self, peers: list[PeerConfig]) -> tuple[bool, list[str]]:
        """One apply in a fresh process, as an agent start does; (changed, log lines)."""
        cfg = TunnelConfig(interface=self.interface, peers=tuple(peers))
        plane = self.plane

        async def agent() -> tuple[bool, list[str]]:
            lines: list[str] = []
            handler = logging.Handler()
            handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
            logging.getLogger("shoal").addHandler(handler)
            logging.getLogger("shoal").setLevel(logging.INFO)
            return await plane().apply(cfg), lines

        result: tuple[bool, list[str]] = self.ns.run(agent)
        return result

    def stats(self) -> dict[PublicKey, PeerStats]:
        plane = self.plane

        async def read() -> list[PeerStats]:
            return await plane().stats()

        return {s.public_key: s for s in self.ns.run(read)}

    def ping(self, dst: str) -> bool:
        out = self.ns.sh("busybox", "ping", "-c", "3", "-i", "0.2", "-W", "3", dst, check=False)
        return out.returncode == 0


@pytest.fixture
def hosts(netns: NetnsFactory, tmp_path: Path) -> tuple[Host, Host]:
    ns_a, ns_b = netns.new("wga"), netns.new("wgb")
    ns_a.sh("ip", "link", "add", "u0", "type", "veth", "peer", "name", "u1", "netns", ns_b.name)
    ns_a.sh("ip", "addr", "add", "192.0.2.1/24", "dev", "u0")
    ns_a.sh("ip", "link", "set", "u0", "up")
    ns_b.sh("ip", "addr", "add", "192.0.2.2/24", "dev", "u1")
    ns_b.sh("ip", "link", "set", "u1", "up")
    return (
        Host(ns_a, "192.0.2.1", "100.64.0.1", tmp_path / "a"),
        Host(ns_b, "192.0.2.2", "100.64.0.2", tmp_path / "b"),
    )


def test_mesh_ping_idempotence_and_undisturbed_peers(hosts: tuple[Host, Host]) -> None:
    a, b = hosts
    changed, lines = a.apply([b.as_peer()])
    assert changed is True
    name = a.interface.name
    assert any(line.startswith(f"{name}: listen-port ") for line in lines)
    assert f"{name}: address none => 100.64.0.1/10" in lines
    assert (
        f"{name}: peer {b.public_key.short()} added "
        "(endpoint 192.0.2.2:51820, allowed-ips 100.64.0.2/32, keepalive 25)"
    ) in lines
    assert b.apply([a.as_peer()])[0] is True

    assert a.ping("100.64.0.2")

    # An agent restart: the same config changes nothing and keeps the session.
    assert a.apply([b.as_peer()]) == (False, [])
    before = a.stats()[b.public_key]
    assert isinstance(before.last_handshake, datetime)
    assert before.endpoint == "192.0.2.2:51820"
    assert before.rx_bytes > 0 and before.tx_bytes > 0

    # A third peer joins: the first peer's session is not reset.
    c = PeerConfig(
        public_key=PrivateKey.generate().public_key(),
        endpoint="192.0.2.3:51820",
        allowed_ips=(IPv4Network("100.64.0.3/32"), IPv4Network("10.42.3.0/24")),
    )
    changed, lines = a.apply([b.as_peer(), c])
    assert changed is True
    assert lines == [
        f"{name}: peer {c.public_key.short()} added "
        "(endpoint 192.0.2.3:51820, allowed-ips 10.42.3.0/24, 100.64.0.3/32, keepalive 25)"
    ]
    after = a.stats()[b.public_key]
    assert after.last_handshake == before.last_handshake
    assert after.rx_bytes >= before.rx_bytes and after.tx_bytes >= before.tx_bytes
    assert a.ping("100.64.0.2")
    assert a.stats()[b.public_key].rx_bytes > before.rx_bytes

    # A changed peer is updated in place.
    c2 = c.model_copy(update={"allowed_ips": (IPv4Network("100.64.0.3/32"),)})
    lines = a.apply([b.as_peer(), c2])[1]
    assert lines == [
        f"{name}: peer {c.public_key.short()} allowed-ips "
        "10.42.3.0/24, 100.64.0.3/32 => 100.64.0.3/32"
    ]
    assert a.stats()[b.public_key].last_handshake == before.last_handshake

    # And removed.
    assert a.apply([b.as_peer()])[1] == [f"{name}: peer {c.public_key.short()} removed"]
    assert set(a.stats()) == {b.public_key}


def test_teardown_stops_wireguard_go(hosts: tuple[Host, Host]) -> None:
    a, _ = hosts
    a.apply([])
    socket = Path("/var/run/wireguard") / f"{a.interface.name}.sock"
    assert socket.exists()
    plane = a.plane
    assert a.ns.run(lambda: plane().teardown()) is True
    assert not socket.exists()
    assert a.ns.sh("ip", "link", "show", a.interface.name, check=False).returncode != 0
    assert a.ns.wait_empty(), "wireguard-go did not exit"
    assert a.ns.run(lambda: plane().teardown()) is False


def test_a_dead_wireguard_go_is_replaced(hosts: tuple[Host, Host]) -> None:
    a, _ = hosts
    a.apply([])
    (pid,) = a.ns.pids()
    os.kill(pid, signal.SIGKILL)  # wireguard-go crashes; its TUN device goes with it
    assert a.ns.wait_empty()
    changed, lines = a.apply([])
    assert changed is True
    assert f"{a.interface.name}: address none => 100.64.0.1/10" in lines
