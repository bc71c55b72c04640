"""The registry: its writes, the full map, deltas built from the change log, long-polls, and
the offline flags the sweep sets (the log and liveness alone: test_changelog, test_liveness)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network

import pytest

from shoal.control.errors import CredentialInvalid
from shoal.control.registry import Registry
from shoal.model.netmap import Container, Endpoint, MeshSettings
from shoal.store.memory import MemoryStore
from tests.control.servers import rec

SETTINGS = MeshSettings(
    mesh_pool=IPv4Network("100.64.0.0/10"), container_pool=IPv4Network("10.42.0.0/16")
)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def registry_with(*indexes: int, log_limit: int = 100) -> Registry:
    reg = await Registry.load(MemoryStore(), SETTINGS, clock=lambda: T0, log_limit=log_limit)
    for i in indexes:
        await reg.save(rec(i))
    return reg


async def polls_started(reg: Registry, polls: int) -> None:
    """Until `polls` long-polls wait (each takes a turn of the loop to start)."""
    while reg.log.live_polls != polls:
        await asyncio.sleep(0)


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


async def test_full_maps_list_every_other_node_in_id_order_across_saves_and_removals() -> None:
    reg = await registry_with(7, 3, 12, 1, 9)  # ids n7, n3, n12, n1, n9: not in id order
    await reg.remove("n12")
    await reg.save(replace(rec(3), tags=("db",)))  # a change keeps its place
    await reg.save(rec(5))
    ids = sorted(["n7", "n3", "n1", "n9", "n5"])
    for me in ids:
        full = reg.full_map(me)
        assert full.self_node.id == me
        assert [p.id for p in full.peers] == [i for i in ids if i != me]
    assert reg.full_map("n1").peers[ids.index("n3") - 1].tags == ("db",)


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
    await polls_started(reg, 1)
    assert reg.online("n1")
    await reg.save(rec(2))
    update = await poll
    assert update.kind == "delta" and [p.id for p in update.peers_changed] == ["n2"]


async def test_long_poll_of_a_removed_node_is_rejected() -> None:
    reg = await registry_with(1, 2)
    poll = asyncio.create_task(reg.map_update("n1", since=2, wait=60))
    await polls_started(reg, 1)
    await reg.remove("n1")
    with pytest.raises(CredentialInvalid):
        await poll


def box(n: int, node: int, name: str = "", **kw: object) -> Container:
    return Container(
        id=f"{n:064x}",
        node_id=f"n{node}",
        name=name or f"c{n}",
        ip=IPv4Address(f"10.42.{node}.{n + 1}"),
        **kw,
    )


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


async def test_container_changes_are_one_revision_each_report() -> None:
    reg = await registry_with(1, 2)
    rev = await reg.save_containers("n1", [box(1, 1), box(2, 1)], [])
    assert rev == reg.revision == 3
    delta = await reg.map_update("n2", since=2, wait=0)
    assert [c.name for c in delta.containers_changed] == ["c1", "c2"]
    await reg.save_containers("n1", [box(1, 1, health="unhealthy")], [box(2, 1).id])
    delta = await reg.map_update("n2", since=3, wait=0)
    assert [(c.name, c.health) for c in delta.containers_changed] == [("c1", "unhealthy")]
    assert delta.containers_removed == (box(2, 1).key,)
    full = reg.full_map("n2")
    assert [c.name for c in full.containers] == ["c1"]


async def test_nodes_not_part_of_a_change_share_one_delta() -> None:
    reg = await registry_with(1, 2, 3)
    await reg.save_containers("n1", [box(1, 1)], [])
    await reg.save(replace(rec(3), name="renamed"))
    two = await reg.map_update("n2", since=3, wait=0)
    one = await reg.map_update("n1", since=3, wait=0)
    assert two is await reg.map_update("n2", since=3, wait=0)
    assert one is two  # neither n1 nor n2 changed: the same object (and the same JSON)
    three = await reg.map_update("n3", since=3, wait=0)
    assert three.self_node is not None and three.peers_changed == ()
    assert three.containers_changed == two.containers_changed


async def test_sweep_withdraws_silent_nodes_and_seen_brings_them_back() -> None:
    clock = Clock()
    store = MemoryStore()
    reg = await Registry.load(store, SETTINGS, clock=clock, heartbeat_timeout=timedelta(seconds=15))
    for i in (1, 2):
        await reg.save(rec(i))
    await reg.save_containers("n1", [box(1, 1)], [])
    await reg.save_containers("n2", [box(2, 2)], [])
    clock.now = T0 + timedelta(seconds=15)
    assert await reg.sweep() == []  # exactly the timeout: still alive
    await reg.seen("n2")
    clock.now = T0 + timedelta(seconds=16)
    assert await reg.sweep() == ["n1"]
    assert not reg.online("n1") and reg.online("n2")
    assert await reg.sweep() == []  # once
    delta = await reg.map_update("n2", since=4, wait=0)
    assert delta.containers_removed == (box(1, 1).key,) and delta.containers_changed == ()
    assert [c.name for c in reg.full_map("n2").containers] == ["c2"]
    assert [p.id for p in reg.full_map("n2").peers] == ["n1"]  # the peer stays
    assert (await store.load(10)).nodes[0].online is False

    await reg.seen("n1")
    assert reg.online("n1")
    back = await reg.map_update("n2", since=5, wait=0)
    assert [c.name for c in back.containers_changed] == ["c1"]


async def test_a_restart_counts_as_seeing_every_node() -> None:
    clock = Clock()
    store = MemoryStore()
    reg = await Registry.load(store, SETTINGS, clock=clock)
    await reg.save(replace(rec(1), last_seen=T0))
    await reg.save_containers("n1", [box(1, 1)], [])
    clock.now = T0 + timedelta(minutes=5)  # the server was down for 5 minutes
    again = await Registry.load(store, SETTINGS, clock=clock)
    assert await again.sweep() == [] and again.online("n1")
    assert again.last_seen("n1") == T0
    clock.now += timedelta(seconds=16)
    assert await again.sweep() == ["n1"]


async def test_a_poll_wakes_on_a_container_change_at_once() -> None:
    reg = await registry_with(1, 2)
    polls = [asyncio.create_task(reg.map_update(n, since=2, wait=60)) for n in ("n1", "n2")]
    await polls_started(reg, 2)
    await reg.save_containers("n1", [box(1, 1)], [])
    done, _ = await asyncio.wait(polls, timeout=1)
    assert len(done) == 2
    assert all(p.result().containers_changed == (box(1, 1),) for p in polls)


async def test_a_node_reporting_another_nodes_container_id_gets_its_own_container() -> None:
    """Container identity is (node, container id): n2 claiming n1's id neither moves n1's
    container nor shadows it, and each node's removal touches only its own."""
    reg = await registry_with(1, 2)
    mine = box(1, 1)
    await reg.save_containers("n1", [mine], [])
    claim = box(1, 2)
    await reg.save_containers("n2", [claim], [])
    assert reg.containers_of("n1") == {mine.id: mine}
    assert reg.containers_of("n2") == {claim.id: claim}
    assert reg.containers() == [mine, claim]
    await reg.save_containers("n2", [], [claim.id])
    assert reg.containers() == [mine]
    delta = await reg.map_update("n1", since=reg.revision - 1, wait=0)
    assert delta.containers_removed == (("n2", claim.id),) and delta.containers_changed == ()


async def test_container_log_trimming_gives_a_full_map() -> None:
    reg = await registry_with(1, 2, log_limit=2)
    for i in range(5):
        await reg.save_containers("n1", [box(i, 1)], [])
    assert (await reg.map_update("n2", since=2, wait=0)).kind == "full"
    delta = await reg.map_update("n2", since=reg.revision - 1, wait=0)
    assert delta.kind == "delta" and [c.name for c in delta.containers_changed] == ["c4"]


async def test_ephemeral_and_rotating_nodes_are_indexed_through_saves_and_removals() -> None:
    """The sweep's lists: only the nodes it has work for, kept current by every write."""
    reg = await registry_with(1, 2, 3)
    assert reg.ephemeral_nodes() == [] and reg.rotating_nodes() == []
    await reg.save(replace(rec(2), ephemeral=True))
    rotating = replace(rec(3), next_key=rec(9).public_key, switch_at=T0)
    await reg.save(rotating)
    assert [n.id for n in reg.ephemeral_nodes()] == ["n2"]
    assert [n.id for n in reg.rotating_nodes()] == ["n3"]
    await reg.save(replace(rotating, public_key=rec(9).public_key, next_key=None, switch_at=None))
    await reg.remove("n2")
    assert reg.ephemeral_nodes() == [] and reg.rotating_nodes() == []


async def test_every_heartbeat_of_one_revision_is_the_same_update() -> None:
    """One "none" object per revision: the encoder turns it into bytes once for all streams."""
    reg = await registry_with(1, 2)
    first = await reg.map_update("n1", since=2, wait=0)
    assert first.kind == "none" and first.revision == 2
    assert await reg.map_update("n2", since=2, wait=0) is first
    await reg.save(rec(3))
    again = await reg.map_update("n1", since=3, wait=0)
    assert again.kind == "none" and again.revision == 3 and again is not first
