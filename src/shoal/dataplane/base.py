"""The data plane: one tunnel adapter over two WireGuard backends, and the pure diffs.

`WireGuardDataPlane.apply(cfg)` is the whole read → diff → write → log cycle, written once:

    backend.ensure_link   create the interface when missing (never recreate a healthy one:
                          an agent restart must not drop a packet)
    backend.read          the live device: private key, listen port, peers
    diff_device/peers     pure: only what differs (a peer added never disturbs other peers)
    backend.write         the two diffs, the device first, peer removals last
    log                   one readable line per change

A backend (`kernel.KernelBackend`, `wggo.WireGuardGoBackend`) supplies only the link's life
cycle and the device's read and write.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Network, ip_address
from typing import Protocol

from shoal import hostnet
from shoal.dataplane.errors import DataPlaneError, hostnet_errors
from shoal.model.keys import PrivateKey, PublicKey
from shoal.plan.hostconfig import InterfaceConfig, PeerConfig, TunnelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PeerStats:
    public_key: PublicKey
    endpoint: str | None  # "ip:port" the peer was last seen at
    last_handshake: datetime | None  # UTC; None before the first handshake
    rx_bytes: int
    tx_bytes: int


class DataPlane(Protocol):
    """The tunnel adapter the agent is given (a fake in tests).

    `apply` may be called any number of times with identical configs; it converges the host
    to `cfg` and touches nothing that already matches.
    """

    @property
    def name(self) -> str:
        """ "wireguard-go" | "kernel", as `shoal status` reports it."""
        ...

    async def apply(self, cfg: TunnelConfig) -> bool:
        """Make the interface and its peers match `cfg`; True when anything changed.

        Raises:
            DataPlaneError: applying failed part-way; the next apply retries.
        """
        ...

    async def stats(self) -> list[PeerStats]:
        """Live counters of every peer, sorted by public key (DataPlaneError: no interface)."""
        ...

    async def teardown(self) -> bool:
        """Delete the interface; False when there was none."""
        ...


@dataclass(frozen=True, slots=True)
class LivePeer:
    """A peer as the interface reports it."""

    public_key: PublicKey
    endpoint: str | None
    allowed_ips: tuple[IPv4Network, ...]  # sorted
    keepalive: int
    last_handshake: datetime | None = None
    rx_bytes: int = 0
    tx_bytes: int = 0

    def stats(self) -> PeerStats:
        return PeerStats(
            self.public_key, self.endpoint, self.last_handshake, self.rx_bytes, self.tx_bytes
        )


@dataclass(frozen=True, slots=True)
class PeerChange:
    """What to set on one peer; a None field is left as it is."""

    public_key: PublicKey
    endpoint: str | None = None
    allowed_ips: tuple[IPv4Network, ...] | None = None  # replaces the peer's whole list
    keepalive: int | None = None


@dataclass(frozen=True, slots=True)
class PeerDiff:
    """Backends apply `change` before `remove`. An allowed IP can belong to one peer only, and
    setting it on its new holder moves it in one step (a key rotation's new entry taking over
    from the old one, a subnet handed to another node), so every packet finds a peer; removing
    the old holder first left a gap in which packets were dropped (1-2 pings at 10 ms per key
    rotation on wireguard-go)."""

    remove: tuple[PublicKey, ...]
    change: tuple[PeerChange, ...]  # updates of existing peers, then new peers
    lines: tuple[str, ...]  # one readable log line per change

    def __bool__(self) -> bool:
        return bool(self.remove or self.change)


@dataclass(frozen=True, slots=True)
class DeviceDiff:
    """What to set on the interface itself; a None field is left as it is."""

    private_key: PrivateKey | None
    listen_port: int | None
    lines: tuple[str, ...]  # one readable log line per change

    def __bool__(self) -> bool:
        return self.private_key is not None or self.listen_port is not None


def diff_device(
    cfg: InterfaceConfig, private_key: PrivateKey | None, listen_port: int
) -> DeviceDiff:
    """The private key and listen port to set so the live interface matches `cfg`."""
    key = cfg.private_key if private_key != cfg.private_key else None
    port = cfg.listen_port if listen_port != cfg.listen_port else None
    lines = []
    if key is not None:
        lines.append(f"{cfg.name}: private key set (public {key.public_key()})")
    if port is not None:
        lines.append(f"{cfg.name}: listen-port {listen_port} => {port}")
    return DeviceDiff(key, port, tuple(lines))


@dataclass(frozen=True, slots=True)
class LiveDevice:
    """A WireGuard interface's settings and peers, as its backend reports them."""

    private_key: PrivateKey | None  # None: no key set yet
    listen_port: int
    peers: Mapping[PublicKey, LivePeer]


class WireGuardBackend(Protocol):
    """How one kind of WireGuard keeps an interface: its link and its device settings."""

    name: str

    async def ensure_link(self, ifname: str) -> bool:
        """Create the interface when it is missing or broken; True when it had to."""
        ...

    async def read(self, ifname: str) -> LiveDevice:
        """The live settings and peers of `ifname` (DataPlaneError when unreadable)."""
        ...

    async def write(self, ifname: str, device: DeviceDiff, peers: PeerDiff) -> None:
        """Apply the non-empty ones of `device` and `peers`, in that order."""
        ...

    async def delete_link(self, ifname: str) -> bool:
        """Delete the interface (and whatever serves it); False when there was none."""
        ...


def sorted_stats(live: Mapping[PublicKey, LivePeer]) -> list[PeerStats]:
    return [peer.stats() for _, peer in sorted(live.items(), key=lambda kv: str(kv[0]))]


def record_endpoints(applied: MutableMapping[PublicKey, str | None], diff: PeerDiff) -> None:
    """Remember the endpoints `diff` set, once applied (see `diff_peers` on roaming)."""
    for key in diff.remove:
        applied.pop(key, None)
    for change in diff.change:
        if change.endpoint is not None:
            applied[change.public_key] = change.endpoint


def _ips(ips: Sequence[IPv4Network]) -> str:
    return ", ".join(str(ip) for ip in ips) or "none"


def diff_peers(
    ifname: str,
    live: Mapping[PublicKey, LivePeer],
    want: Sequence[PeerConfig],
    applied_endpoints: Mapping[PublicKey, str | None],
) -> PeerDiff:
    """The smallest set of peer operations turning `live` into `want`.

    Endpoints roam: WireGuard follows a peer to the address its packets come from. A configured
    endpoint is therefore set for a new peer, when the netmap's endpoint changed since we last
    set it (`applied_endpoints`), or, with nothing set by this process yet, when it differs
    from the live one. A peer that roamed keeps its endpoint until the netmap says otherwise,
    unless it roamed onto loopback: that is only ever the agent's own TCP relay socket, and
    the netmap no longer routes the peer through it (see `_stale_relay`).
    """
    wanted = {p.public_key: p for p in want}
    remove = tuple(sorted(live.keys() - wanted.keys(), key=str))
    lines = [f"{ifname}: peer {k.short()} removed" for k in remove]
    updates: list[PeerChange] = []
    additions: list[PeerChange] = []
    for key, peer in sorted(wanted.items(), key=lambda kv: str(kv[0])):
        ips = tuple(sorted(peer.allowed_ips, key=lambda n: (int(n.network_address), n.prefixlen)))
        have = live.get(key)
        if have is None:
            additions.append(PeerChange(key, peer.endpoint, ips, peer.keepalive))
            lines.append(
                f"{ifname}: peer {key.short()} added (endpoint {peer.endpoint}, "
                f"allowed-ips {_ips(ips)}, keepalive {peer.keepalive})"
            )
            continue
        endpoint: str | None = None
        # Same as what we set last: the peer roamed, and WireGuard knows better.
        roamed = key in applied_endpoints and applied_endpoints[key] == peer.endpoint
        roamed = roamed and not _stale_relay(have.endpoint, peer.endpoint)
        if peer.endpoint is not None and peer.endpoint != have.endpoint and not roamed:
            endpoint = peer.endpoint
            lines.append(f"{ifname}: peer {key.short()} endpoint {have.endpoint} => {endpoint}")
        new_ips = ips if ips != have.allowed_ips else None
        if new_ips is not None:
            lines.append(
                f"{ifname}: peer {key.short()} allowed-ips "
                f"{_ips(have.allowed_ips)} => {_ips(new_ips)}"
            )
        keepalive = peer.keepalive if peer.keepalive != have.keepalive else None
        if keepalive is not None:
            lines.append(f"{ifname}: peer {key.short()} keepalive {have.keepalive} => {keepalive}")
        if endpoint is not None or new_ips is not None or keepalive is not None:
            updates.append(PeerChange(key, endpoint, new_ips, keepalive))
    return PeerDiff(remove, tuple(updates + additions), tuple(lines))


def _stale_relay(live: str | None, planned: str | None) -> bool:
    """Whether WireGuard follows a peer to a loopback socket the plan does not name. When both
    sides leave a TCP relay for the direct path, packets still in the relay arrive from the
    agent's loopback socket after each side set the direct endpoint; each roams back onto the
    relay and, every later packet coming through it, stays there for good (CI: a pair relayed
    for minutes after UDP was unblocked, doctor naming 127.0.0.1 a direct endpoint)."""
    return live is not None and planned is not None and _loopback(live) and not _loopback(planned)


def _loopback(endpoint: str) -> bool:
    host = endpoint.rpartition(":")[0].strip("[]")
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


async def converge_link(cfg: InterfaceConfig) -> bool:
    """The interface's address, MTU and up state, whichever backend made it."""
    with hostnet_errors():
        changed = await hostnet.ensure_address(cfg.name, cfg.address)
        changed |= await hostnet.ensure_link_up(cfg.name, cfg.mtu)
    return changed


LinkConverger = Callable[[InterfaceConfig], Awaitable[bool]]


class WireGuardDataPlane:
    """The tunnel adapter: one WireGuard interface, `ifname`, kept by `backend`.

    `converge` sets the link's address, MTU and up state (netlink by default; tests give the
    fake backend's own).
    """

    def __init__(
        self, backend: WireGuardBackend, ifname: str, converge: LinkConverger | None = None
    ) -> None:
        self.backend = backend
        self.ifname = ifname
        self._converge = converge or converge_link
        # Endpoints this process set, to tell a roamed peer from a changed netmap (diff_peers).
        self._applied_endpoints: dict[PublicKey, str | None] = {}

    @property
    def name(self) -> str:
        return self.backend.name

    async def apply(self, cfg: TunnelConfig) -> bool:
        if cfg.interface.name != self.ifname:
            raise DataPlaneError(f"this data plane keeps {self.ifname}, not {cfg.interface.name}")
        changed = await self.backend.ensure_link(self.ifname)
        live = await self.backend.read(self.ifname)
        device = diff_device(cfg.interface, live.private_key, live.listen_port)
        peers = diff_peers(self.ifname, live.peers, cfg.peers, self._applied_endpoints)
        if device or peers:
            await self.backend.write(self.ifname, device, peers)
            for line in (*device.lines, *peers.lines):
                log.info("%s", line)
            record_endpoints(self._applied_endpoints, peers)
            changed = True
        changed |= await self._converge(cfg.interface)
        return changed

    async def stats(self) -> list[PeerStats]:
        return sorted_stats((await self.backend.read(self.ifname)).peers)

    async def teardown(self) -> bool:
        removed = await self.backend.delete_link(self.ifname)
        self._applied_endpoints.clear()
        return removed
