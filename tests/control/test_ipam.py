"""IPAM: lowest free, never overlapping, stable per key, a clear error when exhausted."""

from __future__ import annotations

import itertools
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.control.errors import PoolExhausted, ServerConfigError
from shoal.control.ipam import Allocation, Ledger, Pools

DEFAULT = Pools(IPv4Network("100.64.0.0/10"), IPv4Network("10.42.0.0/16"), 24)
ANY_SUBNET = IPv4Network("10.99.0.0/24")  # outside the pools the tests allocate from
ANY_IP = IPv4Address("192.0.2.1")


def usable_mesh_ip(ip: IPv4Address, pool: IPv4Network) -> bool:
    return (
        ip in pool
        and ip != pool.network_address
        and ip != pool.broadcast_address
        and int(ip) & 0xFF != 0
    )


def holding_ips(ips: list[IPv4Address]) -> Ledger[int]:
    return Ledger({i: Allocation(mesh_ip=ip, subnet=ANY_SUBNET) for i, ip in enumerate(ips)})


def holding_subnets(subnets: list[IPv4Network]) -> Ledger[int]:
    return Ledger({i: Allocation(mesh_ip=ANY_IP, subnet=net) for i, net in enumerate(subnets)})


def test_first_allocations_read_naturally() -> None:
    taken: dict[str, Allocation] = {}
    ledger: Ledger[str] = Ledger()
    for owner in "abc":
        taken[owner] = ledger.allocate(DEFAULT, owner)
        ledger.add(owner, taken[owner])
    assert [str(a.mesh_ip) for a in taken.values()] == ["100.64.0.1", "100.64.0.2", "100.64.0.3"]
    assert [str(a.subnet) for a in taken.values()] == [
        "10.42.0.0/24",
        "10.42.1.0/24",
        "10.42.2.0/24",
    ]


def test_mesh_ips_skip_dot_zero_and_reuse_holes() -> None:
    pools = Pools(IPv4Network("100.64.0.0/23"), IPv4Network("10.42.0.0/16"), 24)
    used = [IPv4Address(int(pools.mesh_pool.network_address) + i) for i in range(1, 255)]
    ledger = holding_ips(used)  # .1 … .254
    assert ledger.allocate(pools, -1).mesh_ip == IPv4Address("100.64.0.255")
    ledger.add(-1, Allocation(mesh_ip=IPv4Address("100.64.0.255"), subnet=ANY_SUBNET))
    assert ledger.allocate(pools, -2).mesh_ip == IPv4Address("100.64.1.1")  # not 100.64.1.0
    ledger.remove(used.index(IPv4Address("100.64.0.7")))
    assert ledger.allocate(pools, -2).mesh_ip == IPv4Address("100.64.0.7")


def test_exhaustion_says_which_pool_and_what_to_do() -> None:
    with pytest.raises(
        PoolExhausted, match=r"mesh pool 100\.64\.0\.0/30 is exhausted.*--mesh-pool"
    ):
        holding_ips([IPv4Address("100.64.0.1"), IPv4Address("100.64.0.2")]).allocate(
            Pools(IPv4Network("100.64.0.0/30"), IPv4Network("10.42.0.0/16"), 24), -1
        )
    with pytest.raises(PoolExhausted, match=r"container pool 10\.0\.0\.0/24 has no free /25"):
        holding_subnets([IPv4Network("10.0.0.0/25"), IPv4Network("10.0.0.128/25")]).allocate(
            Pools(IPv4Network("100.64.0.0/10"), IPv4Network("10.0.0.0/24"), 25), -1
        )


def test_pools_validate() -> None:
    with pytest.raises(ServerConfigError, match="overlaps"):
        Pools(IPv4Network("10.0.0.0/8"), IPv4Network("10.42.0.0/16"), 24)
    with pytest.raises(ServerConfigError, match="prefix"):
        Pools(IPv4Network("100.64.0.0/10"), IPv4Network("10.42.0.0/16"), 12)


def test_conflict_ignores_default_routes() -> None:
    assert DEFAULT.conflict([IPv4Network("0.0.0.0/0"), IPv4Network("192.168.1.0/24")]) is None
    assert DEFAULT.conflict([IPv4Network("10.0.0.0/8")]) == (
        IPv4Network("10.0.0.0/8"),
        IPv4Network("10.42.0.0/16"),
    )


def test_subnets_respect_a_used_subnet_of_another_size() -> None:
    ledger = holding_subnets([IPv4Network("10.42.0.0/23")])
    assert ledger.allocate(DEFAULT, -1).subnet == IPv4Network("10.42.2.0/24")
    ledger.remove(0)  # freed blocks are free again
    assert ledger.allocate(DEFAULT, -1).subnet == IPv4Network("10.42.0.0/24")


# A small mesh pool (/27../29) and container pool so that exhaustion is reachable.
pools_st = st.builds(
    lambda mesh, cont, extra: Pools(
        IPv4Network(f"100.64.0.0/{mesh}"), IPv4Network(f"10.42.0.0/{cont}"), cont + extra
    ),
    st.integers(27, 29),
    st.integers(24, 28),
    st.integers(0, 2),
)
ops_st = st.lists(st.tuples(st.booleans(), st.integers(0, 40)), max_size=80)


@settings(max_examples=200, deadline=None)
@given(pools=pools_st, ops=ops_st)
def test_allocations_never_overlap_are_stable_and_exhaust_cleanly(
    pools: Pools, ops: list[tuple[bool, int]]
) -> None:
    taken: dict[int, Allocation] = {}
    ledger: Ledger[int] = Ledger()
    mesh_capacity = sum(1 for ip in pools.mesh_pool if usable_mesh_ip(ip, pools.mesh_pool))
    subnet_capacity = 2 ** (pools.subnet_prefix - pools.container_pool.prefixlen)
    for add, owner in ops:
        if not add:
            taken.pop(owner, None)
            ledger.remove(owner)
            continue
        before = taken.get(owner)
        try:
            alloc = ledger.allocate(pools, owner)
        except PoolExhausted:
            assert before is None
            assert len(taken) >= min(mesh_capacity, subnet_capacity)
            continue
        if before is not None:
            assert alloc == before  # stable: the same owner keeps its allocation
        taken[owner] = alloc
        ledger.add(owner, alloc)
        assert usable_mesh_ip(alloc.mesh_ip, pools.mesh_pool)
        assert alloc.subnet.subnet_of(pools.container_pool)
        assert alloc.subnet.prefixlen == pools.subnet_prefix
    ips = [a.mesh_ip for a in taken.values()]
    assert len(set(ips)) == len(ips)
    subnets = sorted(a.subnet for a in taken.values())
    assert all(not x.overlaps(y) for x, y in itertools.pairwise(subnets))
