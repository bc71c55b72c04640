"""Links, addresses and routes of the current network namespace, over netlink (pyroute2).

Every function converges one aspect of the host and returns whether it changed anything, logging
each change as one readable line (`shoal0: route 10.42.3.0/24 added (src 100.64.0.1, mtu 1420)`).
They act on the network namespace the calling process lives in; nothing here reads `/sys`, which
`nsenter -n` does not switch.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from socket import AF_INET
from typing import Any

from shoal.hostnet.errors import HostNetError, LinkNotFound
from shoal.hostnet.pyroute2_lean import AsyncIPRoute, NetlinkError
from shoal.plan.hostconfig import RouteConfig

log = logging.getLogger(__name__)

MAIN_TABLE = 254
RTPROT_KERNEL = 2  # connected routes the kernel adds for an interface address
RTPROT_STATIC = 4
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255  # in a delete request: match a route of any scope, as `ip route del` does
ENODEV = 19


@asynccontextmanager
async def _netlink(what: str) -> AsyncIterator[AsyncIPRoute]:
    """One netlink socket for one operation; pyroute2's and the OS's errors become ours."""
    try:
        async with AsyncIPRoute() as ipr:
            yield ipr
    except NetlinkError as exc:
        raise HostNetError(f"{what}: {exc.args[-1] if exc.args else exc} (netlink)") from exc
    except OSError as exc:
        raise HostNetError(f"{what}: {exc}") from exc


async def _index(ipr: AsyncIPRoute, ifname: str) -> int:
    found = await ipr.link_lookup(ifname=ifname)
    if not found:
        raise LinkNotFound(ifname)
    return int(found[0])


async def _dump(ipr: AsyncIPRoute, kind: str, **filters: Any) -> list[Any]:
    method = getattr(ipr, kind)
    return [msg async for msg in await method("dump", **filters)]


async def link_exists(name: str) -> bool:
    async with _netlink(f"look up {name}") as ipr:
        return bool(await ipr.link_lookup(ifname=name))


async def link_kind(name: str) -> str | None:
    """None when `name` does not exist, else its kind ("wireguard", "tun", "" if unknown)."""
    async with _netlink(f"look up {name}") as ipr:
        found = await ipr.link_lookup(ifname=name)
        if not found:
            return None
        (link,) = await ipr.link("get", index=found[0])
    return str(link.get(("linkinfo", "kind")) or "")


async def create_link(name: str, kind: str) -> None:
    """Create interface `name` of `kind` ("wireguard" fails without the kernel module)."""
    async with _netlink(f"create {kind} interface {name}") as ipr:
        await ipr.link("add", ifname=name, kind=kind)


async def delete_link(name: str) -> bool:
    """Delete interface `name`; False when there was none."""
    async with _netlink(f"delete {name}") as ipr:
        found = await ipr.link_lookup(ifname=name)
        if not found:
            return False
        try:
            await ipr.link("del", index=found[0])
        except NetlinkError as exc:
            if exc.code == ENODEV:  # gone meanwhile: what we wanted
                return False
            raise
    log.info("%s: deleted", name)
    return True


async def ensure_link_up(ifname: str, mtu: int) -> bool:
    """Set the MTU (bytes) of `ifname` and bring it up, touching only what differs."""
    async with _netlink(f"configure {ifname}") as ipr:
        index = await _index(ipr, ifname)
        (link,) = await ipr.link("get", index=index)
        changes: dict[str, Any] = {}
        if link.get("mtu") != mtu:
            log.info("%s: mtu %s => %s", ifname, link.get("mtu"), mtu)
            changes["mtu"] = mtu
        if not link["flags"] & 1:  # IFF_UP
            log.info("%s: down => up", ifname)
            changes["state"] = "up"
        if changes:
            await ipr.link("set", index=index, **changes)
        return bool(changes)


async def ensure_address(ifname: str, address: IPv4Interface) -> bool:
    """Make `address` the only IPv4 address of `ifname` (an interface shoal owns).

    Stale addresses go first: deleting a primary address also deletes the secondaries of its
    subnet, which would take a freshly added mesh IP in the same pool with it.
    """
    async with _netlink(f"set address {address} on {ifname}") as ipr:
        index = await _index(ipr, ifname)
        current = {
            IPv4Interface(f"{msg.get('address')}/{msg['prefixlen']}")
            for msg in await _dump(ipr, "addr", family=AF_INET, index=index)
        }
        changed = False
        for stale in sorted(current - {address}):
            await ipr.addr(
                "del", index=index, address=str(stale.ip), prefixlen=stale.network.prefixlen
            )
            changed = True
        if address not in current:
            await ipr.addr(
                "add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen
            )
            changed = True
        if changed:
            before = ", ".join(str(a) for a in sorted(current)) or "none"
            log.info("%s: address %s => %s", ifname, before, address)
        return changed


@dataclass(frozen=True, slots=True)
class _LiveRoute:
    dst: IPv4Network
    src: IPv4Address | None
    mtu: int | None
    proto: int

    def describe(self) -> str:
        return f"src {self.src}, mtu {self.mtu}"


def _describe(route: RouteConfig) -> str:
    return f"src {route.src}, mtu {route.mtu}"


def _parse_route(msg: Any) -> _LiveRoute:
    src = msg.get("prefsrc")
    return _LiveRoute(
        dst=IPv4Network(f"{msg.get('dst') or '0.0.0.0'}/{msg['dst_len']}"),
        src=IPv4Address(src) if src else None,
        mtu=msg.get(("metrics", "RTAX_MTU")),
        proto=msg["proto"],
    )


async def sync_routes(dev: str, routes: Sequence[RouteConfig]) -> bool:
    """Make the routes on `dev` (an interface shoal owns, like shoal0) exactly `routes`.

    Missing routes are added, routes with another source or MTU are replaced in place, extra
    ones deleted. Routes on other devices and connected routes the kernel made for an address
    are never touched. Every route in `routes` must be on `dev`, or it could never be removed
    again: ValueError.
    """
    for want_route in routes:
        if want_route.dev != dev:
            raise ValueError(f"route {want_route.dst} is on {want_route.dev}, not {dev}")
    want = {r.dst: r for r in routes}
    async with _netlink(f"sync routes on {dev}") as ipr:
        index = await _index(ipr, dev)
        live: dict[IPv4Network, _LiveRoute] = {}
        for msg in await _dump(ipr, "route", family=AF_INET, table=MAIN_TABLE, oif=index):
            if msg.get("table") != MAIN_TABLE or msg.get("oif") != index:
                continue
            route = _parse_route(msg)
            if route.proto != RTPROT_KERNEL:
                live[route.dst] = route
        changed = False
        # Removals first: a subnet moving to another prefix length must never be routed twice.
        for dst in sorted(live.keys() - want.keys()):
            await ipr.route(
                "del", dst=str(dst), oif=index, table=MAIN_TABLE, scope=RT_SCOPE_NOWHERE
            )
            log.info("%s: route %s deleted (was %s)", dev, dst, live[dst].describe())
            changed = True
        for dst, wanted in sorted(want.items()):
            have = live.get(dst)
            if have is not None and have.src == wanted.src and have.mtu == wanted.mtu:
                continue
            await ipr.route(
                "replace",
                dst=str(dst),
                oif=index,
                prefsrc=str(wanted.src),
                metrics={"mtu": wanted.mtu},
                proto=RTPROT_STATIC,
                scope=RT_SCOPE_LINK,
                table=MAIN_TABLE,
            )
            if have is None:
                log.info("%s: route %s added (%s)", dev, dst, _describe(wanted))
            else:
                log.info("%s: route %s %s => %s", dev, dst, have.describe(), _describe(wanted))
            changed = True
        return changed


async def host_prefixes(exclude_ifaces: Sequence[str] = ()) -> list[IPv4Network]:
    """Every IPv4 destination in the main routing table, except default routes and routes
    through `exclude_ifaces`: what a new pool must not overlap. Sorted, without duplicates."""
    async with _netlink("list routes") as ipr:
        names = {msg["index"]: msg.get("ifname") for msg in await _dump(ipr, "link")}
        prefixes: set[IPv4Network] = set()
        for msg in await _dump(ipr, "route", family=AF_INET, table=MAIN_TABLE):
            if msg.get("table") != MAIN_TABLE or msg["dst_len"] == 0:
                continue
            if names.get(msg.get("oif")) in exclude_ifaces:
                continue
            prefixes.add(_parse_route(msg).dst)
    return sorted(prefixes)
