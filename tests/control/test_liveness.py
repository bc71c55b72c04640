"""Liveness: last_seen in memory and in batches to the store, the heartbeat timeout, and the
sweep's silent nodes (here and as other replicas heard of them)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta

import pytest

from shoal.control.liveness import Liveness
from shoal.store.errors import StoreError
from shoal.store.memory import MemoryStore
from tests.control.servers import rec

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TIMEOUT = timedelta(seconds=15)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


async def fleet(clock: Clock, *indexes: int) -> tuple[MemoryStore, Liveness]:
    store = MemoryStore()
    for i in indexes:
        await store.save_node(rec(i), at=T0)
    known = {f"n{i}" for i in indexes}
    return store, Liveness(store, known, clock=clock, heartbeat_timeout=TIMEOUT)


async def stored(store: MemoryStore) -> dict[str, datetime | None]:
    return {n.id: n.last_seen for n in (await store.load(10)).nodes}


async def test_last_seen_is_written_in_batches_at_most_every_10_s() -> None:
    clock = Clock()
    store, live = await fleet(clock, 1, 2)
    live.heard("n1")
    await live.flush()
    assert await stored(store) == {"n1": T0, "n2": None}
    clock.now = T0 + timedelta(seconds=5)
    live.heard("n1")
    live.heard("n2")
    await live.flush()
    assert await stored(store) == {"n1": T0, "n2": clock.now}  # n1 was written 5 s ago
    assert live.last_seen("n1") == clock.now  # memory is always current
    clock.now = T0 + timedelta(seconds=10)
    live.heard("n1")
    await live.silent()  # the sweep flushes first
    assert (await stored(store))["n1"] == clock.now


async def test_a_node_is_silent_after_the_timeout_and_only_while_online() -> None:
    clock = Clock()
    _, live = await fleet(clock, 1, 2)
    live.heard("n1")
    live.heard("n2")
    clock.now = T0 + TIMEOUT
    assert await live.silent() == [] and live.online("n1")  # exactly the timeout: alive
    live.heard("n2")
    clock.now = T0 + TIMEOUT + timedelta(seconds=1)
    assert live.silent_for("n1", clock.now) == TIMEOUT + timedelta(seconds=1)
    assert await live.silent() == ["n1"] and not live.online("n1") and live.online("n2")
    assert live.should_flip("n1", online=False, now=clock.now)
    live.set_online(["n1"], online=False)
    assert await live.silent() == []  # offline already: named once
    assert not live.should_flip("n1", online=False, now=clock.now)
    assert live.heard("n1")  # offline: the registry must bring it back
    assert live.should_flip("n1", online=True, now=clock.now)
    live.set_online(["n1"], online=True)
    assert not live.heard("n1") and live.online("n1")


async def test_the_start_counts_as_hearing_from_every_node() -> None:
    clock = Clock()
    clock.now = T0 + timedelta(minutes=5)  # the server was down for 5 minutes
    _, live = await fleet(clock, 1)
    live.stored("n1", T0)
    assert await live.silent() == [] and live.last_seen("n1") == T0
    clock.now += TIMEOUT + timedelta(seconds=1)
    assert await live.silent() == ["n1"]


async def test_a_node_another_replica_heard_of_is_not_silent() -> None:
    clock = Clock()
    store, live = await fleet(clock, 1, 2)
    clock.now = T0 + timedelta(seconds=20)
    await store.touch_nodes({"n2": clock.now})  # the other replica's sweep wrote it
    assert await live.silent() == ["n1"]
    assert live.last_seen("n2") == clock.now
    live.stored_elsewhere({"n2": T0})  # older than what is known: ignored
    assert live.last_seen("n2") == clock.now


async def test_offline_flags_follow_the_store_and_removals() -> None:
    clock = Clock()
    _, live = await fleet(clock, 1, 2)
    live.replace_offline(["n1", "n2", "gone"])  # a node this registry does not know: dropped
    assert live.offline == {"n1", "n2"}
    live.heard("n1")
    live.forget("n1")
    assert live.offline == {"n2"} and live.last_seen("n1") is None


class Mesh(set[str]):
    """The registry's node ids, counting every walk over them."""

    walks = 0

    def __iter__(self) -> Iterator[str]:
        self.walks += 1
        return super().__iter__()


class Writes(MemoryStore):
    """The store, recording each batch of last_seen writes (and failing on demand)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[set[str]] = []
        self.down = False

    async def touch_nodes(self, seen: Mapping[str, datetime]) -> None:
        if self.down:
            raise StoreError("the database is down")
        self.batches.append(set(seen))
        await super().touch_nodes(seen)


async def test_the_sweep_never_walks_the_whole_mesh() -> None:
    """The per-second sweep looks at the nodes whose time came, not at all 1,000 of them."""
    clock, store = Clock(), MemoryStore()
    known = Mesh(f"n{i}" for i in range(1000))
    live = Liveness(store, known, clock=clock, heartbeat_timeout=TIMEOUT)
    known.walks = 0
    for i in range(1000):
        live.heard(f"n{i}")
    others = sorted(f"n{i}" for i in range(1000) if i != 7)
    for second in range(1, 27):
        clock.now = T0 + timedelta(seconds=second)
        if second == 10:
            for node_id in others:
                live.heard(node_id)
        silent = await live.silent()
        if second <= 15:
            assert silent == []
        elif second == 16:
            assert silent == ["n7"]
            live.set_online(silent, online=False)
        elif second < 26:
            assert silent == []
        else:
            assert sorted(silent) == others
    assert known.walks == 0


async def test_a_node_is_named_by_every_sweep_until_it_is_offline_and_again_once_back() -> None:
    clock = Clock()
    _, live = await fleet(clock, 1)
    live.heard("n1")
    clock.now = T0 + TIMEOUT + timedelta(seconds=1)
    assert await live.silent() == ["n1"]
    assert await live.silent() == ["n1"]  # the registry did not take it offline: named again
    live.set_online(["n1"], online=False)
    assert await live.silent() == []
    live.heard("n1")
    live.set_online(["n1"], online=True)
    clock.now += TIMEOUT
    assert await live.silent() == []
    clock.now += timedelta(seconds=1)
    assert await live.silent() == ["n1"]  # watched again once back online
    live.replace_offline(["n1"])  # another replica took it offline, then brought it back
    live.replace_offline([])
    assert await live.silent() == ["n1"]


async def test_last_seen_writes_carry_only_the_nodes_heard_since_their_last_write() -> None:
    clock, store = Clock(), Writes()
    for i in (1, 2, 3):
        await store.save_node(rec(i), at=T0)
    live = Liveness(store, {"n1", "n2", "n3"}, clock=clock, heartbeat_timeout=TIMEOUT)
    live.heard("n1")
    live.heard("n2")
    await live.flush()
    assert store.batches == [{"n1", "n2"}]
    await live.flush()
    clock.now = T0 + timedelta(seconds=30)
    await live.flush()
    assert store.batches == [{"n1", "n2"}]  # nobody heard of since: nothing written
    live.heard("n2")
    store.down = True
    with pytest.raises(StoreError):
        await live.flush()
    store.down = False
    await live.flush()  # the failed write is due again at the next sweep
    assert store.batches == [{"n1", "n2"}, {"n2"}]
    assert (await stored(store))["n2"] == clock.now
