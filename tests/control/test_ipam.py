"""IPAM: lowest free, never overlapping, stable per key, a clear error when exhausted."""

from __future__ import annotations

import itertools
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.control.errors import PoolExhausted, ServerConfigError
from shoal.control.ipam import (
    Allocation,
    Pools,
    allocate,
    lowest_free_ip,
    lowest_free_subnet,
    usable_mesh_ip,
)

DEFAULT = Pools(IPv4Network("100.64.0.0/10"), IPv4Network("10.42.0.0/16"), 24)


def test_first_allocations_read_naturally() -> None:
    taken: dict[str, Allocation] = {}
    for owner in "abc":
        taken[owner] = allocate(DEFAULT, taken, owner)
    assert [str(a.mesh_ip) for a in taken.values()] == ["100.64.0.1", "100.64.0.2", "100.64.0.3"]
    assert [str(a.subnet) for a in taken.values()] == [
        "10.42.0.0/24",
        "10.42.1.0/24",
        "10.42.2.0/24",
    ]


def test_mesh_ips_skip_dot_zero_and_reuse_holes() -> None:
    pool = IPv4Network("100.64.0.0/23")
    used = [IPv4Address(int(pool.network_address) + i) for i in range(1, 255)]  # .1 … .254
    assert lowest_free_ip(pool, used) == IPv4Address("100.64.0.255")
    used.append(IPv4Address("100.64.0.255"))
    assert lowest_free_ip(pool, used) == IPv4Address("100.64.1.1")  # not 100.64.1.0
    used.remove(IPv4Address("100.64.0.7"))
    assert lowest_free_ip(pool, used) == IPv4Address("100.64.0.7")


def test_exhaustion_says_which_pool_and_what_to_do() -> None:
    with pytest.raises(
        PoolExhausted, match=r"mesh pool 100\.64\.0\.0/30 is exhausted.*--mesh-pool"
    ):
        lowest_free_ip(
            IPv4Network("100.64.0.0/30"), [IPv4Address("100.64.0.1"), IPv4Address("100.64.0.2")]
        )
    with pytest.raises(PoolExhausted, match=r"container pool 10\.0\.0\.0/24 has no free /25"):
        lowest_free_subnet(
            IPv4Network("10.0.0.0/24"),
            25,
            [IPv4Network("10.0.0.0/25"), IPv4Network("10.0.0.128/25")],
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
    got = lowest_free_subnet(IPv4Network("10.42.0.0/16"), 24, [IPv4Network("10.42.0.0/23")])
    assert got == IPv4Network("10.42.2.0/24")


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
    mesh_capacity = sum(1 for ip in pools.mesh_pool if usable_mesh_ip(ip, pools.mesh_pool))
    subnet_capacity = 2 ** (pools.subnet_prefix - pools.container_pool.prefixlen)
    for add, owner in ops:
        if not add:
            taken.pop(owner, None)
            continue
        before = taken.get(owner)
        try:
            alloc = allocate(pools, taken, owner)
        except PoolExhausted:
            assert before is None
            assert len(taken) >= min(mesh_capacity, subnet_capacity)
            continue
        if before is not None:
            assert alloc == before  # stable: the same owner keeps its allocation
        taken[owner] = alloc
        assert usable_mesh_ip(alloc.mesh_ip, pools.mesh_pool)
        assert alloc.subnet.subnet_of(pools.container_pool)
        assert alloc.subnet.prefixlen == pools.subnet_prefix
    ips = [a.mesh_ip for a in taken.values()]
    assert len(set(ips)) == len(ips)
    subnets = sorted(a.subnet for a in taken.values())
    assert all(not x.overlaps(y) for x, y in itertools.pairwise(subnets))
