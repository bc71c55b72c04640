"""The mapper: full map, then deltas built from the change log, then long-polls."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network

import pytest

from shoal.control.errors import CredentialInvalid
from shoal.control.registry import Registry
from shoal.model.keys import PrivateKey
from shoal.model.netmap import Endpoint, MeshSettings
from shoal.store.base import NodeRecord
from shoal.store.memory import MemoryStore

SETTINGS = MeshSettings(
    mesh_pool=IPv4Network("100.64.0.0/10"), container_pool=IPv4Network("10.42.0.0/16")
)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def rec(i: int) -> NodeRecord:
    return NodeRecord(
        id=f"n{i}",
        name=f"h{i}",
        public_key=PrivateKey(bytes([i]) * 32).public_key(),
        mesh_ip=IPv4Address(f"100.64.0.{i}"),
        subnet=IPv4Network(f"10.42.{i}.0/24"),
        endpoints=(),
        credential_hash=f"c{i}",
        created_at=T0,
    )


async def registry_with(*indexes: int, log_limit: int = 100) -> Registry:
    reg = await Registry.load(MemoryStore(), SETTINGS, clock=lambda: T0, log_limit=log_limit)
    for i in indexes:
        await reg.save(rec(i))
    return reg


async def test_full_then_delta_then_none() -> None:
    reg = await registry_with(1, 2, 3)
    full = await reg.map_update("n1", since=0, wait=0)
    assert full.kind == "full" and full.full is not None
    assert full.full.self_node.id == "n1"
    assert [p.id for p in full.full.peers] == ["n2", "n3"]
    assert full.full.settings == SETTINGS and full.revision == 3

    moved = replace(rec(2), endpoints=(Endpoint(host=IPv4Address("192.0.2.2"), port=51820),))
    await reg.save(moved)
    await reg.save(rec(4))
    delta = await reg.map_update("n1", since=3, wait=0)
    assert delta.kind == "delta" and delta.revision == 5
    assert [p.id for p in delta.peers_changed] == ["n2", "n4"]
    assert delta.peers_changed[0] == moved.node()
    assert delta.self_node is None and delta.peers_removed == ()
    assert full.full.apply(delta) == reg.full_map("n1")

    assert (await reg.map_update("n1", since=5, wait=0)).kind == "none"


async def test_removal_and_own_changes() -> None:
    reg = await registry_with(1, 2, 3)
    await reg.remove("n3")
    await reg.save(replace(rec(1), name="renamed"))
    delta = await reg.map_update("n1", since=3, wait=0)
    assert delta.peers_removed == ("n3",)
    assert delta.self_node is not None and delta.self_node.name == "renamed"
    assert delta.peers_changed == ()
    other = await reg.map_update("n2", since=3, wait=0)
    assert other.peers_removed == ("n3",) and [p.name for p in other.peers_changed] == ["renamed"]


async def test_since_too_old_or_unknown_gets_a_full_map() -> None:
    reg = await registry_with(1, 2, log_limit=2)
    for _ in range(3):  # enough churn to trim the log past revision 2
        await reg.save(rec(2))
        await reg.save(rec(3))
    assert (await reg.map_update("n1", since=1, wait=0)).kind == "full"
    assert (await reg.map_update("n1", since=reg.revision - 1, wait=0)).kind == "delta"
    assert (await reg.map_update("n1", since=reg.revision + 7, wait=0)).kind == "full"


async def test_deltas_survive_a_restart() -> None:
    store = MemoryStore()
    reg = await Registry.load(store, SETTINGS, clock=lambda: T0)
    for i in (1, 2, 3):
        await reg.save(rec(i))
    await reg.remove("n2")
    again = await Registry.load(store, SETTINGS, clock=lambda: T0)
    delta = await again.map_update("n1", since=2, wait=0)
    assert delta.kind == "delta" and delta.revision == 4
    assert [p.id for p in delta.peers_changed] == ["n3"] and delta.peers_removed == ("n2",)


async def test_long_poll_wakes_on_change() -> None:
    reg = await registry_with(1)
    poll = asyncio.create_task(reg.map_update("n1", since=1, wait=60))
    await asyncio.sleep(0)  # let the poll start waiting
    assert reg.online("n1")
    await reg.save(rec(2))
    update = await poll
    assert update.kind == "delta" and [p.id for p in update.peers_changed] == ["n2"]


async def test_long_poll_of_a_removed_node_is_rejected() -> None:
    reg = await registry_with(1, 2)
    poll = asyncio.create_task(reg.map_update("n1", since=2, wait=60))
    await asyncio.sleep(0)
    await reg.remove("n1")
    with pytest.raises(CredentialInvalid):
        await poll


async def test_close_ends_long_polls() -> None:
    reg = await registry_with(1)
    poll = asyncio.create_task(reg.map_update("n1", since=1, wait=60))
    await asyncio.sleep(0)
    reg.close()
    assert (await poll).kind == "none"
    assert (await reg.map_update("n1", since=1, wait=60)).kind == "none"
