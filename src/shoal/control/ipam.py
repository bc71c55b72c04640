"""Address management, pure: a mesh IP and a container subnet per node, never overlapping.

Allocation takes the lowest free address/subnet, so a fresh mesh reads 100.64.0.1, .2, ... and
10.42.0.0/24, 10.42.1.0/24, ...; it is stable (a key already allocated keeps its allocation).
Mesh IPs skip the pool's network and broadcast addresses and every x.y.z.0, which some stacks
and humans mistake for a network address.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Generic, TypeVar

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
    subnet: IPv4Network | None  # None: a host without Docker has no container subnet


class Ledger(Generic[K]):
    """The allocations in use and the integers they take, kept up to date as owners come and
    go. Allocating then scans integers: rebuilding N address objects for every registration
    was most of a join's cost at 5,000 nodes."""

    def __init__(self, existing: Mapping[K, Allocation] | None = None) -> None:
        self._by_owner: dict[K, Allocation] = {}
        self._ips: set[int] = set()
        # Container-pool blocks of `_block_size` addresses that some subnet touches (a subnet
        # may have another size if the prefix was changed), with how many subnets touch each.
        self._block_size = 0
        self._blocks: Counter[int] = Counter()
        # Where the last scan of a pool found its lowest free address or block: everything
        # below is taken until something is removed, so a fleet joining costs O(1) each.
        self._ip_scan_from: dict[IPv4Network, int] = {}  # pool → address
        self._block_scan_from: dict[tuple[IPv4Network, int], int] = {}  # (pool, prefix) → index
        for owner, alloc in (existing or {}).items():
            self.add(owner, alloc)

    def __len__(self) -> int:
        return len(self._by_owner)

    def add(self, owner: K, alloc: Allocation) -> None:
        if self._by_owner.get(owner) == alloc:
            return  # a node saved again (new endpoints): nothing moved, the scans stay valid
        self.remove(owner)
        self._by_owner[owner] = alloc
        self._ips.add(int(alloc.mesh_ip))
        if self._block_size and alloc.subnet is not None:
            self._blocks.update(_blocks(alloc.subnet, self._block_size))

    def remove(self, owner: K) -> None:
        alloc = self._by_owner.pop(owner, None)
        if alloc is None:
            return
        self._ips.discard(int(alloc.mesh_ip))
        self._ip_scan_from.clear()
        self._block_scan_from.clear()
        if self._block_size and alloc.subnet is not None:
            for block in _blocks(alloc.subnet, self._block_size):
                self._blocks[block] -= 1
                if self._blocks[block] <= 0:
                    del self._blocks[block]

    def allocate(self, pools: Pools, owner: K, *, subnet: bool = True) -> Allocation:
        """`owner`'s allocation: the one it has, else the lowest free mesh IP and (unless not
        `subnet`: a host without Docker) subnet; the caller adds it once the node is saved."""
        current = self._by_owner.get(owner)
        if current is not None:
            return current
        return Allocation(
            mesh_ip=self._lowest_free_ip(pools.mesh_pool),
            subnet=(
                self._lowest_free_subnet(pools.container_pool, pools.subnet_prefix)
                if subnet
                else None
            ),
        )

    def _lowest_free_ip(self, pool: IPv4Network) -> IPv4Address:
        last = int(pool.broadcast_address) - 1
        candidate = self._ip_scan_from.get(pool, int(pool.network_address) + 1)
        while candidate <= last:
            if candidate & 0xFF == 0:
                candidate += 1
                continue
            if candidate not in self._ips:
                self._ip_scan_from[pool] = candidate
                return IPv4Address(candidate)
            candidate += 1
        raise PoolExhausted(
            f"mesh pool {pool} is exhausted ({len(self._ips)} nodes); remove nodes or restart "
            "the server with a larger --mesh-pool"
        )

    def _lowest_free_subnet(self, pool: IPv4Network, prefix: int) -> IPv4Network:
        size = 1 << (32 - prefix)
        if size != self._block_size:
            self._block_size = size
            self._blocks = Counter()
            for alloc in self._by_owner.values():
                if alloc.subnet is not None:
                    self._blocks.update(_blocks(alloc.subnet, size))
        start = int(pool.network_address)
        for index in range(
            self._block_scan_from.get((pool, prefix), 0), 1 << (prefix - pool.prefixlen)
        ):
            candidate = start + index * size
            if candidate not in self._blocks:
                self._block_scan_from[pool, prefix] = index
                return IPv4Network((candidate, prefix))
        raise PoolExhausted(
            f"container pool {pool} has no free /{prefix} left ({len(self)} hosts); remove "
            "nodes or use a larger --container-pool or a longer --subnet-prefix"
        )


def _blocks(subnet: IPv4Network, size: int) -> range:
    """The starts of the `size`-address blocks that `subnet` touches."""
    first = int(subnet.network_address) // size * size
    return range(first, int(subnet.broadcast_address) + 1, size)
