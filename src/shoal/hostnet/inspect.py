"""Read-only views of the host's networking for `shoal doctor`: a link's kind, MTU and state,
the routes on one device, and whether IPv4 forwarding is on. Nothing here changes the host."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from socket import AF_INET

from shoal.hostnet.errors import HostNetError
from shoal.hostnet.netlink import MAIN_TABLE, RTPROT_KERNEL, _dump, _netlink, _parse_route
from shoal.hostnet.sysctl import IP_FORWARD

IFF_UP = 1


@dataclass(frozen=True, slots=True)
class LinkState:
    kind: str  # "wireguard", "tun", "" when the kernel does not say
    mtu: int
    up: bool  # administratively up (IFF_UP)


async def link_state(name: str) -> LinkState | None:
    """The link `name`, or None when there is none."""
    async with _netlink(f"look up {name}") as ipr:
        found = await ipr.link_lookup(ifname=name)
        if not found:
            return None
        (link,) = await ipr.link("get", index=found[0])
    return LinkState(
        kind=str(link.get(("linkinfo", "kind")) or ""),
        mtu=int(link.get("mtu") or 0),
        up=bool(link["flags"] & IFF_UP),
    )


async def routes_on(dev: str) -> dict[IPv4Network, int | None]:
    """Destination -> route MTU (None: unset) of the non-connected main-table routes on `dev`;
    empty when `dev` does not exist."""
    async with _netlink(f"list routes on {dev}") as ipr:
        found = await ipr.link_lookup(ifname=dev)
        if not found:
            return {}
        index = found[0]
        routes: dict[IPv4Network, int | None] = {}
        for msg in await _dump(ipr, "route", family=AF_INET, table=MAIN_TABLE, oif=index):
            if msg.get("table") != MAIN_TABLE or msg.get("oif") != index:
                continue
            route = _parse_route(msg)
            if route.proto != RTPROT_KERNEL:
                routes[route.dst] = route.mtu
    return routes


def ip_forward_on(path: Path = IP_FORWARD) -> bool:
    try:
        return path.read_text().strip() == "1"
    except OSError as exc:
        raise HostNetError(f"cannot read {path}: {exc}") from exc
