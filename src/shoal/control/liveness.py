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

Several replicas on one store: before naming a node silent, the sweep asks the store when the
others last heard of it (their last_seen writes), so a node talking to another replica stays
online here.
"""

from __future__ import annotations

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

    def heard(self, node_id: str) -> bool:
        """The node made an authenticated request now; whether it is offline (and must be
        brought back)."""
        self._seen[node_id] = self._clock()
        return node_id in self._offline

    def stored(self, node_id: str, last_seen: datetime | None) -> None:
        """The store holds `last_seen` for the node (loaded or just written)."""
        if last_seen is not None:
            self._seen[node_id] = self._persisted[node_id] = last_seen

    def stored_elsewhere(self, times: Mapping[str, datetime]) -> None:
        """Last_seen times written by other replicas: each counts where it is newer."""
        for node_id, at in times.items():
            heard = self._seen.get(node_id)
            if heard is None or at > heard:
                self._seen[node_id] = self._persisted[node_id] = at

    def set_online(self, node_ids: Iterable[str], *, online: bool) -> None:
        """The registry persisted these nodes' flag."""
        if online:
            self._offline.difference_update(node_ids)
        else:
            self._offline.update(node_ids)

    def replace_offline(self, node_ids: Iterable[str]) -> None:
        """The offline flags as the store holds them now (written by any replica)."""
        self._offline = {nid for nid in node_ids if nid in self._known}

    def forget(self, node_id: str) -> None:
        """The node was removed."""
        self._seen.pop(node_id, None)
        self._persisted.pop(node_id, None)
        self._offline.discard(node_id)

    # The sweep.

    async def flush(self) -> None:
        """Persist the last_seen times not written for `seen_persist_interval`."""
        due = {
            nid: at
            for nid, at in self._seen.items()
            if nid in self._known
            and (
                (persisted := self._persisted.get(nid)) is None
                or at - persisted >= self.seen_persist_interval
            )
        }
        if due:
            await self._store.touch_nodes(due)
            self._persisted.update(due)

    async def silent(self) -> list[str]:
        """Persist due last_seen times, then the online nodes silent for longer than the
        heartbeat timeout, here and on every other replica."""
        await self.flush()
        now = self._clock()
        silent = [nid for nid in self._known if nid not in self._offline and self.expired(nid, now)]
        if not silent:
            return []
        # Another replica may be hearing from them: its last_seen times decide too.
        self.stored_elsewhere(await self._store.seen_times(silent))
        return [nid for nid in silent if self.expired(nid, now)]
