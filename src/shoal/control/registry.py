"""The registry and mapper: nodes and containers in memory, a change log, per-node map updates.

The registry loads every node and container from the store at start and is then their only
writer: each change goes to the store first (which assigns the new global revision), then to
memory and the change log, then wakes the long-polls. Writes that take a revision are
serialised by one lock, so the log stays in revision order. `map_update(node, since)` answers
from memory:

- since 0, in the future, or older than the retained log → a full `NetworkMap`;
- since < revision → a delta of the nodes and containers changed/removed after `since`, found
  by bisecting the log, so its cost grows with the number of changes, not with nodes². Every
  node that is not itself part of the change gets the same delta, computed once;
- since == revision → wait (up to `wait` s) for the next change, then as above, or "none".

Liveness: every authenticated request of a node marks it seen (`seen`, in memory). `sweep`,
run every second by the server, writes the last_seen times due (each at most every
SEEN_PERSIST_INTERVAL, all in one transaction), then takes a node not seen for longer than
`heartbeat_timeout` offline: its containers leave every map (the log records them at a new
revision, so they arrive as removals) while its WireGuard peer entry stays, since the data
plane must outlive a control outage. Its next request brings it back online and its
containers back into the maps. The offline flag is persisted so deltas stay right across a
server restart; a restart itself counts as having seen every node (a server outage must not
withdraw the whole mesh).

Several replicas on one store (PostgreSQL): each registry is the writer of its own changes and
takes in the others' with `catch_up` (on each revision the store announces, and before it
records a revision of its own that skips some: revisions are gapless in the store, so a gap
is another replica's work, which must enter the log first to keep it in revision order). The
sweep asks the store when the others last heard of a node before taking it offline.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from itertools import groupby
from operator import itemgetter

from shoal.control.errors import CredentialInvalid, PoolExhausted
from shoal.control.ipam import Allocation, Ledger, Pools
from shoal.model.keys import PublicKey
from shoal.model.netmap import (
    Container,
    ContainerKey,
    MapUpdate,
    MeshSettings,
    NetworkMap,
    Node,
)
from shoal.model.policy import Policy, parse
from shoal.store.base import NodeRecord, PolicyRecord, Released, Snapshot, Store

Clock = Callable[[], datetime]
LOG_LIMIT = 10_000  # change-log entries kept; older `since` values get a full map
# Deltas kept per revision, by `since`. A change wakes every long-poll at one `since` and they
# all share one delta; nodes catching up each hold another `since` and gain nothing from the
# cache, which held up to N deltas of up to N peers each after a fleet restart.
DELTAS_KEPT = 16
DEFAULT_HEARTBEAT_TIMEOUT = timedelta(seconds=15)
DEFAULT_QUARANTINE = timedelta(hours=24)
SEEN_PERSIST_INTERVAL = timedelta(seconds=10)  # last_seen is written at most this often

# What a change-log entry is about: a node (its id) or a container ((node id, container id)).
Subject = str | ContainerKey
Entry = tuple[int, Subject]  # (revision, subject)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class _Delta:
    """The part of a delta from one `since` that is the same for every node."""

    nodes_changed: dict[str, Node]
    update: MapUpdate  # for a node that is not among `nodes_changed`


# How long a change waits for others before the long-polls wake (bounded extra latency).
COALESCE_SECONDS = 0.02


class Registry:
    def __init__(
        self,
        store: Store,
        settings: MeshSettings,
        snapshot: Snapshot,
        *,
        clock: Clock = utcnow,
        log_limit: int = LOG_LIMIT,
        heartbeat_timeout: timedelta = DEFAULT_HEARTBEAT_TIMEOUT,
        quarantine: timedelta = DEFAULT_QUARANTINE,
        seen_persist_interval: timedelta = SEEN_PERSIST_INTERVAL,
    ) -> None:
        self.store = store
        self.seen_persist_interval = seen_persist_interval
        self.quarantine = quarantine
        self.settings = settings
        self.revision = snapshot.revision
        self.heartbeat_timeout = heartbeat_timeout
        self._clock = clock
        self._log_limit = log_limit
        self._started = clock()
        self._nodes: dict[str, NodeRecord] = {}
        self._models: dict[str, Node] = {}
        self._by_key: dict[PublicKey, str] = {}
        self._by_name: dict[str, str] = {}
        # By node id; a removed node's addresses stay in it under "released:<id>" (see
        # `allocate`).
        self._ledger: Ledger[str] = Ledger()
        self._released: dict[str, Released] = {}
        self._revoked: set[PublicKey] = set(snapshot.revoked_keys)
        self._seen: dict[str, datetime] = {}
        self._seen_persisted: dict[str, datetime] = {}
        self._offline: set[str] = set()
        # Keyed by (node id, container id): a node's report only ever touches its own.
        self._containers: dict[ContainerKey, Container] = {}
        self._hosted: dict[str, dict[str, Container]] = {}  # node id → its containers by id
        self._write = asyncio.Lock()
        # One live long-poll per node: a node's new poll replaces its old one, which returns
        # at once (a client that lost its connection, or one holding 2,000 polls with one
        # credential, holds one). `_poll_owner` names the live poll of each node, `_waiting`
        # holds the future it sleeps on; a change resolves them all.
        self._poll_owner: dict[str, object] = {}
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._wake_pending: asyncio.TimerHandle | None = None
        self._closed = False
        # Caches valid for one revision: the sorted full-map parts and the shared deltas.
        self._cache_rev = -1
        self._all_nodes: tuple[Node, ...] | None = None
        self._visible: tuple[Container, ...] | None = None
        self._deltas: dict[int, _Delta] = {}
        for node in snapshot.nodes:
            self._index(node)
            if node.last_seen is not None:
                self._seen[node.id] = self._seen_persisted[node.id] = node.last_seen
            if not node.online:
                self._offline.add(node.id)
        for record in snapshot.containers:
            self._put_container(record.container)
        # The access-control policy: no change-log entry, a delta carries it when it changed
        # after `since` (its own revision says so).
        self.policy_record = snapshot.policy
        self.policy = None if snapshot.policy is None else _policy(snapshot.policy)
        taken = {(n.mesh_ip, n.subnet) for n in snapshot.nodes}
        for released in snapshot.released:
            # A quarantined allocation since handed out again (the pool ran short) is over.
            if not any(released.mesh_ip == ip or released.subnet.overlaps(s) for ip, s in taken):
                self._release(released)
        # The log restarts from what the store remembers: each node's and container's last
        # change and the recent removals. Removals older than the retained tombstones are
        # unknown, so a client behind them gets a full map.
        entries: list[Entry] = [(n.updated_rev, n.id) for n in snapshot.nodes]
        entries += [(t.removed_rev, t.node_id) for t in snapshot.tombstones]
        entries += [(c.updated_rev, c.container.key) for c in snapshot.containers]
        entries += [
            (t.removed_rev, (t.node_id, t.container_id)) for t in snapshot.container_tombstones
        ]
        entries.sort(key=itemgetter(0))  # by revision: subjects of two kinds do not compare
        self._log: list[Entry] = entries
        self._log_revs = [e[0] for e in entries]
        self._floor = 0
        for stones in (snapshot.tombstones, snapshot.container_tombstones):
            if stones and len(stones) >= log_limit:
                self._floor = max(self._floor, stones[0].removed_rev)

    @classmethod
    async def load(
        cls,
        store: Store,
        settings: MeshSettings,
        *,
        clock: Clock = utcnow,
        log_limit: int = LOG_LIMIT,
        heartbeat_timeout: timedelta = DEFAULT_HEARTBEAT_TIMEOUT,
        quarantine: timedelta = DEFAULT_QUARANTINE,
        seen_persist_interval: timedelta = SEEN_PERSIST_INTERVAL,
    ) -> Registry:
        snapshot = await store.load(tombstone_limit=log_limit)
        return cls(
            store,
            settings,
            snapshot,
            clock=clock,
            log_limit=log_limit,
            heartbeat_timeout=heartbeat_timeout,
            quarantine=quarantine,
            seen_persist_interval=seen_persist_interval,
        )

    # Reading.

    def get(self, node_id: str) -> NodeRecord | None:
        return self._nodes.get(node_id)

    def require(self, node_id: str) -> NodeRecord:
        node = self._nodes.get(node_id)
        if node is None:
            raise CredentialInvalid("this node was removed from the mesh; join again")
        return node

    def by_public_key(self, key: PublicKey) -> NodeRecord | None:
        """The node with this key, or with this next key during a key rotation."""
        node_id = self._by_key.get(key)
        return None if node_id is None else self._nodes[node_id]

    def by_name(self, name: str) -> NodeRecord | None:
        node_id = self._by_name.get(name)
        return None if node_id is None else self._nodes[node_id]

    def is_revoked(self, key: PublicKey) -> bool:
        """The key of a node the operator removed: it may not join again."""
        return key in self._revoked

    def nodes(self) -> list[NodeRecord]:
        return sorted(self._nodes.values(), key=lambda n: n.name)

    def allocate(self, pools: Pools, node_id: str) -> Allocation:
        """The mesh IP and subnet of this node: its own, else the lowest never used.

        A removed node's addresses stay taken (quarantined) so that no peer routes its
        traffic to a newcomer; only when the pools run out are those whose quarantine is over
        handed out again, the longest released first."""
        while True:
            try:
                return self._ledger.allocate(pools, node_id)
            except PoolExhausted:
                due = [
                    r
                    for r in self._released.values()
                    if self._clock() - r.released_at >= self.quarantine
                ]
                if not due:
                    raise
                oldest = min(due, key=lambda r: r.released_at)
                del self._released[oldest.node_id]
                self._ledger.remove(f"released:{oldest.node_id}")

    def containers_of(self, node_id: str) -> Mapping[str, Container]:
        """The containers `node_id` last reported (withdrawn from the maps or not)."""
        return self._hosted.get(node_id, {})

    def containers(self) -> list[Container]:
        """Every known container, of offline nodes too, sorted by (node id, container id)."""
        return [self._containers[k] for k in sorted(self._containers)]

    def last_seen(self, node_id: str) -> datetime | None:
        return self._seen.get(node_id)

    def online(self, node_id: str) -> bool:
        """Heard from within the heartbeat timeout (a server start counts as hearing from all),
        and not withdrawn by the sweeper."""
        return (
            node_id in self._nodes
            and node_id not in self._offline
            and not self._expired(node_id, self._clock())
        )

    # Writing.

    async def save(self, node: NodeRecord, *, consume_token: str | None = None) -> NodeRecord:
        """Persist `node` (new or changed) at a new revision and tell the long-polls."""
        async with self._write:
            now = self._clock()
            rev = await self.store.save_node(node, consume_token=consume_token, at=now)
            await self._fill_gap(rev)
            old = self._nodes.get(node.id)
            saved = replace(node, updated_rev=rev, online=node.id not in self._offline)
            if old is not None:
                self._unindex(old)
            self._index(saved)
            if saved.last_seen is not None:
                self._seen[saved.id] = self._seen_persisted[saved.id] = saved.last_seen
            self._record(rev, [node.id])
        return saved

    async def remove(self, node_id: str, *, revoke_key: bool = False) -> bool:
        """Remove the node and its containers, quarantine its addresses and, with
        `revoke_key`, refuse its key from now on; False if it was not there."""
        async with self._write:
            now = self._clock()
            rev = await self.store.remove_node(node_id, revoke_key=revoke_key, at=now)
            await self._fill_gap(rev)
            node = self._nodes.get(node_id)
            if node is not None:
                self._unindex(node)
                self._ledger.remove(node_id)
                self._release(Released(node_id, node.mesh_ip, node.subnet, now))
                if revoke_key:
                    self._revoked.add(node.public_key)
                    if node.next_key is not None:
                        self._revoked.add(node.next_key)
            self._seen.pop(node_id, None)
            self._seen_persisted.pop(node_id, None)
            self._offline.discard(node_id)
            gone = [(node_id, cid) for cid in self._hosted.pop(node_id, {})]
            for key in gone:
                del self._containers[key]
            if rev is None:
                return node is not None
            self._record(rev, [node_id, *gone])
        return True

    async def unrevoke(self, key: PublicKey) -> None:
        await self.store.unrevoke_key(key)
        self._revoked.discard(key)

    async def save_containers(
        self, node_id: str, changed: Sequence[Container], removed: Sequence[str]
    ) -> int:
        """Persist changes to `node_id`'s own containers (`changed` must all belong to it,
        `removed` are ids of its containers) at one new revision and tell the long-polls."""
        async with self._write:
            self.require(node_id)
            rev = await self.store.save_containers(node_id, changed, removed)
            await self._fill_gap(rev)
            for container in changed:
                self._put_container(container)
            mine = self._hosted.get(node_id, {})
            for container_id in removed:
                if mine.pop(container_id, None) is not None:
                    del self._containers[(node_id, container_id)]
            self._record(
                rev,
                [c.key for c in changed] + [(node_id, c) for c in removed],
            )
        return rev

    async def save_policy(self, policy: Policy, source: str) -> PolicyRecord:
        """Persist a validated policy (its text as given) at a new revision; it reaches every
        node's next poll in the delta."""
        async with self._write:
            record = await self.store.save_policy(policy.file, source, self._clock())
            await self._fill_gap(record.updated_rev)
            self.policy_record = record
            self.policy = policy.model_copy(update={"revision": record.revision})
            self._record(record.updated_rev, [])
        return record

    async def seen(self, node_id: str) -> None:
        """The node made an authenticated request: it is alive. Brings an offline node (and
        its containers) back at once; last_seen reaches the store with the next sweep."""
        self._seen[node_id] = self._clock()
        if node_id in self._offline:
            await self._set_online([node_id], online=True)

    async def flush_seen(self) -> None:
        """Persist the last_seen times not written for SEEN_PERSIST_INTERVAL."""
        due = {
            nid: at
            for nid, at in self._seen.items()
            if nid in self._nodes
            and (
                (persisted := self._seen_persisted.get(nid)) is None
                or at - persisted >= self.seen_persist_interval
            )
        }
        if due:
            await self.store.touch_nodes(due)
            self._seen_persisted.update(due)

    async def sweep(self) -> list[str]:
        """Persist due last_seen times, then take nodes silent for longer than the heartbeat
        timeout offline; their ids."""
        await self.flush_seen()
        now = self._clock()
        silent = [
            nid for nid in self._nodes if nid not in self._offline and self._expired(nid, now)
        ]
        if not silent:
            return []
        # Another replica may be hearing from them: its last_seen times decide too.
        for nid, at in (await self.store.seen_times(silent)).items():
            if nid not in self._seen or at > self._seen[nid]:
                self._seen[nid] = self._seen_persisted[nid] = at
        silent = [nid for nid in silent if self._expired(nid, now)]
        if not silent:
            return []
        return await self._set_online(silent, online=False)

    async def catch_up(self) -> None:
        """Take in what other server replicas sharing the store wrote after this registry's
        revision, and wake the long-polls if anything came."""
        async with self._write:
            await self._catch_up(None)

    async def _fill_gap(self, rev: int | None) -> None:
        """Before recording our own `rev`: the revisions between ours and it are other
        replicas' (committed, since the store's revision is gapless); log them first."""
        if rev is not None and rev > self.revision + 1:
            await self._catch_up(before=rev)

    async def _catch_up(self, before: int | None) -> None:
        changes = await self.store.changes_since(self.revision, before=before)
        if changes.revision <= self.revision:
            return
        entries: list[Entry] = []
        for stone in changes.tombstones:
            node = self._nodes.get(stone.node_id)
            if node is not None:
                self._unindex(node)
                self._ledger.remove(node.id)
            self._seen.pop(stone.node_id, None)
            self._seen_persisted.pop(stone.node_id, None)
            for cid in self._hosted.pop(stone.node_id, {}):
                del self._containers[(stone.node_id, cid)]
            entries.append((stone.removed_rev, stone.node_id))
        for record in changes.nodes:
            old = self._nodes.get(record.id)
            if old is not None:
                self._unindex(old)
            self._index(record)
            heard = self._seen.get(record.id)
            if record.last_seen is not None and (heard is None or record.last_seen > heard):
                self._seen[record.id] = self._seen_persisted[record.id] = record.last_seen
            entries.append((record.updated_rev, record.id))
        for gone in changes.container_tombstones:
            if self._hosted.get(gone.node_id, {}).pop(gone.container_id, None) is not None:
                del self._containers[(gone.node_id, gone.container_id)]
            entries.append((gone.removed_rev, (gone.node_id, gone.container_id)))
        for box in changes.containers:
            self._put_container(box.container)
            entries.append((box.updated_rev, box.container.key))
        # State, not history: the flags and sets as the store holds them now.
        if changes.policy is not None:  # set through another replica; no subject of the log
            self.policy_record = changes.policy
            self.policy = _policy(changes.policy)
        self._offline = {nid for nid in changes.offline if nid in self._nodes}
        self._revoked = set(changes.revoked_keys)
        for released in changes.released:
            if released.node_id not in self._released and released.node_id not in self._nodes:
                self._release(released)
        entries.sort(key=itemgetter(0))
        for rev, group in groupby(entries, key=itemgetter(0)):
            self._record(rev, [subject for _, subject in group])
        self.revision = max(self.revision, changes.revision)
        self._notify()

    def close(self) -> None:
        """Server shutting down: end every long-poll now, and do not start new waits."""
        self._closed = True
        self._wake()

    # Mapping.

    def full_map(self, node_id: str) -> NetworkMap:
        me = self.require(node_id)
        self._check_cache()
        if self._all_nodes is None:
            self._all_nodes = tuple(self._models[k] for k in sorted(self._models))
        if self._visible is None:
            self._visible = tuple(
                self._containers[k]
                for k in sorted(self._containers)
                if self._containers[k].node_id not in self._offline
            )
        return NetworkMap(
            revision=self.revision,
            settings=self.settings,
            self_node=self._models[me.id],
            peers=tuple(n for n in self._all_nodes if n.id != node_id),
            containers=self._visible,
            policy=self.policy,
        )

    async def map_update(self, node_id: str, since: int, wait: float) -> MapUpdate:
        """What `node_id`, holding the map at revision `since`, should receive next."""
        self.require(node_id)
        if since == self.revision and wait > 0 and not self._closed:
            ticket = object()
            self._poll_owner[node_id] = ticket
            older = self._waiting.pop(node_id, None)
            if older is not None and not older.done():
                older.set_result(None)  # the node's previous poll returns now
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        # A wake can be for a change this node already has (the coalesced
                        # wake of the very change it was just given): only a newer revision
                        # ends the wait.
                        while (
                            since == self.revision
                            and not self._closed
                            and self._poll_owner.get(node_id) is ticket
                        ):
                            woken = asyncio.get_running_loop().create_future()
                            self._waiting[node_id] = woken
                            await woken
            finally:
                if self._poll_owner.get(node_id) is ticket:
                    del self._poll_owner[node_id]
                    self._waiting.pop(node_id, None)
            self.require(node_id)  # removed while waiting → its credential is now invalid
        return self._update_since(node_id, since)

    def _update_since(self, node_id: str, since: int) -> MapUpdate:
        if since == self.revision:
            return MapUpdate(kind="none", revision=self.revision)
        if since <= 0 or since > self.revision or since < self._floor:
            return MapUpdate(kind="full", revision=self.revision, full=self.full_map(node_id))
        self._check_cache()
        delta = self._deltas.get(since)
        if delta is None:
            if len(self._deltas) >= DELTAS_KEPT:
                del self._deltas[next(iter(self._deltas))]  # the oldest `since`
            delta = self._deltas[since] = self._delta_since(since)
        me = delta.nodes_changed.get(node_id)
        if me is None:
            return delta.update
        # This node's own record changed: it gets it as self_node, not as a peer.
        return delta.update.model_copy(
            update={
                "self_node": me,
                "peers_changed": tuple(n for n in delta.update.peers_changed if n.id != node_id),
            }
        )

    def _delta_since(self, since: int) -> _Delta:
        start = bisect.bisect_right(self._log_revs, since)
        nodes: dict[str, None] = {}
        containers: dict[ContainerKey, None] = {}
        for _, key in self._log[start:]:
            if isinstance(key, str):
                nodes[key] = None
            else:
                containers[key] = None
        changed = {k: self._models[k] for k in sorted(nodes) if k in self._models}
        visible = [
            c
            for k in sorted(containers)
            if (c := self._containers.get(k)) is not None and c.node_id not in self._offline
        ]
        shown = {c.key for c in visible}
        update = MapUpdate(
            kind="delta",
            revision=self.revision,
            peers_changed=tuple(changed.values()),
            peers_removed=tuple(k for k in sorted(nodes) if k not in self._models),
            containers_changed=tuple(visible),
            containers_removed=tuple(k for k in sorted(containers) if k not in shown),
            policy=(
                self.policy
                if self.policy_record is not None and self.policy_record.updated_rev > since
                else None
            ),
        )
        return _Delta(nodes_changed=changed, update=update)

    # Internals.

    def silent_for(self, node_id: str, now: datetime) -> timedelta:
        """How long since the node was last heard of (a server start counts as hearing)."""
        heard = self._seen.get(node_id)
        return now - (self._started if heard is None else max(heard, self._started))

    def _expired(self, node_id: str, now: datetime) -> bool:
        return self.silent_for(node_id, now) > self.heartbeat_timeout

    async def _set_online(self, node_ids: Iterable[str], *, online: bool) -> list[str]:
        async with self._write:
            now = self._clock()
            # Checked again under the lock: another request may have flipped them meanwhile.
            flip = [
                nid
                for nid in node_ids
                if nid in self._nodes
                and (nid in self._offline) == online
                and (online or self._expired(nid, now))
            ]
            if not flip:
                return []
            rev = await self.store.set_online(flip, online)
            await self._fill_gap(rev)
            for nid in flip:
                if online:
                    self._offline.discard(nid)
                else:
                    self._offline.add(nid)
            changes: list[Subject] = [(nid, c) for nid in flip for c in self._hosted.get(nid, {})]
            # A host with no containers going off- or online changes nobody's map: waking
            # every long-poll for it made mass flips (a restarted fleet) cost N² replies.
            if rev is not None and changes:
                self._record(rev, changes)
        return flip

    def _put_container(self, container: Container) -> None:
        self._containers[container.key] = container
        self._hosted.setdefault(container.node_id, {})[container.id] = container

    def _index(self, node: NodeRecord) -> None:
        self._nodes[node.id] = node
        self._models[node.id] = node.node()
        self._by_key[node.public_key] = node.id
        if node.next_key is not None:
            self._by_key[node.next_key] = node.id
        self._by_name[node.name] = node.id
        self._ledger.add(node.id, Allocation(mesh_ip=node.mesh_ip, subnet=node.subnet))

    def _unindex(self, node: NodeRecord) -> None:
        self._nodes.pop(node.id, None)
        self._models.pop(node.id, None)
        self._by_key.pop(node.public_key, None)
        if node.next_key is not None:
            self._by_key.pop(node.next_key, None)
        self._by_name.pop(node.name, None)

    def _release(self, released: Released) -> None:
        self._released[released.node_id] = released
        self._ledger.add(
            f"released:{released.node_id}",
            Allocation(mesh_ip=released.mesh_ip, subnet=released.subnet),
        )

    def _check_cache(self) -> None:
        if self._cache_rev != self.revision:
            self._cache_rev = self.revision
            self._all_nodes = self._visible = None
            self._deltas.clear()

    def _record(self, rev: int, changes: Sequence[Subject]) -> None:
        self.revision = max(self.revision, rev)
        self._log.extend((rev, subject) for subject in changes)
        self._log_revs.extend(rev for _ in changes)
        if len(self._log) > 2 * self._log_limit:
            drop = len(self._log) - self._log_limit
            self._floor = self._log_revs[drop - 1]
            del self._log[:drop]
            del self._log_revs[:drop]
        self._notify()

    def _notify(self) -> None:
        """Wake the waiting long-polls COALESCE_SECONDS after the first change of a burst: a
        `compose up` of 20 containers, or many hosts joining at once, then costs each node one
        delta instead of one per change."""
        if self._wake_pending is None:
            self._wake_pending = asyncio.get_running_loop().call_later(COALESCE_SECONDS, self._wake)

    def _wake(self) -> None:
        if self._wake_pending is not None:
            self._wake_pending.cancel()
            self._wake_pending = None
        # Swap, then resolve: waiters of this change wake; later polls wait anew.
        waiting, self._waiting = self._waiting, {}
        for woken in waiting.values():
            if not woken.done():
                woken.set_result(None)


def _policy(record: PolicyRecord) -> Policy:
    """A stored policy, parsed again (it was validated before it was stored)."""
    return parse(record.source, record.file).model_copy(update={"revision": record.revision})
