"""Liveness: when each node was last heard of, which nodes are offline, and the sweep that
finds the silent ones.

Every authenticated request of a node marks it seen (`heard`, in memory). The sweep, run
every second by the server, first writes the last_seen times due (each at most every
`seen_persist_interval`, all in one transaction), then names the nodes not heard of for longer
than `heartbeat_timeout`; the registry takes them offline (a write at a new revision: their
containers leave every map while their WireGuard peer entries stay, since the data plane must
outlive a control outage). A node's next request brings it back online.

The offline flag is persisted (by the registry's write) so deltas stay right across a server
restart; a restart itself counts as having heard from every node: a server outage must not
withdraw the whole mesh.

The sweep's cost follows what is due, not the size of the mesh: two heaps hold when each node
may next expire and when its unwritten last_seen is next due, with at most one live entry per
node in each. Checking and sorting all 10,000 nodes every second was 14 % of the server's busy
time in a 10,000-stream fan-out (docs/measurements.md); now a node is looked at about once per
heartbeat timeout and once per write.

Several replicas on one store: before naming a node silent, the sweep asks the store when the
others last heard of it (their last_seen writes), so a node talking to another replica stays
online here.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Iterable, Mapping, Set
from datetime import UTC, datetime, timedelta

from shoal.store.base import Store

Clock = Callable[[], datetime]
DEFAULT_HEARTBEAT_TIMEOUT = timedelta(seconds=15)
SEEN_PERSIST_INTERVAL = timedelta(seconds=10)  # last_seen is written at most this often


def utcnow() -> datetime:
    return datetime.now(UTC)


class Liveness:
    """The in-memory last_seen times and offline flags of the nodes in `known` (a live view of
    the registry's node ids), and the store writes of last_seen (which take no revision)."""

    def __init__(
        self,
        store: Store,
        known: Collection[str],
        *,
        clock: Clock = utcnow,
        heartbeat_timeout: timedelta = DEFAULT_HEARTBEAT_TIMEOUT,
        seen_persist_interval: timedelta = SEEN_PERSIST_INTERVAL,
    ) -> None:
        self.heartbeat_timeout = heartbeat_timeout
        self.seen_persist_interval = seen_persist_interval
        self._store = store
        self._known = known
        self._clock = clock
        self._started = clock()
        self._seen: dict[str, datetime] = {}
        self._persisted: dict[str, datetime] = {}
        self._offline: set[str] = set()
        # (when the node may expire, id), and the live entry's time by node: entries whose
        # time is not the node's live one are stale and skipped (lazy deletion). A node is
        # looked at when its time comes and put back with its newer one if heard meanwhile.
        self._expiries: list[tuple[datetime, str]] = []
        self._expiry_of: dict[str, datetime] = {}
        # (when the node's last_seen may be written, id) of nodes heard since it was written.
        self._writes: list[tuple[datetime, str]] = []
        self._unwritten: set[str] = set()
        for node_id in known:
            self.track(node_id)

    # Reading.

    @property
    def offline(self) -> Set[str]:
        """The nodes taken offline (by a sweep here or on another replica)."""
        return self._offline

    def last_seen(self, node_id: str) -> datetime | None:
        return self._seen.get(node_id)

    def silent_for(self, node_id: str, now: datetime) -> timedelta:
        """How long since the node was last heard of (a server start counts as hearing)."""
        heard = self._seen.get(node_id)
        return now - (self._started if heard is None else max(heard, self._started))

    def expired(self, node_id: str, now: datetime) -> bool:
        """Silent for longer than the heartbeat timeout."""
        return self.silent_for(node_id, now) > self.heartbeat_timeout

    def online(self, node_id: str) -> bool:
        """Heard from within the heartbeat timeout and not taken offline (whether the node
        exists is the registry's to say)."""
        return node_id not in self._offline and not self.expired(node_id, self._clock())

    def should_flip(self, node_id: str, *, online: bool, now: datetime) -> bool:
        """Whether taking `node_id` online (offline) changes anything now: it is offline
        (online), and, to go offline, still silent for too long."""
        return (node_id in self._offline) == online and (online or self.expired(node_id, now))

    # Writing (memory).

    def track(self, node_id: str) -> None:
        """Watch the node for silence (a node the registry knows of, or heard from again): its
        expiry is due at its last hearing (or the server's start) plus the timeout."""
        heard = self._seen.get(node_id)
        due = (self._started if heard is None else max(heard, self._started)) + (
            self.heartbeat_timeout
        )
        live = self._expiry_of.get(node_id)
        if live is None or due < live:  # a later time is found when the live one comes
            self._expiry_of[node_id] = due
            heapq.heappush(self._expiries, (due, node_id))

    def heard(self, node_id: str) -> bool:
        """The node made an authenticated request now; whether it is offline (and must be
        brought back)."""
        now = self._seen[node_id] = self._clock()
        if node_id not in self._expiry_of:
            self.track(node_id)
        if node_id not in self._unwritten:
            self._unwritten.add(node_id)
            persisted = self._persisted.get(node_id)
            due = now if persisted is None else persisted + self.seen_persist_interval
            heapq.heappush(self._writes, (due, node_id))
        return node_id in self._offline

    def stored(self, node_id: str, last_seen: datetime | None) -> None:
        """The store holds `last_seen` for the node (loaded or just written)."""
        if last_seen is not None:
            self._seen[node_id] = self._persisted[node_id] = last_seen
        self.track(node_id)

    def stored_elsewhere(self, times: Mapping[str, datetime]) -> None:
        """Last_seen times written by other replicas: each counts where it is newer."""
        for node_id, at in times.items():
            heard = self._seen.get(node_id)
            if heard is None or at > heard:
                self._seen[node_id] = self._persisted[node_id] = at
                self.track(node_id)

    def set_online(self, node_ids: Iterable[str], *, online: bool) -> None:
        """The registry persisted these nodes' flag."""
        if online:
            for node_id in node_ids:
                self._offline.discard(node_id)
                self.track(node_id)
        else:
            self._offline.update(node_ids)

    def replace_offline(self, node_ids: Iterable[str]) -> None:
        """The offline flags as the store holds them now (written by any replica)."""
        before, self._offline = self._offline, {nid for nid in node_ids if nid in self._known}
        for node_id in before - self._offline:
            self.track(node_id)  # back online through another replica: watched again

    def forget(self, node_id: str) -> None:
        """The node was removed."""
        self._seen.pop(node_id, None)
        self._persisted.pop(node_id, None)
        self._offline.discard(node_id)
        self._expiry_of.pop(node_id, None)
        self._unwritten.discard(node_id)

    # The sweep.

    async def flush(self) -> None:
        """Persist the last_seen times heard since they were last written, each once it is
        `seen_persist_interval` after that write (at once if never written)."""
        now = self._clock()
        due: dict[str, datetime] = {}
        writes = self._writes
        while writes and writes[0][0] <= now:
            _, node_id = heapq.heappop(writes)
            if node_id not in self._unwritten:
                continue  # forgotten meanwhile
            self._unwritten.discard(node_id)
            at = self._seen.get(node_id)
            if at is not None and node_id in self._known and at != self._persisted.get(node_id):
                due[node_id] = at
        if due:
            try:
                await self._store.touch_nodes(due)
            except BaseException:
                for node_id in due:  # not written: due again at the next sweep
                    if node_id not in self._unwritten:
                        self._unwritten.add(node_id)
                        heapq.heappush(writes, (now, node_id))
                raise
            self._persisted.update(due)

    def _expiring(self, now: datetime) -> list[str]:
        """The online nodes whose silence passed the timeout by `now`; each is watched again
        (named by every sweep until it is offline or heard from)."""
        expiries, expiry_of = self._expiries, self._expiry_of
        found: list[str] = []
        while expiries and expiries[0][0] < now:
            due, node_id = heapq.heappop(expiries)
            if expiry_of.get(node_id) != due:
                continue  # stale: the node has a later entry, or is no longer watched
            del expiry_of[node_id]
            if node_id not in self._known or node_id in self._offline:
                continue  # removed, or offline: watched again once it is back
            if self.expired(node_id, now):
                found.append(node_id)
            else:
                self.track(node_id)  # heard meanwhile: its new time
        return found

    async def silent(self) -> list[str]:
        """Persist due last_seen times, then the online nodes silent for longer than the
        heartbeat timeout, here and on every other replica."""
        await self.flush()
        now = self._clock()
        silent = self._expiring(now)
        if not silent:
            return []
        # Another replica may be hearing from them: its last_seen times decide too.
        try:
            self.stored_elsewhere(await self._store.seen_times(silent))
        finally:
            for node_id in silent:
                self.track(node_id)  # due again at once while still silent
        return [nid for nid in silent if self.expired(nid, now)]
