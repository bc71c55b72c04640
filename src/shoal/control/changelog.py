"""The change log: what changed at which revision, the shared deltas built from it, and the
coalesced wake-up of the long-polls waiting for the next change.

The log is a list of (revision, subject) entries in revision order; a subject is a node id or
a container key. `changed_since(since)` bisects it, so a delta's cost grows with the number of
changes after `since`, not with the size of the mesh. The log keeps the last `limit` entries
(trimmed in halves, so appending stays amortised O(1)); a `since` older than what it still
holds (`floor`) cannot be answered with a delta and `covers` says so.

The log does not hold the nodes and containers themselves: the registry builds a delta from
its index (`ChangeLog.delta(since, build)`), and the log keeps the result for the current
revision. Every node that is not itself part of the change gets the same delta object, so it
is built (and encoded) once per `since`.

Long-polls and netmap streams: one live watch per node. A node's new poll or stream ends its
previous one at once (a client that lost its connection, or one holding 2,000 polls with one
credential, holds one; a stream so displaced ends, see `wait`). A
change wakes them COALESCE_SECONDS after the first change of a burst, so a `compose up` of 20
containers, or many hosts joining at once, costs each node one delta instead of one per
change. Their timeouts share timers: a wait ends at its deadline rounded down to EXPIRY_TICK,
and one timer ends every wait of that tick (10,000 streams re-waiting after a change would
otherwise schedule and cancel 10,000 timers per change).

A stream waits with a push (`follow`): the wake-up hands it the change itself, and the push
writes the frame on the stream's connection there and then; so does the timer of its
heartbeat. The stream's task wakes only when the push declines (the node's own record
changed, its connection is backed up, ...). Waking 10,000 tasks, each building and writing
its update, cost about as much again as the writes themselves.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter

from shoal.model.netmap import ContainerKey, MapUpdate, Node
from shoal.model.prometheus import Histogram
from shoal.store.base import Snapshot

LOG_LIMIT = 10_000  # change-log entries kept; older `since` values get a full map
# Deltas kept per revision, by `since`. A change wakes every long-poll at one `since` and they
# all share one delta; nodes catching up each hold another `since` and gain nothing from the
# cache, which held up to N deltas of up to N peers each after a fleet restart.
DELTAS_KEPT = 16
# How long a change waits for others before the long-polls wake (bounded extra latency).
COALESCE_SECONDS = 0.02
# Waits' timeouts are rounded down to a multiple of this (a power of two, so exactly), and
# the waits ending at the same time share one timer; a shorter wait keeps its own deadline.
EXPIRY_TICK = 0.25
# Seconds from a change to its frame on every stream (`ChangeLog.fanout`): the coalescing's
# 20 ms, then ~25 µs per stream.
FANOUT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# What a change-log entry is about: a node (its id) or a container ((node id, container id)).
Subject = str | ContainerKey
Entry = tuple[int, Subject]  # (revision, subject)

log = logging.getLogger(__name__)
# A waiting stream's push: given the revision the stream holds, deliver what came after it at
# once (a "none" heartbeat when that is the current revision) and return the revision
# delivered, or None to leave it to the stream's task. It runs inside the wake-up or the
# heartbeat's timer, so it must not block or raise.
# `heartbeat`: the stream's heartbeat is due (what it sends may be a change whose wake-up is
# still pending: it counts as the heartbeat all the same).
Push = Callable[[int, bool], int | None]


@dataclass(slots=True)
class _Waiter:
    """A live poll or stream: the revision it holds (a stream's pushes move it on)."""

    since: int
    timeout: float
    push: Push | None = None  # a stream's (`follow`)


@dataclass(frozen=True, slots=True)
class Changed:
    """The subjects changed after some revision, each once, sorted."""

    nodes: tuple[str, ...]
    containers: tuple[ContainerKey, ...]


@dataclass(frozen=True, slots=True)
class SharedDelta:
    """The part of a delta from one `since` that is the same for every node."""

    nodes_changed: dict[str, Node]
    update: MapUpdate  # for a node that is not among `nodes_changed`


class ChangeLog:
    """The revision, the log of changes up to it, the shared deltas of the current revision,
    and the long-polls waiting for the next one. Not thread-safe; one event loop."""

    def __init__(
        self, entries: Iterable[Entry], *, revision: int, floor: int = 0, limit: int = LOG_LIMIT
    ) -> None:
        """`entries` in any order; `floor`: no `since` below it can get a delta (the log
        does not reach back that far)."""
        ordered = sorted(entries, key=itemgetter(0))  # subjects of two kinds do not compare
        self.revision = revision
        self._log: list[Entry] = ordered
        self._revs = [rev for rev, _ in ordered]
        self._floor = floor
        self._limit = limit
        self._deltas: dict[int, SharedDelta] = {}
        self._deltas_rev = revision
        # `_poll_owner` names the live poll of each node, `_waiting` holds the future it sleeps
        # on; a change resolves them all.
        # The future resolves False when woken, True when its time is up.
        self._poll_owner: dict[str, object] = {}
        self._waiting: dict[str, asyncio.Future[bool]] = {}
        # The waits ending at each expiry time (`expiry`), by node, ended together by one
        # timer; those already woken stay in the list till then.
        self._expiring: dict[float, list[tuple[str, asyncio.Future[bool]]]] = {}
        # The streams waiting in `follow` (the node's live wait), by node: a wake-up offers
        # them the change first.
        self._following: dict[str, _Waiter] = {}
        # The newest stream of each node (`claim`): an older one never takes its place back.
        self._claims: dict[str, int] = {}
        self._claimed = 0
        self._wake_pending: asyncio.TimerHandle | None = None
        self._burst_started = 0.0  # loop time of the first change the pending wake-up is for
        self._closed = False
        # For the server's metrics: how long each change took to reach every stream the
        # wake-up pushed it to, how many frames pushes wrote (heartbeats too), how many
        # waiting polls and streams a change woke instead.
        self.fanout = Histogram(FANOUT_BUCKETS)
        self.pushed = 0
        self.woken = 0

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot, *, limit: int = LOG_LIMIT) -> ChangeLog:
        """The log as the store remembers it: each node's and container's last change and the
        recent removals. Removals older than the retained tombstones (the store keeps `limit`
        of each kind) are unknown, so a client behind them gets a full map."""
        entries: list[Entry] = [(n.updated_rev, n.id) for n in snapshot.nodes]
        entries += [(t.removed_rev, t.node_id) for t in snapshot.tombstones]
        entries += [(c.updated_rev, c.container.key) for c in snapshot.containers]
        entries += [
            (t.removed_rev, (t.node_id, t.container_id)) for t in snapshot.container_tombstones
        ]
        floor = 0
        for stones in (snapshot.tombstones, snapshot.container_tombstones):
            if stones and len(stones) >= limit:
                floor = max(floor, stones[0].removed_rev)
        return cls(entries, revision=snapshot.revision, floor=floor, limit=limit)

    # Writing.

    def record(self, rev: int, subjects: Sequence[Subject]) -> None:
        """`subjects` changed at revision `rev` (not below any recorded one; none for a change
        that no subject names, such as the policy); wakes the long-polls."""
        self.revision = max(self.revision, rev)
        self._log.extend((rev, subject) for subject in subjects)
        self._revs.extend(rev for _ in subjects)
        if len(self._log) > 2 * self._limit:
            drop = len(self._log) - self._limit
            self._floor = self._revs[drop - 1]
            del self._log[:drop]
            del self._revs[:drop]
        self.notify()

    def advance(self, rev: int) -> None:
        """The store is at `rev` (at least), with nothing else to record; no wake-up."""
        self.revision = max(self.revision, rev)

    # Reading.

    def covers(self, since: int) -> bool:
        """Whether a delta from `since` can be answered from the log (else: a full map)."""
        return 0 < since <= self.revision and since >= self._floor

    def changed_since(self, since: int) -> Changed:
        """The nodes and containers changed after revision `since` (`covers(since)`)."""
        start = bisect.bisect_right(self._revs, since)
        nodes: dict[str, None] = {}
        containers: dict[ContainerKey, None] = {}
        for _, subject in self._log[start:]:
            if isinstance(subject, str):
                nodes[subject] = None
            else:
                containers[subject] = None
        return Changed(nodes=tuple(sorted(nodes)), containers=tuple(sorted(containers)))

    def delta(self, since: int, build: Callable[[int, Changed], SharedDelta]) -> SharedDelta:
        """The shared delta from `since` to the current revision: `build(since,
        changed_since(since))`, built once per (revision, since) and kept for the last
        DELTAS_KEPT values of `since`."""
        if self._deltas_rev != self.revision:
            self._deltas_rev = self.revision
            self._deltas.clear()
        delta = self._deltas.get(since)
        if delta is None:
            if len(self._deltas) >= DELTAS_KEPT:
                del self._deltas[next(iter(self._deltas))]  # the oldest `since`
            delta = self._deltas[since] = build(since, self.changed_since(since))
        return delta

    # Long-polls.

    @property
    def live_polls(self) -> int:
        """How many long-polls are waiting (at most one per node)."""
        return len(self._poll_owner)

    def claim(self, node_id: str) -> int:
        """A new stream of `node_id`, from now on its only one: what the node's waiting poll
        or older stream is told at once, and what an older stream's every later `wait` is
        told too (it may reach its wait after the new one, held up in a write)."""
        self._claimed += 1
        self._claims[node_id] = self._claimed
        older = self._waiting.pop(node_id, None)
        if older is not None and not older.done():
            older.set_result(False)
        return self._claimed

    def _superseded(self, node_id: str, claim: int | None) -> bool:
        return claim is not None and self._claims.get(node_id) != claim

    async def wait(
        self, node_id: str, since: int, timeout: float, claim: int | None = None
    ) -> bool:
        """`node_id`'s long-poll (or stream: its `claim`) holding revision `since`: returns
        once the revision is past `since`, after `timeout` seconds (`expiry`: up to
        EXPIRY_TICK sooner, never later), when the log closes, or when the same node starts a
        newer poll or stream. Returns at once if `since` is not the current revision or
        `timeout` <= 0. False when the log closed or a newer poll or stream of the node took
        over (a stream then ends), else True."""
        if self._closed or self._superseded(node_id, claim):
            return False
        if since != self.revision or timeout <= 0:
            return True
        return await self._wait(node_id, _Waiter(since, timeout), claim)

    async def follow(
        self, node_id: str, since: int, timeout: float, claim: int, push: Push
    ) -> int | None:
        """`wait` for `node_id`'s stream (its `claim`) holding revision `since`, where a change
        is first offered to `push` (see Push) and wakes the stream only if the push declines
        it; when its `timeout` is up the push gets the chance to send the heartbeat, and the
        wait goes on from then. Returns the revision the stream holds when its task has
        something to do (a change or heartbeat the push declined), or None once the stream
        ends (a newer stream or poll of the node took over, or the log closed)."""
        if self._closed or self._superseded(node_id, claim):
            return None
        if since != self.revision or timeout <= 0:
            return since
        waiter = _Waiter(since, timeout, push)
        return waiter.since if await self._wait(node_id, waiter, claim) else None

    async def _wait(self, node_id: str, waiter: _Waiter, claim: int | None) -> bool:
        """`wait`'s loop, for the poll or stream `waiter`: from now on the node's live one."""
        ticket = object()
        self._poll_owner[node_id] = ticket
        if waiter.push is None:
            self._following.pop(node_id, None)
        else:
            self._following[node_id] = waiter
        older = self._waiting.pop(node_id, None)
        if older is not None and not older.done():
            older.set_result(False)  # the node's previous poll returns now
        loop = asyncio.get_running_loop()
        expires = expiry(loop.time(), waiter.timeout)
        try:
            # A wake can be for a change this node already has (the coalesced wake of the very
            # change it was just given): only a newer revision ends the wait.
            while (
                waiter.since == self.revision
                and not self._closed
                and self._poll_owner.get(node_id) is ticket
                and not self._superseded(node_id, claim)
            ):
                woken: asyncio.Future[bool] = loop.create_future()
                self._waiting[node_id] = woken
                self._expiring_at(loop, expires).append((node_id, woken))
                if await woken:
                    break  # its time is up
        finally:
            live = self._poll_owner.get(node_id) is ticket
            if live:
                del self._poll_owner[node_id]
                self._waiting.pop(node_id, None)
                self._following.pop(node_id, None)
        return live and not self._closed and not self._superseded(node_id, claim)

    def _expiring_at(
        self, loop: asyncio.AbstractEventLoop, expires: float
    ) -> list[tuple[str, asyncio.Future[bool]]]:
        """The waits ending at `expires`; the first one there sets the timer that ends them."""
        expiring = self._expiring.get(expires)
        if expiring is None:
            expiring = self._expiring[expires] = []
            loop.call_at(expires, self._expire, expires)
        return expiring

    def _expire(self, expires: float) -> None:
        """The waits of `expires` are up: a stream whose push sends its heartbeat waits on
        (till its next one), any other wait ends."""
        loop = asyncio.get_running_loop()
        for node_id, woken in self._expiring.pop(expires, ()):
            if woken.done():
                continue
            following = self._following.get(node_id)
            if (
                following is not None
                and self._waiting.get(node_id) is woken
                and self._pushed(node_id, following, heartbeat=True)
            ):
                next_one = expiry(loop.time(), following.timeout)
                self._expiring_at(loop, next_one).append((node_id, woken))
                continue
            woken.set_result(True)

    def _pushed(self, node_id: str, following: _Waiter, *, heartbeat: bool) -> bool:
        """Whether `following`'s push delivered (and the stream now holds what it sent)."""
        if following.push is None or self._closed:
            return False
        try:
            delivered = following.push(following.since, heartbeat)
        except Exception:  # a bug in one push must not leave the others asleep
            log.exception("netmap push to node %s failed; its stream takes over", node_id)
            return False
        if delivered is None:
            return False
        following.since = delivered
        self.pushed += 1
        return True

    def notify(self) -> None:
        """Wake the waiting long-polls COALESCE_SECONDS after the first change of a burst."""
        if self._wake_pending is None:
            loop = asyncio.get_running_loop()
            self._burst_started = loop.time()
            self._wake_pending = loop.call_later(COALESCE_SECONDS, self._wake)

    def close(self) -> None:
        """Server shutting down: end every long-poll now, and do not start new waits."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        change = self._wake_pending is not None and not self._closed
        if self._wake_pending is not None:
            self._wake_pending.cancel()
            self._wake_pending = None
        # Swap, then resolve: waiters of this change wake; later polls wait anew. A stream
        # whose push delivers the change goes on waiting, from the revision delivered.
        waiting, self._waiting = self._waiting, {}
        reached = self.pushed + self.woken
        for node_id, woken in waiting.items():
            if woken.done():
                continue
            following = self._following.get(node_id)
            if (
                following is not None
                and not self._closed
                and (
                    # (Already at this revision: its task fetched it. Nothing to push.)
                    following.since == self.revision
                    or self._pushed(node_id, following, heartbeat=False)
                )
            ):
                self._waiting[node_id] = woken
                continue
            woken.set_result(False)
            self.woken += 1
        if change and self.pushed + self.woken > reached:  # it reached somebody
            self.fanout.observe(asyncio.get_running_loop().time() - self._burst_started)


def expiry(now: float, timeout: float) -> float:
    """When a wait of `timeout` seconds from `now` (loop time) ends: its deadline rounded down
    to a multiple of EXPIRY_TICK, so the waits ending in the same tick share one timer; a
    wait shorter than two ticks ends at its deadline."""
    deadline = now + timeout
    if timeout < 2 * EXPIRY_TICK:
        return deadline
    return deadline - deadline % EXPIRY_TICK
