"""What the agent learns about its host before joining: addresses and occupied prefixes."""

from __future__ import annotations

import json
import subprocess
from ipaddress import IPv4Address, IPv4Network

from shoal import hostnet
from shoal.dockerhost import DockerHost
from shoal.plan.hostconfig import BRIDGE, DOCKER_NETWORK, INTERFACE

# Interfaces whose addresses are not how other hosts reach this one.
_NOT_UNDERLAY = ("lo", "docker", "br-", "veth", "shoal")


def guess_advertise_addr() -> IPv4Address | None:
    """The first global IPv4 address on a non-container interface (prefer the default route's)."""
    out = subprocess.run(
        ["ip", "-j", "-4", "route", "show", "default"], capture_output=True, text=True, check=False
    )
    default_dev = {r.get("dev") for r in json.loads(out.stdout or "[]")}
    out = subprocess.run(
        ["ip", "-j", "-4", "addr", "show", "scope", "global"],
        capture_output=True,
        text=True,
        check=False,
    )
    candidates: list[tuple[bool, IPv4Address]] = []
    for link in json.loads(out.stdout or "[]"):
        name = link.get("ifname", "")
        if name.startswith(_NOT_UNDERLAY):
            continue
        for addr in link.get("addr_info", []):
            candidates.append((name not in default_dev, IPv4Address(addr["local"])))
    return min(candidates)[1] if candidates else None


async def occupied_prefixes(docker: DockerHost | None) -> tuple[IPv4Network, ...]:
    """Routes and Docker networks (None: a host without Docker) already on this host, other
    than shoal's own."""
    routes = await hostnet.host_prefixes(exclude_ifaces=(INTERFACE, BRIDGE))
    networks = [] if docker is None else await docker.network_subnets(exclude=(DOCKER_NETWORK,))
    return tuple(
        sorted(set(routes) | set(networks), key=lambda n: (int(n.network_address), n.prefixlen))
    )
