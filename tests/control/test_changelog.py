"""The change log: what changed after a revision, the shared deltas it keeps, the long-polls it
wakes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from shoal.control.changelog import (
    DELTAS_KEPT,
    EXPIRY_TICK,
    Changed,
    ChangeLog,
    SharedDelta,
    expiry,
)
from shoal.model.netmap import MapUpdate


def shared(changed: Changed, revision: int) -> SharedDelta:
    return SharedDelta(nodes_changed={}, update=MapUpdate(kind="delta", revision=revision))


async def poll_started(log: ChangeLog, polls: int) -> None:
    """Until `polls` long-polls wait on the log (each takes a turn of the loop to start)."""
    while log.live_polls != polls:
        await asyncio.sleep(0)


async def test_changes_after_a_revision_are_named_once_and_sorted() -> None:
    log = ChangeLog([(2, "n2"), (1, "n1")], revision=2)
    log.record(3, ["n1", ("n2", "c9"), ("n1", "c1")])
    log.record(4, ["n3", ("n1", "c1")])
    assert log.revision == 4
    assert log.changed_since(1) == Changed(
        nodes=("n1", "n2", "n3"), containers=(("n1", "c1"), ("n2", "c9"))
    )
    assert log.changed_since(3) == Changed(nodes=("n3",), containers=(("n1", "c1"),))
    assert log.changed_since(4) == Changed(nodes=(), containers=())


async def test_a_change_without_subjects_still_takes_its_revision() -> None:
    log = ChangeLog([], revision=5)
    log.record(6, [])  # the policy: no subject, a new revision all the same
    assert log.revision == 6 and log.covers(5)
    assert log.changed_since(5) == Changed(nodes=(), containers=())


async def test_a_since_the_log_does_not_reach_back_to_is_not_covered() -> None:
    log = ChangeLog([], revision=1, limit=2)
    assert not log.covers(0) and log.covers(1) and not log.covers(2)  # 0 and the future
    for rev in range(2, 7):  # 5 entries: past 2 * limit, the log keeps the last `limit`
        log.record(rev, [f"n{rev}"])
    # Revisions 5 and 6 are kept: from 4 on, the log still knows every change.
    assert not log.covers(3) and log.covers(4)
    assert log.changed_since(4) == Changed(nodes=("n5", "n6"), containers=())


async def test_advance_moves_the_revision_without_entries() -> None:
    log = ChangeLog([], revision=3)
    log.advance(2)
    assert log.revision == 3
    log.advance(7)
    assert log.revision == 7 and log.changed_since(3) == Changed(nodes=(), containers=())


async def test_a_shared_delta_is_built_once_per_revision_and_since() -> None:
    log = ChangeLog([(1, "n1")], revision=1)
    log.record(2, ["n2"])
    built: list[Changed] = []

    def build(since: int, changed: Changed) -> SharedDelta:
        built.append(changed)
        return shared(changed, log.revision)

    first = log.delta(1, build)
    assert log.delta(1, build) is first and built == [Changed(nodes=("n2",), containers=())]
    log.record(3, ["n3"])
    assert log.delta(1, build) is not first  # a new revision: built anew
    assert built[-1] == Changed(nodes=("n2", "n3"), containers=())


async def test_a_fleet_catching_up_from_many_revisions_keeps_few_deltas() -> None:
    log = ChangeLog([(rev, f"n{rev}") for rev in range(1, 41)], revision=40)
    built: list[int] = []

    def build(since: int, changed: Changed) -> SharedDelta:
        built.append(since)
        return shared(changed, log.revision)

    def delta_from(since: int) -> SharedDelta:
        return log.delta(since, build)

    for since in range(1, DELTAS_KEPT + 2):  # one more `since` than are kept
        delta_from(since)
    newest = delta_from(DELTAS_KEPT + 1)
    assert built == list(range(1, DELTAS_KEPT + 2))  # the kept ones are not built again
    delta_from(1)  # the oldest was dropped: built again
    assert built[-1] == 1
    assert newest.update.revision == 40


async def test_a_long_poll_wakes_on_the_next_change() -> None:
    log = ChangeLog([], revision=1)
    poll = asyncio.create_task(log.wait("n1", since=1, timeout=60))
    await poll_started(log, 1)
    log.record(2, ["n2"])
    await asyncio.wait_for(poll, timeout=5)
    assert log.live_polls == 0


async def test_a_poll_behind_or_without_time_returns_at_once() -> None:
    log = ChangeLog([], revision=3)
    await log.wait("n1", since=2, timeout=60)  # behind: it has something to get
    await log.wait("n1", since=3, timeout=0)
    assert log.live_polls == 0


async def test_a_nodes_new_poll_ends_its_old_one() -> None:
    log = ChangeLog([], revision=1)
    old = asyncio.create_task(log.wait("n1", since=1, timeout=60))
    other = asyncio.create_task(log.wait("n2", since=1, timeout=60))
    await poll_started(log, 2)
    new = asyncio.create_task(log.wait("n1", since=1, timeout=60))
    await asyncio.wait_for(old, timeout=5)
    assert not new.done() and not other.done() and log.live_polls == 2
    log.close()
    await asyncio.wait_for(asyncio.gather(new, other), timeout=5)


async def test_an_older_stream_reaching_its_wait_late_ends_itself_not_the_newer() -> None:
    """The old stream was held up in a write (a dead connection) while the node opened a new
    one: the newest claim keeps the node's stream, whichever waits last."""
    log = ChangeLog([], revision=1)
    first = log.claim("n1")
    second = log.claim("n1")
    newer = asyncio.create_task(log.wait("n1", since=1, timeout=60, claim=second))
    await poll_started(log, 1)
    assert await log.wait("n1", since=1, timeout=60, claim=first) is False
    assert await log.wait("n1", since=0, timeout=60, claim=first) is False  # even when behind
    assert not newer.done() and log.live_polls == 1
    log.record(2, ["n2"])
    assert await asyncio.wait_for(newer, timeout=5) is True


async def test_a_new_stream_ends_the_wait_of_the_old_one() -> None:
    log = ChangeLog([], revision=1)
    old = asyncio.create_task(log.wait("n1", since=1, timeout=60, claim=log.claim("n1")))
    await poll_started(log, 1)
    log.claim("n1")
    assert await asyncio.wait_for(old, timeout=5) is False
    assert log.live_polls == 0


async def test_close_ends_long_polls_and_refuses_new_waits() -> None:
    log = ChangeLog([], revision=1)
    poll = asyncio.create_task(log.wait("n1", since=1, timeout=60))
    await poll_started(log, 1)
    log.close()
    await asyncio.wait_for(poll, timeout=5)
    await asyncio.wait_for(log.wait("n1", since=1, timeout=60), timeout=5)
    assert log.live_polls == 0


async def test_a_poll_ends_at_its_timeout() -> None:
    log = ChangeLog([], revision=1)
    await asyncio.wait_for(log.wait("n1", since=1, timeout=0.001), timeout=5)
    assert log.live_polls == 0


def test_a_wait_ends_at_most_a_tick_before_its_deadline_never_after() -> None:
    for now in (0.0, 0.1, 1234.5678, 99_999.99):
        for timeout in (2 * EXPIRY_TICK, 1.0, 25.0):
            ends = expiry(now, timeout)
            assert now + timeout - EXPIRY_TICK < ends <= now + timeout
    assert expiry(10.1, 0.3) == 10.1 + 0.3  # shorter than two ticks: its own deadline
    assert expiry(10.01, 5.0) == expiry(10.2, 5.0) == 15.0  # the same tick: the same time


async def test_waits_ending_in_the_same_tick_share_one_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Streams re-waiting after a change schedule one timer per tick, not one each; that
    timer ends all their waits (True: the time is up), only once per wait."""
    loop = asyncio.get_running_loop()
    schedule = loop.call_at
    timers: list[tuple[Callable[..., object], tuple[object, ...]]] = []

    def call_at(when: float, callback: Callable[..., object], *args: object) -> object:
        timers.append((callback, args))
        return schedule(when + 3600, callback, *args)  # the test fires it, not the clock

    monkeypatch.setattr(loop, "call_at", call_at)
    # Waits starting at the same loop time: the same deadline, whatever the clock reads.
    monkeypatch.setattr(loop, "time", lambda: 1000.1)
    log = ChangeLog([], revision=1)
    polls = [asyncio.create_task(log.wait(f"n{i}", since=1, timeout=25)) for i in range(50)]
    await poll_started(log, 50)
    monkeypatch.undo()
    assert len(timers) == 1
    callback, args = timers[0]
    callback(*args)
    assert await asyncio.wait_for(asyncio.gather(*polls), timeout=5) == [True] * 50
    assert log.live_polls == 0
    callback(*args)  # a late duplicate fire ends nothing new
    log.close()


class Pushes:
    """A stream's push that records what it was offered and delivers while `take` is true."""

    def __init__(self, log: ChangeLog, *, take: bool = True) -> None:
        self.log = log
        self.take = take
        self.offered: list[int] = []
        self.heartbeats = 0  # offers made by the heartbeat's timer

    def __call__(self, since: int, heartbeat: bool) -> int | None:
        self.offered.append(since)
        self.heartbeats += heartbeat
        return self.log.revision if self.take else None


async def following(
    log: ChangeLog, push: Pushes, node: str = "n1", timeout: float = 60
) -> asyncio.Task[int | None]:
    """`node`'s stream following `log` from its revision with `push`, once it waits."""
    waiting = log.live_polls
    stream = asyncio.create_task(log.follow(node, log.revision, timeout, log.claim(node), push))
    await poll_started(log, waiting + 1)
    return stream


async def test_a_pushed_change_leaves_the_stream_waiting_from_the_revision_delivered() -> None:
    log = ChangeLog([], revision=1)
    push = Pushes(log)
    stream = await following(log, push)
    log.record(2, ["n2"])
    log.record(3, ["n3"])  # the same burst: one push
    await asyncio.sleep(0.1)  # past COALESCE_SECONDS
    log.record(4, ["n4"])
    while len(push.offered) < 2:
        await asyncio.sleep(0.01)
    assert push.offered == [1, 3]
    assert not stream.done() and log.live_polls == 1
    log.close()
    assert await asyncio.wait_for(stream, timeout=5) is None


async def test_a_stream_whose_push_declines_wakes_with_the_revision_it_holds() -> None:
    log = ChangeLog([], revision=1)
    push = Pushes(log, take=False)
    stream = await following(log, push)
    log.record(2, ["n1"])
    assert await asyncio.wait_for(stream, timeout=5) == 1
    assert push.offered == [1] and log.live_polls == 0


async def test_a_streams_heartbeats_are_pushed_and_one_declined_wakes_its_task() -> None:
    log = ChangeLog([], revision=1)
    push = Pushes(log)
    stream = await following(log, push, timeout=0.1)
    log.record(2, ["n2"])
    while len(push.offered) < 3:  # the change, then heartbeats from the revision it holds
        await asyncio.sleep(0.01)
    assert push.offered[:3] == [1, 2, 2] and not stream.done()
    assert push.heartbeats == len(push.offered) - 1  # all but the change
    push.take = False
    assert await asyncio.wait_for(stream, timeout=5) == 2


async def test_a_failing_push_wakes_its_stream_and_the_others_still_get_theirs() -> None:
    log = ChangeLog([], revision=1)

    def broken(since: int, heartbeat: bool) -> int | None:
        raise RuntimeError("bug")

    good = Pushes(log)
    failing = asyncio.create_task(log.follow("n1", 1, 60, log.claim("n1"), broken))
    await poll_started(log, 1)
    fine = await following(log, good, "n2")
    log.record(2, ["n3"])
    assert await asyncio.wait_for(failing, timeout=5) == 1
    assert good.offered == [1] and not fine.done()
    log.close()
    await asyncio.wait_for(fine, timeout=5)


async def test_a_poll_taking_over_from_a_stream_is_woken_not_pushed_past() -> None:
    """The node's stream gave way to a poll of it: a change wakes the poll, and the push of
    the stream it replaced is not called for it."""
    log = ChangeLog([], revision=1)
    push = Pushes(log)
    stream = await following(log, push)
    poll = asyncio.create_task(log.wait("n1", since=1, timeout=60))
    assert await asyncio.wait_for(stream, timeout=5) is None
    await poll_started(log, 1)
    log.record(2, ["n2"])
    assert await asyncio.wait_for(poll, timeout=5) is True
    assert push.offered == []
