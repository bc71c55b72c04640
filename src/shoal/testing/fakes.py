"""Stateful fakes of the host, one per adapter, each with a readable `dump()` of its state.

Tests assert on what the host ends up looking like (a dump as text), not on which calls were
made. Every fake converges like the real thing: applying the same config twice changes nothing
and returns False. Set `fail` to an exception to make the next applies raise it (the state is
left as it was, as a failed iptables-restore or netlink call leaves it); set it back to None
to heal.

    host = FakeHost()                       # flavour="wireguard-go" for the userspace tunnel
    reconciler = Reconciler(host.adapters, plan, health, clock)
    ...
    assert host.dump() == '''...'''

The tunnel fake is the real `WireGuardDataPlane` (the read → diff → write → log cycle) over an
in-memory backend, so tunnel tests exercise the production diff.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Literal

from shoal.agent.reconciler import Adapters
from shoal.dataplane.base import (
    DeviceDiff,
    LiveDevice,
    LivePeer,
    PeerDiff,
    WireGuardDataPlane,
)
from shoal.dataplane.errors import DataPlaneError, WireGuardGoFailed
from shoal.dockerhost.errors import NetworkInUse
from shoal.model.keys import PrivateKey, PublicKey
from shoal.plan.hostconfig import (
    INTERFACE,
    DnsConfig,
    DockerNetworkConfig,
    FirewallConfig,
    InterfaceConfig,
    RouteConfig,
    RoutingConfig,
)

Flavour = Literal["kernel", "wireguard-go"]


def _ips(ips: tuple[IPv4Network, ...]) -> str:
    return ", ".join(str(ip) for ip in ips) or "none"


class Failing:
    """Failure injection and an apply counter, shared by every fake."""

    fail: BaseException | None = None
    applies = 0  # how many apply calls reached this fake (failed ones included)

    def _check(self) -> None:
        self.applies += 1
        if self.fail is not None:
            raise self.fail


@dataclass
class _Device:
    private_key: PrivateKey | None = None
    listen_port: int = 0
    peers: dict[PublicKey, LivePeer] = field(default_factory=dict)
    address: IPv4Interface | None = None
    mtu: int = 1500
    up: bool = False


class FakeWireGuard(Failing):
    """WireGuard in memory: a kernel link, or a wireguard-go process (which can `crash`)."""

    def __init__(self, flavour: Flavour = "kernel") -> None:
        self.name: str = flavour
        self.flavour = flavour
        self.links: dict[str, _Device] = {}

    async def ensure_link(self, ifname: str) -> bool:
        self._check()
        if ifname in self.links:
            return False
        self.links[ifname] = _Device()
        return True

    def _device(self, ifname: str) -> _Device:
        device = self.links.get(ifname)
        if device is None:
            if self.flavour == "wireguard-go":
                raise WireGuardGoFailed(f"wireguard-go for {ifname} does not answer")
            raise DataPlaneError(f"read {ifname}: No such device (netlink)")
        return device

    async def read(self, ifname: str) -> LiveDevice:
        device = self._device(ifname)
        return LiveDevice(device.private_key, device.listen_port, dict(device.peers))

    async def write(self, ifname: str, device: DeviceDiff, peers: PeerDiff) -> None:
        live = self._device(ifname)
        if device.private_key is not None:
            live.private_key = device.private_key
        if device.listen_port is not None:
            live.listen_port = device.listen_port
        for key in peers.remove:
            del live.peers[key]
        for change in peers.change:
            old = live.peers.get(change.public_key)
            live.peers[change.public_key] = LivePeer(
                public_key=change.public_key,
                endpoint=(
                    change.endpoint
                    if change.endpoint is not None
                    else (old.endpoint if old else None)
                ),
                allowed_ips=(
                    change.allowed_ips
                    if change.allowed_ips is not None
                    else (old.allowed_ips if old else ())
                ),
                keepalive=(
                    change.keepalive
                    if change.keepalive is not None
                    else (old.keepalive if old else 0)
                ),
            )

    async def delete_link(self, ifname: str) -> bool:
        return self.links.pop(ifname, None) is not None

    async def converge(self, cfg: InterfaceConfig) -> bool:
        """Address, MTU and up state of the link (what netlink does for the real backends)."""
        device = self._device(cfg.name)
        changed = (device.address, device.mtu, device.up) != (cfg.address, cfg.mtu, True)
        device.address, device.mtu, device.up = cfg.address, cfg.mtu, True
        return changed

    def crash(self, ifname: str = INTERFACE) -> None:
        """wireguard-go dies; its TUN device and every peer go with it."""
        if self.flavour != "wireguard-go":
            raise ValueError("only the userspace flavour has a process to crash")
        del self.links[ifname]

    def dump(self) -> str:
        lines = []
        for name, d in sorted(self.links.items()):
            key = d.private_key.public_key().short() if d.private_key else "none"
            lines.append(
                f"{name} {self.flavour} {'up' if d.up else 'down'} mtu {d.mtu} "
                f"address {d.address} port {d.listen_port} key {key}"
            )
            lines += [
                f"{name} peer {p.public_key.short()} endpoint {p.endpoint} "
                f"allowed-ips {_ips(p.allowed_ips)} keepalive {p.keepalive}"
                for _, p in sorted(d.peers.items(), key=lambda kv: str(kv[0]))
            ]
        return "\n".join(lines)


class FakeTunnel(WireGuardDataPlane):
    """The real tunnel adapter over `FakeWireGuard`."""

    def __init__(self, flavour: Flavour = "kernel", ifname: str = INTERFACE) -> None:
        self.wireguard = FakeWireGuard(flavour)
        super().__init__(self.wireguard, ifname, converge=self.wireguard.converge)

    def dump(self) -> str:
        return self.wireguard.dump()


class FakeRouting(Failing):
    """IPv4 forwarding and the main routing table, as netlink would show them."""

    def __init__(self) -> None:
        self.forwarding = False
        self.routes: dict[IPv4Network, RouteConfig] = {}

    async def apply(self, cfg: RoutingConfig) -> bool:
        self._check()
        want = {r.dst: r for r in cfg.routes}
        ours = {dst: r for dst, r in self.routes.items() if r.dev == cfg.device}
        changed = not self.forwarding or ours != want
        self.forwarding = True
        self.routes = {dst: r for dst, r in self.routes.items() if r.dev != cfg.device} | want
        return changed

    async def teardown(self) -> bool:
        return False  # the routes go with the interface

    def delete_route(self, dst: str) -> None:
        """Someone removed a route by hand (drift)."""
        del self.routes[IPv4Network(dst)]

    def dump(self) -> str:
        lines = [f"forwarding {int(self.forwarding)}"]
        lines += [
            f"route {r.dst} dev {r.dev} src {r.src} mtu {r.mtu}"
            for _, r in sorted(self.routes.items())
        ]
        return "\n".join(lines)


class FakeFirewall(Failing):
    """shoal's chains, summarised: forwarding, NAT exemption and the DNS redirect."""

    def __init__(self) -> None:
        self.config: FirewallConfig | None = None

    async def apply(self, cfg: FirewallConfig) -> bool:
        self._check()
        changed = cfg != self.config
        self.config = cfg
        return changed

    async def teardown(self) -> bool:
        removed = self.config is not None
        self.config = None
        return removed

    def dump(self) -> str:
        c = self.config
        if c is None:
            return "firewall none"
        dns = f"{c.dns_address}:53" if c.dns_address is not None else "none"
        return (
            f"firewall forward {c.mesh_interface} <-> {c.bridge} for {c.local_subnet}, "
            f"no NAT to {c.container_pool} {c.mesh_pool}, dns-redirect {dns}"
        )


class FakeDockerNetwork(Failing):
    """Docker's `shoal` network; `attached` containers keep it in place, as dockerd does."""

    def __init__(self) -> None:
        self.network: DockerNetworkConfig | None = None
        self.attached: list[str] = []
        self._kept_for: tuple[str, ...] = ()

    @property
    def kept_for(self) -> tuple[str, ...]:
        return self._kept_for

    async def apply(self, cfg: DockerNetworkConfig | None) -> bool:
        self._check()
        if cfg is None or cfg == self.network:
            return False
        if self.network is not None and self.attached:
            raise NetworkInUse(cfg.name, "differs", tuple(self.attached))
        self.network = cfg
        return True

    async def teardown(self) -> bool:
        self._kept_for = tuple(sorted(self.attached))
        if self.network is None or self.attached:
            return False
        self.network = None
        return True

    def dump(self) -> str:
        n = self.network
        if n is None:
            return "network none"
        attached = f" attached {', '.join(sorted(self.attached))}" if self.attached else ""
        return (
            f"network {n.name} subnet {n.subnet} gateway {n.gateway} bridge {n.bridge} "
            f"mtu {n.mtu}{attached}"
        )


class FakeDns(Failing):
    """The resolver: where it listens and which netmap its names come from."""

    def __init__(self) -> None:
        self.address: IPv4Address | None = None
        self.config: DnsConfig | None = None

    async def apply(self, cfg: DnsConfig) -> bool:
        self._check()
        self.config = cfg
        if self.address == cfg.address:
            return False
        self.address = cfg.address
        return True

    async def teardown(self) -> bool:
        removed = self.address is not None
        self.address, self.config = None, None
        return removed

    def dump(self) -> str:
        if self.config is None or self.address is None:
            return "dns none"
        nm = self.config.netmap
        return (
            f"dns {self.address}:53 names of netmap r{nm.revision} "
            f"({len(nm.peers) + 1} nodes, {len(nm.containers)} containers)"
        )


class FakeHost:
    """Every subsystem of one host, faked; `adapters` is what the reconciler is given."""

    def __init__(self, flavour: Flavour = "kernel") -> None:
        self.tunnel = FakeTunnel(flavour)
        self.routing = FakeRouting()
        self.docker_network = FakeDockerNetwork()
        self.dns = FakeDns()
        self.firewall = FakeFirewall()
        self.adapters = Adapters(
            tunnel=self.tunnel,
            routing=self.routing,
            docker_network=self.docker_network,
            dns=self.dns,
            firewall=self.firewall,
        )

    def dump(self) -> str:
        """The whole host, one subsystem after the other, in apply order."""
        parts = (self.tunnel, self.routing, self.docker_network, self.dns, self.firewall)
        return "\n".join(text for part in parts if (text := part.dump()))
