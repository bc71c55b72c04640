"""Subnet routes: networks beyond a host (a LAN, a VPC subnet) that it offers to the mesh.

A host advertises routes when it joins (`shoal up --advertise-routes`); each stays "pending"
until the admin approves it (`shoal routes approve ID`) or rejects it. Only approved routes
reach the netmap (`Node.routes`): peers then send the route's traffic through that host
(WireGuard AllowedIPs and a kernel route over the mesh interface), and the host forwards it
onto its network, masquerading it so the network needs no route back to the mesh.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from ipaddress import IPv4Network
from itertools import pairwise
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from shoal.model.netmap import Frozen

MAX_REF = 64  # characters of a route's id or prefix as the admin names it
MAX_ROUTES = 16  # per node: a few LANs or VPC subnets; each costs every peer a route
RouteStatus = Literal["pending", "approved", "rejected"]


def _routable(prefixes: tuple[IPv4Network, ...]) -> tuple[IPv4Network, ...]:
    """Refuses prefixes no host can sensibly route for the mesh, and duplicates or overlaps
    within one advertisement; returns them sorted."""
    for p in prefixes:
        if p.prefixlen == 0:
            raise ValueError(f"{p}: a default route is not a subnet route")
        if p.is_loopback or p.is_multicast or p.is_link_local or p.is_reserved:
            raise ValueError(f"{p} is a loopback, multicast, link-local or reserved range")
    ordered = tuple(sorted(set(prefixes), key=_order))
    for a, b in pairwise(ordered):
        if a.overlaps(b):
            raise ValueError(f"the advertised routes {a} and {b} overlap")
    return ordered


def _order(p: IPv4Network) -> tuple[int, int]:
    return (int(p.network_address), p.prefixlen)


# What a node advertises, checked where it enters (the agent's flag, the server's API).
AdvertisedRoutes = Annotated[
    tuple[IPv4Network, ...], Field(max_length=MAX_ROUTES), AfterValidator(_routable)
]


def route_id(node_id: str, prefix: IPv4Network) -> str:
    """The stable id an admin names a route by: the same node and prefix, the same id."""
    return hashlib.sha256(f"{node_id} {prefix}".encode()).hexdigest()[:10]


def parse_routes(text: str) -> tuple[IPv4Network, ...]:
    """`--advertise-routes` text ("10.1.0.0/24,192.168.7.0/24") as prefixes; ValueError with
    one line naming the bad item (host bits set, not an address, ...)."""
    prefixes: list[IPv4Network] = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        try:
            prefixes.append(IPv4Network(item))
        except ValueError as exc:
            raise ValueError(f"--advertise-routes: {item!r}: {exc}") from exc
    try:
        return _routable(tuple(prefixes))
    except ValueError as exc:
        raise ValueError(f"--advertise-routes: {exc}") from exc


class RouteInfo(Frozen):
    """One advertised route, as `shoal routes list` shows it."""

    id: str
    node: str  # the advertising node's name
    node_id: str
    prefix: IPv4Network
    status: RouteStatus
    advertised_at: datetime
    decided_at: datetime | None = None


class RouteRef(Frozen):
    """`POST /v1/admin/routes/approve|reject`: the route, by its id or its prefix."""

    route: str = Field(min_length=1, max_length=MAX_REF)
