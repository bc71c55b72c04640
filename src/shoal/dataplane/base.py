"""The data plane contract, and the pure device and peer diffs both backends apply.

A backend owns one WireGuard interface. `ensure_interface` creates it when missing and never
recreates a healthy one (an agent restart must not drop a packet); `set_peers` changes only the
peers that differ from the live list, so a peer added never disturbs other peers' sessions.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Network
from typing import Protocol

from shoal import hostnet
from shoal.dataplane.errors import DataPlaneError, hostnet_errors
from shoal.model.keys import PrivateKey, PublicKey
from shoal.plan.hostconfig import InterfaceConfig, PeerConfig


@dataclass(frozen=True, slots=True)
class PeerStats:
    public_key: PublicKey
    endpoint: str | None  # "ip:port" the peer was last seen at
    last_handshake: datetime | None  # UTC; None before the first handshake
    rx_bytes: int
    tx_bytes: int


class DataPlane(Protocol):
    name: str  # "wireguard-go" | "kernel"

    async def ensure_interface(self, cfg: InterfaceConfig) -> bool: ...

    async def set_peers(self, peers: Sequence[PeerConfig]) -> bool: ...

    async def stats(self) -> list[PeerStats]: ...

    async def teardown(self, name: str) -> bool: ...


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
    from the live one. A peer that roamed keeps its endpoint until the netmap says otherwise.
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


async def converge_link(cfg: InterfaceConfig) -> bool:
    """The interface's address, MTU and up state, whichever backend made it."""
    with hostnet_errors():
        changed = await hostnet.ensure_address(cfg.name, cfg.address)
        changed |= await hostnet.ensure_link_up(cfg.name, cfg.mtu)
    return changed


def require_interface(ifname: str | None) -> str:
    """The interface `ensure_interface` set up; peers and stats need it first."""
    if ifname is None:
        raise DataPlaneError("the WireGuard interface is not set up yet (ensure_interface)")
    return ifname
