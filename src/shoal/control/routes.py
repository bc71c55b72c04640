"""Subnet routes on the server: what a joining node advertises, and the admin's decisions.

A node's routes are part of its record (`NodeRecord.routes`), saved with it: approving or
rejecting one saves the node at a new revision, so the change reaches every peer's next poll
as a delta of that node (its `Node.routes`, hence its AllowedIPs), like any other change.
Overlaps are refused where they enter, so the approved routes of the mesh never overlap each
other nor a pool: a packet has one way through the mesh.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from ipaddress import IPv4Network

from shoal.control.errors import NotFound, RouteConflict
from shoal.control.ipam import Pools
from shoal.model.routes import RouteInfo, RouteStatus, route_id
from shoal.store.base import NodeRecord, RouteRecord


def check_advertised(
    pools: Pools, nodes: Iterable[NodeRecord], node_id: str, prefixes: Sequence[IPv4Network]
) -> None:
    """Refuse (RouteConflict) a prefix overlapping the mesh or container pool, or a route
    another node advertised that is not rejected (pending routes count: approving both
    later would route one network two ways)."""
    for prefix in prefixes:
        for kind, pool in (("mesh", pools.mesh_pool), ("container", pools.container_pool)):
            if prefix.overlaps(pool):
                raise RouteConflict(
                    f"advertised route {prefix} overlaps the mesh's {kind} pool {pool}; "
                    "advertise a network outside it"
                )
    for other in nodes:
        if other.id == node_id:
            continue
        for route in other.routes:
            clash = next((p for p in prefixes if p.overlaps(route.prefix)), None)
            if clash is not None and route.status != "rejected":
                raise RouteConflict(
                    f"advertised route {clash} overlaps {route.prefix}, which node "
                    f"{other.name} advertises ({route.status}); advertise another network "
                    "or withdraw that one"
                )


def merge_advertised(
    existing: NodeRecord | None, prefixes: Sequence[IPv4Network] | None, now: datetime
) -> tuple[RouteRecord, ...]:
    """The node's routes once it advertises `prefixes` (the complete set; None: the ones it
    has): a route it advertised before keeps the admin's decision, a new one is pending, one
    left out is withdrawn (advertising it again asks for approval anew)."""
    known = {r.prefix: r for r in existing.routes} if existing is not None else {}
    if prefixes is None:
        return tuple(known.values())
    return tuple(
        known.get(p) or RouteRecord(prefix=p, status="pending", advertised_at=now)
        for p in sorted(prefixes, key=lambda p: (int(p.network_address), p.prefixlen))
    )


def route_info(node: NodeRecord, route: RouteRecord) -> RouteInfo:
    return RouteInfo(
        id=route_id(node.id, route.prefix),
        node=node.name,
        node_id=node.id,
        prefix=route.prefix,
        status=route.status,
        advertised_at=route.advertised_at,
        decided_at=route.decided_at,
    )


def list_routes(nodes: Iterable[NodeRecord]) -> list[RouteInfo]:
    """Every advertised route, by node name then prefix."""
    return [route_info(n, r) for n in sorted(nodes, key=lambda n: n.name) for r in n.routes]


def find(nodes: Iterable[NodeRecord], ref: str) -> tuple[NodeRecord, RouteRecord]:
    """The route `ref` names (its id, or its prefix: overlaps are refused, so a prefix names
    at most one route that is not rejected) and its node; NotFound when none does."""
    matches = [
        (node, route)
        for node in nodes
        for route in node.routes
        if ref in (route_id(node.id, route.prefix), str(route.prefix))
    ]
    if not matches:
        raise NotFound(f"no advertised route {ref!r}; see shoal routes list")
    # A prefix rejected on one node and advertised by another: the live one is meant.
    return min(matches, key=lambda m: m[1].status == "rejected")


def decide(node: NodeRecord, route: RouteRecord, status: RouteStatus, now: datetime) -> NodeRecord:
    """`node` with `route` taking the admin's `status` at `now`."""
    new = replace(route, status=status, decided_at=now)
    return replace(node, routes=tuple(new if r.prefix == route.prefix else r for r in node.routes))
