"""The WireGuard interface as a network link: kind, MTU, address, up, delete (netlink).

A deliberate twin of a few `shoal.hostnet` calls: the import contract keeps the adapters
independent of each other, and the data plane must bring its own interface up by itself.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from ipaddress import IPv4Interface
from socket import AF_INET
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from shoal.dataplane.errors import DataPlaneError

log = logging.getLogger(__name__)

IFF_UP = 1
ENODEV = 19


@asynccontextmanager
async def _netlink(what: str) -> AsyncIterator[AsyncIPRoute]:
    try:
        async with AsyncIPRoute() as ipr:
            yield ipr
    except NetlinkError as exc:
        raise DataPlaneError(f"{what}: {exc.args[-1] if exc.args else exc} (netlink)") from exc
    except OSError as exc:
        raise DataPlaneError(f"{what}: {exc}") from exc


async def _find(ipr: AsyncIPRoute, name: str) -> Any | None:
    found = await ipr.link_lookup(ifname=name)
    if not found:
        return None
    (link,) = await ipr.link("get", index=found[0])
    return link


async def link_kind(name: str) -> str | None:
    """None when `name` does not exist, else its kind ("wireguard", "tun", "" if unknown)."""
    async with _netlink(f"look up {name}") as ipr:
        link = await _find(ipr, name)
    if link is None:
        return None
    return str(link.get(("linkinfo", "kind")) or "")


async def create_wireguard_link(name: str) -> None:
    """Create a kernel WireGuard link (fails without the kernel module)."""
    async with _netlink(f"create WireGuard interface {name}") as ipr:
        await ipr.link("add", ifname=name, kind="wireguard")


async def delete_link(name: str) -> bool:
    async with _netlink(f"delete {name}") as ipr:
        link = await _find(ipr, name)
        if link is None:
            return False
        try:
            await ipr.link("del", index=link["index"])
        except NetlinkError as exc:
            if exc.code == ENODEV:  # gone meanwhile
                return False
            raise
    return True


async def configure_link(name: str, address: IPv4Interface, mtu: int) -> bool:
    """MTU, `address` as the only IPv4 address, and up; only what differs is touched."""
    async with _netlink(f"configure {name}") as ipr:
        link = await _find(ipr, name)
        if link is None:
            raise DataPlaneError(f"interface {name} vanished while being configured")
        index = link["index"]
        changed = False
        if link.get("mtu") != mtu:
            await ipr.link("set", index=index, mtu=mtu)
            log.info("%s: mtu %s => %s", name, link.get("mtu"), mtu)
            changed = True
        current = {
            IPv4Interface(f"{a.get('address')}/{a['prefixlen']}")
            async for a in await ipr.addr("dump", family=AF_INET, index=index)
        }
        if current != {address}:
            # Stale first: deleting a primary address deletes its subnet's secondaries too.
            for stale in sorted(current - {address}):
                await ipr.addr(
                    "del", index=index, address=str(stale.ip), prefixlen=stale.network.prefixlen
                )
            if address not in current:
                await ipr.addr(
                    "add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen
                )
            before = ", ".join(str(a) for a in sorted(current)) or "none"
            log.info("%s: address %s => %s", name, before, address)
            changed = True
        if not link["flags"] & IFF_UP:
            await ipr.link("set", index=index, state="up")
            log.info("%s: down => up", name)
            changed = True
        return changed
