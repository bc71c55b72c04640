"""The network map: what one node needs to know about the mesh, and the deltas that update it.

The server builds one `NetworkMap` per node (itself + its peers). After the first full map a
node only receives `MapUpdate`s of kind "delta": peers changed (added or modified) and peers
removed since the revision it already has. `NetworkMap.apply` folds an update in; it is pure and
O(size of the update + peers), so a burst of changes costs each node what it needs, not N².
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from datetime import datetime, timedelta
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from operator import attrgetter
from typing import Annotated, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from shoal.model.keys import PublicKey
from shoal.model.policy import Policy

WIREGUARD_PORT = 51820
# WireGuard over IPv4 costs 60 bytes per packet (20 IP + 8 UDP + 32 WireGuard); 1420 is what
# wg-quick uses and leaves room for an IPv6 underlay too.
DEFAULT_MTU = 1420
# A key rotation switches the rotating node at `Node.switch_at` and its peers this much later.
# The order is what makes a rotation lossless. Once the rotating host has set its new key, its
# packets wait in WireGuard's staged queue (128 per peer) while it handshakes with the new key,
# and the handshake cannot succeed before the peer knows that key (the peer drops it), so
# nothing is sent that the peer would drop; the peer's own switch then starts a handshake at
# once (a new peer entry with a keepalive sends one) and the queue drains. A peer switching
# first would drop every packet still coming on the old key's session. The gap is kept short
# because everything the rotating host sends meanwhile arrives in one burst: busybox ping's
# 7 KB socket buffer overflowed with a 500 ms gap (45 replies at once, ~35 lost per rotation),
# not with 50 ms. The gap must exceed the rotating host's apply delay minus the peer's (measured
# on a loaded 2-core lab: 2-60 ms vs 5-105 ms) plus the clock skew between them.
PEER_SWITCH_LAG = timedelta(milliseconds=50)


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


EndpointKind = Literal["lan", "public", "symmetric", "relay"]
# A host's NAT as its endpoint discovery judged it (`shoal.agent.endpoints`): "none" the server
# sees its own address, "easy" endpoint-independent mapping, "hard" a new outside port per
# destination (symmetric), "udp-blocked" no UDP answer at all.
NatKind = Literal["none", "easy", "hard", "udp-blocked"]


class Endpoint(Frozen):
    """One UDP address where a node's WireGuard listens.

    `kind` says how the node knows it (see `shoal.agent.endpoints`): "lan" an address of its
    own behind a NAT, "public" what the server saw its WireGuard port as (its own address when
    it has no NAT; its NAT's mapping, the same for every destination, otherwise), "symmetric"
    the NAT's address with the port one destination saw (others see other ports), "relay" the
    TCP relay the node (whose UDP is blocked) is reachable through (`shoal.control.tcprelay`).
    None: an advertised address the node could not check (older agents, no probe answer yet)."""

    host: IPv4Address
    port: int = Field(ge=1, le=65535)
    kind: EndpointKind | None = None

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def _unicast(endpoints: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
    """Refuses any endpoint peers could not send to (private, LAN, addresses are fine)."""
    for e in endpoints:
        host = e.host
        if host.is_unspecified or host.is_loopback or host.is_multicast or host.is_link_local:
            raise ValueError(f"{e} is not a unicast address another host can reach")
        if host.is_reserved:  # 240.0.0.0/4, the broadcast address 255.255.255.255 among them
            raise ValueError(f"{e} is a reserved or broadcast address, not a unicast one")
    return endpoints


def nat_kind(endpoints: tuple[Endpoint, ...]) -> NatKind | None:
    """The NAT kind a node reports, read off the kinds of the endpoints it advertises: its
    discovery reports one shape per kind (`Discovery.endpoints`): a "relay" endpoint only
    without UDP, a "symmetric" one only behind a hard NAT, a "public" one with a "lan" one
    behind an easy NAT and alone without NAT. None: unknown (no probe answer yet and no relay
    to advertise, or an agent from before endpoint discovery)."""
    kinds = {e.kind for e in endpoints}
    if "relay" in kinds:
        return "udp-blocked"
    if "symmetric" in kinds:
        return "hard"
    if "public" in kinds:
        return "easy" if "lan" in kinds else "none"
    return None


MAX_ENDPOINTS = 16  # per node: a LAN address, a public one, a few more; peers try each one

# The endpoints a node advertises, checked where they enter the server: an endpoint of
# 127.0.0.1, 0.0.0.0 or 224.0.0.1 would be installed as a WireGuard endpoint on every peer.
AdvertisedEndpoints = Annotated[
    tuple[Endpoint, ...], Field(max_length=MAX_ENDPOINTS), AfterValidator(_unicast)
]


class Node(Frozen):
    """A host in the mesh, as every other host sees it."""

    id: str
    name: str
    public_key: PublicKey
    mesh_ip: IPv4Address
    # The host's container subnet (its Docker `shoal` network); None: a host without Docker
    # (`shoal up --no-docker`), on the mesh with its mesh IP only.
    subnet: IPv4Network | None
    endpoints: tuple[Endpoint, ...] = ()
    tags: tuple[str, ...] = ()  # from the join token; what policies select with `tag:`
    # A key rotation in progress: the node's next WireGuard key and when it switches to it
    # (UTC); its peers switch PEER_SWITCH_LAG later. Both None when no rotation is pending.
    next_key: PublicKey | None = None
    switch_at: datetime | None = None
    # Subnet routes: networks beyond this host (a LAN, a VPC subnet) that it advertised and the
    # admin approved; peers route them through it. Sorted; never overlapping a pool or another
    # node's routes (the server refuses those).
    routes: tuple[IPv4Network, ...] = ()

    def key_at(self, now: datetime, *, lag: timedelta = timedelta(0)) -> PublicKey:
        """The key this node carries traffic with at `now`, for an observer that switches
        `lag` after the node itself (0: the node itself; PEER_SWITCH_LAG: its peers)."""
        if self.next_key is not None and self.switch_at is not None and now >= self.switch_at + lag:
            return self.next_key
        return self.public_key

    def switches_at(self, *, lag: timedelta = timedelta(0)) -> datetime | None:
        """When an observer `lag` behind switches to the next key; None: no rotation pending."""
        return None if self.switch_at is None or self.next_key is None else self.switch_at + lag

    def allowed_ips(self) -> tuple[IPv4Network, ...]:
        """What this node may send from, and what is routed to it: its mesh IP, its subnet and
        its approved subnet routes."""
        subnet = () if self.subnet is None else (self.subnet,)
        return (IPv4Network(f"{self.mesh_ip}/32"), *subnet, *self.routes)


Health = Literal["none", "starting", "healthy", "unhealthy"]


class PortSpec(Frozen):
    port: int = Field(ge=1, le=65535)
    protocol: Literal["tcp", "udp"] = "tcp"


# A container is identified by its host and its Docker id, (node id, container id): what one
# host reports can never replace or withdraw a container of another host, even one that claims
# the same Docker id.
ContainerKey = tuple[str, str]


class Container(Frozen):
    """A container attached to some host's `shoal` network, as service discovery sees it."""

    id: str  # Docker's full container id
    node_id: str  # the host it runs on (set by the server, whatever the agent sent)
    name: str  # without Docker's leading "/"
    ip: IPv4Address  # its address on the `shoal` network
    project: str | None = None  # label com.docker.compose.project
    service: str | None = None  # label com.docker.compose.service
    ports: tuple[PortSpec, ...] = ()  # exposed ports, for SRV records
    health: Health = "none"  # Docker's health check state; "none" when it has none
    labels: tuple[tuple[str, str], ...] = ()  # its `shoal.*` labels, sorted; policies select them

    @property
    def key(self) -> ContainerKey:
        """Its identity in the mesh: (node id, container id)."""
        return (self.node_id, self.id)

    def serves_traffic(self) -> bool:
        """Whether DNS hands this replica out: a failing or not yet passing check says no."""
        return self.health in ("none", "healthy")


class MeshSettings(Frozen):
    """Mesh-wide settings chosen by the server."""

    mesh_pool: IPv4Network
    container_pool: IPv4Network
    mtu: int = DEFAULT_MTU

    def mesh_interface(self, ip: IPv4Address) -> IPv4Interface:
        return IPv4Interface(f"{ip}/{self.mesh_pool.prefixlen}")


class NetworkMap(Frozen):
    """One node's complete view of the mesh at `revision`."""

    revision: int
    settings: MeshSettings
    self_node: Node
    peers: tuple[Node, ...] = ()  # sorted by id
    # Every container on every reachable host (this one included), sorted by key (node id,
    # container id). Containers of
    # a host the server has not heard from within the heartbeat timeout are withdrawn.
    containers: tuple[Container, ...] = ()
    policy: Policy | None = None  # the access-control policy; None: shoal's defaults

    def peer(self, node_id: str) -> Node | None:
        return next((p for p in self.peers if p.id == node_id), None)

    def apply(self, update: MapUpdate) -> NetworkMap:
        """The map after `update`. A full update replaces the map; a delta patches it."""
        if update.kind == "full":
            if update.full is None:
                raise ValueError("full update without a map")
            return update.full
        if update.kind == "none" or update.revision <= self.revision:
            return self
        return self.model_copy(
            update={
                "revision": update.revision,
                "self_node": update.self_node or self.self_node,
                "peers": _patched(self.peers, update.peers_changed, update.peers_removed, _by_id),
                "containers": _patched(
                    self.containers,
                    update.containers_changed,
                    update.containers_removed,
                    _by_key,
                ),
                "policy": None if update.policy_cleared else update.policy or self.policy,
            }
        )


R = TypeVar("R", Node, Container)
K = TypeVar("K", str, ContainerKey)
_by_id = attrgetter("id")
_by_key = attrgetter("key")
FEW_CHANGES = 32  # up to this many records are placed one by one; more, and the lot is sorted


def _patched(
    records: tuple[R, ...],
    changed: tuple[R, ...],
    removed: tuple[K, ...],
    key: Callable[[R], K],
) -> tuple[R, ...]:
    """`records` (sorted by `key`) with `changed` put in and the `removed` keys taken out.

    Most deltas touch peers or containers, not both, and only a few of them: the untouched
    part is kept as it is and a few records are placed by bisection, since rebuilding and
    sorting a 5,000-peer map for one container starting cost every host milliseconds."""
    if not changed and not removed:
        return records
    if len(changed) + len(removed) > FEW_CHANGES:
        by_key = {key(r): r for r in records}
        for gone in removed:
            by_key.pop(gone, None)
        for record in changed:
            by_key[key(record)] = record
        return tuple(sorted(by_key.values(), key=key))
    patched = list(records)
    for gone in removed:
        i = bisect_left(patched, gone, key=key)
        if i < len(patched) and key(patched[i]) == gone:
            del patched[i]
    for record in changed:
        k = key(record)
        i = bisect_left(patched, k, key=key)
        if i < len(patched) and key(patched[i]) == k:
            patched[i] = record
        else:
            patched.insert(i, record)
    return tuple(patched)


class MapUpdate(Frozen):
    """What one long-poll returns: a full map, a delta from `since`, or nothing new."""

    kind: Literal["full", "delta", "none"]
    revision: int
    full: NetworkMap | None = None
    self_node: Node | None = None  # set in a delta when this node's own record changed
    peers_changed: tuple[Node, ...] = ()
    peers_removed: tuple[str, ...] = ()
    containers_changed: tuple[Container, ...] = ()  # added or modified (health, IP, ...)
    containers_removed: tuple[ContainerKey, ...] = ()  # (node id, container id)
    policy: Policy | None = None  # set in a delta when the policy changed
    policy_cleared: bool = False  # in a delta: the policy was removed, shoal's defaults apply
