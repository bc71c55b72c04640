"""The registry and mapper: nodes in memory, a change log, and per-node map updates.

The registry loads every node from the store at start and is then the only writer of nodes:
each change goes to the store first (which assigns the new global revision), then to memory and
the change log, then wakes the long-polls. `map_update(node, since)` answers from memory:

- since 0, in the future, or older than the retained log → a full `NetworkMap`;
- since < revision → a delta of the peers changed/removed after `since`, found by bisecting
  the log, so its cost grows with the number of changes, not with nodes²;
- since == revision → wait (up to `wait` s) for the next change, then as above, or "none".
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from shoal.control.errors import CredentialInvalid
from shoal.control.ipam import Allocation
from shoal.model.keys import PublicKey
from shoal.model.netmap import MapUpdate, MeshSettings, NetworkMap
from shoal.store.base import NodeRecord, Snapshot, Store

Clock = Callable[[], datetime]
LOG_LIMIT = 10_000  # change-log entries kept; older `since` values get a full map
ONLINE_WINDOW = timedelta(seconds=15)
SEEN_PERSIST_INTERVAL = timedelta(seconds=10)  # last_seen is written at most this often


def utcnow() -> datetime:
    return datetime.now(UTC)


class Registry:
    def __init__(
        self,
        store: Store,
        settings: MeshSettings,
        snapshot: Snapshot,
        *,
        clock: Clock = utcnow,
        log_limit: int = LOG_LIMIT,
    ) -> None:
        self.store = store
        self.settings = settings
        self.revision = snapshot.revision
        self._clock = clock
        self._log_limit = log_limit
        self._nodes: dict[str, NodeRecord] = {}
        self._by_key: dict[PublicKey, str] = {}
        self._by_name: dict[str, str] = {}
        self._by_credential: dict[str, str] = {}
        self._seen: dict[str, datetime] = {}
        self._seen_persisted: dict[str, datetime] = {}
        self._polls: Counter[str] = Counter()
        self._changed = asyncio.Event()
        self._closed = False
        for node in snapshot.nodes:
            self._index(node)
            if node.last_seen is not None:
                self._seen[node.id] = self._seen_persisted[node.id] = node.last_seen
        # The log restarts from what the store remembers: each node's last change and the
        # recent removals. Removals older than the retained tombstones are unknown, so a client
        # behind them gets a full map.
        entries = [(n.updated_rev, n.id, False) for n in snapshot.nodes]
        entries += [(t.removed_rev, t.node_id, True) for t in snapshot.tombstones]
        entries.sort()
        self._log: list[tuple[int, str, bool]] = entries
        self._log_revs = [e[0] for e in entries]
        truncated = bool(snapshot.tombstones) and len(snapshot.tombstones) >= log_limit
        self._floor = snapshot.tombstones[0].removed_rev if truncated else 0

    @classmethod
    async def load(
        cls,
        store: Store,
        settings: MeshSettings,
        *,
        clock: Clock = utcnow,
        log_limit: int = LOG_LIMIT,
    ) -> Registry:
        snapshot = await store.load(tombstone_limit=log_limit)
        return cls(store, settings, snapshot, clock=clock, log_limit=log_limit)

    # Reading.

    def get(self, node_id: str) -> NodeRecord | None:
        return self._nodes.get(node_id)

    def require(self, node_id: str) -> NodeRecord:
        node = self._nodes.get(node_id)
        if node is None:
            raise CredentialInvalid("this node was removed from the mesh; join again")
        return node

    def by_public_key(self, key: PublicKey) -> NodeRecord | None:
        node_id = self._by_key.get(key)
        return None if node_id is None else self._nodes[node_id]

    def by_name(self, name: str) -> NodeRecord | None:
        node_id = self._by_name.get(name)
        return None if node_id is None else self._nodes[node_id]

    def by_credential(self, credential_hash: str) -> NodeRecord | None:
        node_id = self._by_credential.get(credential_hash)
        return None if node_id is None else self._nodes[node_id]

    def nodes(self) -> list[NodeRecord]:
        return sorted(self._nodes.values(), key=lambda n: n.name)

    def allocations(self) -> dict[PublicKey, Allocation]:
        return {
            n.public_key: Allocation(mesh_ip=n.mesh_ip, subnet=n.subnet)
            for n in self._nodes.values()
        }

    def last_seen(self, node_id: str) -> datetime | None:
        return self._seen.get(node_id)

    def online(self, node_id: str) -> bool:
        """Polling right now, or polled within the last 15 s."""
        if self._polls[node_id] > 0:
            return True
        seen = self._seen.get(node_id)
        return seen is not None and self._clock() - seen <= ONLINE_WINDOW

    # Writing.

    async def save(self, node: NodeRecord, *, consume_token: str | None = None) -> NodeRecord:
        """Persist `node` (new or changed) at a new revision and tell the long-polls."""
        now = self._clock()
        rev = await self.store.save_node(node, consume_token=consume_token, at=now)
        saved = replace(node, updated_rev=rev)
        old = self._nodes.get(node.id)
        if old is not None:
            self._unindex(old)
        self._index(saved)
        if saved.last_seen is not None:
            self._seen[saved.id] = self._seen_persisted[saved.id] = saved.last_seen
        self._record(rev, node.id, removed=False)
        return saved

    async def remove(self, node_id: str) -> bool:
        rev = await self.store.remove_node(node_id)
        node = self._nodes.get(node_id)
        if node is not None:
            self._unindex(node)
        self._seen.pop(node_id, None)
        self._seen_persisted.pop(node_id, None)
        if rev is None:
            return node is not None
        self._record(rev, node_id, removed=True)
        return True

    async def touch(self, node_id: str) -> None:
        """Note that the node polled; persisted at most every SEEN_PERSIST_INTERVAL."""
        now = self._clock()
        self._seen[node_id] = now
        persisted = self._seen_persisted.get(node_id)
        if persisted is None or now - persisted >= SEEN_PERSIST_INTERVAL:
            self._seen_persisted[node_id] = now
            await self.store.touch_node(node_id, now)

    def close(self) -> None:
        """Server shutting down: end every long-poll now, and do not start new waits."""
        self._closed = True
        self._notify()

    # Mapping.

    def full_map(self, node_id: str) -> NetworkMap:
        me = self.require(node_id)
        peers = tuple(
            n.node() for n in sorted(self._nodes.values(), key=lambda n: n.id) if n.id != node_id
        )
        return NetworkMap(
            revision=self.revision, settings=self.settings, self_node=me.node(), peers=peers
        )

    async def map_update(self, node_id: str, since: int, wait: float) -> MapUpdate:
        """What `node_id`, holding the map at revision `since`, should receive next."""
        self.require(node_id)
        if since == self.revision and wait > 0 and not self._closed:
            changed = self._changed
            self._polls[node_id] += 1
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await changed.wait()
            finally:
                self._polls[node_id] -= 1
                if self._polls[node_id] <= 0:
                    del self._polls[node_id]
                self._seen[node_id] = self._clock()
            self.require(node_id)  # removed while waiting → its credential is now invalid
        return self._update_since(node_id, since)

    def _update_since(self, node_id: str, since: int) -> MapUpdate:
        if since == self.revision:
            return MapUpdate(kind="none", revision=self.revision)
        if since <= 0 or since > self.revision or since < self._floor:
            return MapUpdate(kind="full", revision=self.revision, full=self.full_map(node_id))
        start = bisect.bisect_right(self._log_revs, since)
        touched = dict.fromkeys(entry[1] for entry in self._log[start:])
        self_node = None
        changed = []
        removed = []
        for touched_id in sorted(touched):
            node = self._nodes.get(touched_id)
            if touched_id == node_id:
                self_node = node.node() if node is not None else None
            elif node is not None:
                changed.append(node.node())
            else:
                removed.append(touched_id)
        return MapUpdate(
            kind="delta",
            revision=self.revision,
            self_node=self_node,
            peers_changed=tuple(changed),
            peers_removed=tuple(removed),
        )

    # Internals.

    def _index(self, node: NodeRecord) -> None:
        self._nodes[node.id] = node
        self._by_key[node.public_key] = node.id
        self._by_name[node.name] = node.id
        self._by_credential[node.credential_hash] = node.id

    def _unindex(self, node: NodeRecord) -> None:
        self._nodes.pop(node.id, None)
        self._by_key.pop(node.public_key, None)
        self._by_name.pop(node.name, None)
        self._by_credential.pop(node.credential_hash, None)

    def _record(self, rev: int, node_id: str, *, removed: bool) -> None:
        self.revision = max(self.revision, rev)
        self._log.append((rev, node_id, removed))
        self._log_revs.append(rev)
        if len(self._log) > 2 * self._log_limit:
            drop = len(self._log) - self._log_limit
            self._floor = self._log_revs[drop - 1]
            del self._log[:drop]
            del self._log_revs[:drop]
        self._notify()

    def _notify(self) -> None:
        # Swap, then set: waiters of this change wake; later polls wait on the new event.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
