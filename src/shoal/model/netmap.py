"""The network map: what one node needs to know about the mesh, and the deltas that update it.

The server builds one `NetworkMap` per node (itself + its peers). After the first full map a
node only receives `MapUpdate`s of kind "delta": peers changed (added or modified) and peers
removed since the revision it already has. `NetworkMap.apply` folds an update in; it is pure and
O(size of the update + peers), so a burst of changes costs each node what it needs, not N².
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shoal.model.keys import PublicKey

WIREGUARD_PORT = 51820
# WireGuard over IPv4 costs 60 bytes per packet (20 IP + 8 UDP + 32 WireGuard); 1420 is what
# wg-quick uses and leaves room for an IPv6 underlay too.
DEFAULT_MTU = 1420


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Endpoint(Frozen):
    """One UDP address where a node's WireGuard listens."""

    host: IPv4Address
    port: int = Field(ge=1, le=65535)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class Node(Frozen):
    """A host in the mesh, as every other host sees it."""

    id: str
    name: str
    public_key: PublicKey
    mesh_ip: IPv4Address
    subnet: IPv4Network  # the host's container subnet (its Docker `shoal` network)
    endpoints: tuple[Endpoint, ...] = ()

    def allowed_ips(self) -> tuple[IPv4Network, ...]:
        """What this node may send from, and what is routed to it: its mesh IP and its subnet."""
        return (IPv4Network(f"{self.mesh_ip}/32"), self.subnet)


Health = Literal["none", "starting", "healthy", "unhealthy"]


class PortSpec(Frozen):
    port: int = Field(ge=1, le=65535)
    protocol: Literal["tcp", "udp"] = "tcp"


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
    # Every container on every reachable host (this one included), sorted by id. Containers of
    # a host the server has not heard from within the heartbeat timeout are withdrawn.
    containers: tuple[Container, ...] = ()

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
        peers = {p.id: p for p in self.peers}
        for node_id in update.peers_removed:
            peers.pop(node_id, None)
        for node in update.peers_changed:
            peers[node.id] = node
        containers = {c.id: c for c in self.containers}
        for container_id in update.containers_removed:
            containers.pop(container_id, None)
        for container in update.containers_changed:
            containers[container.id] = container
        return self.model_copy(
            update={
                "revision": update.revision,
                "self_node": update.self_node or self.self_node,
                "peers": tuple(sorted(peers.values(), key=lambda n: n.id)),
                "containers": tuple(sorted(containers.values(), key=lambda c: c.id)),
            }
        )


class MapUpdate(Frozen):
    """What one long-poll returns: a full map, a delta from `since`, or nothing new."""

    kind: Literal["full", "delta", "none"]
    revision: int
    full: NetworkMap | None = None
    self_node: Node | None = None  # set in a delta when this node's own record changed
    peers_changed: tuple[Node, ...] = ()
    peers_removed: tuple[str, ...] = ()
    containers_changed: tuple[Container, ...] = ()  # added or modified (health, IP, ...)
    containers_removed: tuple[str, ...] = ()  # container ids
