"""Address management, pure: a mesh IP and a container subnet per node, never overlapping.

Allocation takes the lowest free address/subnet, so a fresh mesh reads 100.64.0.1, .2, ... and
10.42.0.0/24, 10.42.1.0/24, ...; it is stable (a key already allocated keeps its allocation).
Mesh IPs skip the pool's network and broadcast addresses and every x.y.z.0, which some stacks
and humans mistake for a network address.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import TypeVar

from shoal.control.errors import PoolExhausted, ServerConfigError

DEFAULT_MESH_POOL = IPv4Network("100.64.0.0/10")
DEFAULT_CONTAINER_POOL = IPv4Network("10.42.0.0/16")
DEFAULT_SUBNET_PREFIX = 24
MAX_SUBNET_PREFIX = 30  # a container subnet needs a gateway and at least one container

K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class Pools:
    mesh_pool: IPv4Network
    container_pool: IPv4Network
    subnet_prefix: int

    def __post_init__(self) -> None:
        if self.mesh_pool.prefixlen > 30:
            raise ServerConfigError(f"mesh pool {self.mesh_pool} is too small (at most /30)")
        if not self.container_pool.prefixlen <= self.subnet_prefix <= MAX_SUBNET_PREFIX:
            raise ServerConfigError(
                f"subnet prefix /{self.subnet_prefix} must be between the container pool's "
                f"/{self.container_pool.prefixlen} and /{MAX_SUBNET_PREFIX}"
            )
        if self.mesh_pool.overlaps(self.container_pool):
            raise ServerConfigError(
                f"mesh pool {self.mesh_pool} overlaps container pool {self.container_pool}"
            )

    def conflict(self, prefixes: Iterable[IPv4Network]) -> tuple[IPv4Network, IPv4Network] | None:
        """The first (host prefix, pool) that overlap; default routes (/0) do not count."""
        for prefix in prefixes:
            if prefix.prefixlen == 0:
                continue
            for pool in (self.mesh_pool, self.container_pool):
                if prefix.overlaps(pool):
                    return prefix, pool
        return None


@dataclass(frozen=True, slots=True)
class Allocation:
    mesh_ip: IPv4Address
    subnet: IPv4Network


def usable_mesh_ip(ip: IPv4Address, pool: IPv4Network) -> bool:
    return (
        ip in pool
        and ip != pool.network_address
        and ip != pool.broadcast_address
        and int(ip) & 0xFF != 0
    )


def lowest_free_ip(pool: IPv4Network, used: Iterable[IPv4Address]) -> IPv4Address:
    taken = {int(ip) for ip in used}
    last = int(pool.broadcast_address) - 1
    candidate = int(pool.network_address) + 1
    while candidate <= last:
        if candidate & 0xFF == 0:
            candidate += 1
            continue
        if candidate not in taken:
            return IPv4Address(candidate)
        candidate += 1
    raise PoolExhausted(
        f"mesh pool {pool} is exhausted ({len(taken)} nodes); remove nodes or restart the "
        "server with a larger --mesh-pool"
    )


def lowest_free_subnet(pool: IPv4Network, prefix: int, used: Iterable[IPv4Network]) -> IPv4Network:
    size = 1 << (32 - prefix)
    taken: set[int] = set()
    for net in used:
        # Mark every /prefix block the used subnet touches (it may have another size if the
        # prefix was changed; a block is free only if nothing in it is used).
        first = int(net.network_address) // size * size
        taken.update(range(first, int(net.broadcast_address) + 1, size))
    start = int(pool.network_address)
    for index in range(1 << (prefix - pool.prefixlen)):
        candidate = start + index * size
        if candidate not in taken:
            return IPv4Network((candidate, prefix))
    raise PoolExhausted(
        f"container pool {pool} has no free /{prefix} left ({len(taken)} hosts); remove nodes or "
        "use a larger --container-pool or a longer --subnet-prefix"
    )


def allocate(pools: Pools, existing: Mapping[K, Allocation], owner: K) -> Allocation:
    """`owner`'s allocation: the one it has, else the lowest free mesh IP and subnet."""
    current = existing.get(owner)
    if current is not None:
        return current
    return Allocation(
        mesh_ip=lowest_free_ip(pools.mesh_pool, (a.mesh_ip for a in existing.values())),
        subnet=lowest_free_subnet(
            pools.container_pool, pools.subnet_prefix, (a.subnet for a in existing.values())
        ),
    )
