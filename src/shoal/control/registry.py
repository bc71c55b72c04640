"""The registry and mapper: nodes and containers in memory, their writes, per-node map updates.

The registry loads every node and container from the store at start and is then their only
writer: each change goes to the store first (which assigns the new global revision), then to
memory and the change log (`control/changelog.py`), which wakes the long-polls. Writes that
take a revision are serialised by one lock, so the log stays in revision order.
`map_update(node, since)` answers from memory:

- since 0, in the future, or older than the retained log → a full `NetworkMap`;
- since < revision → a delta of the nodes and containers changed/removed after `since`, which
  the change log finds and keeps: every node that is not itself part of the change gets the
  same delta, computed once;
- since == revision → wait (up to `wait` s) for the next change, then as above, or "none".

Liveness (`control/liveness.py`) says who was heard of when; the registry writes what follows
from it: a node the sweep finds silent is taken offline, so its containers leave every map
(the log records them at a new revision, so they arrive as removals) while its WireGuard peer
entry stays, since the data plane must outlive a control outage. Its next request brings it
back online and its containers back into the maps.

Several replicas on one store (PostgreSQL): each registry is the writer of its own changes and
takes in the others' with `catch_up` (on each revision the store announces, and before it
records a revision of its own that skips some: revisions are gapless in the store, so a gap
is another replica's work, which must enter the log first to keep it in revision order).
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from ipaddress import IPv4Network
from itertools import groupby
from operator import itemgetter

from shoal.control.changelog import LOG_LIMIT, Changed, ChangeLog, Entry, SharedDelta, Subject
from shoal.control.errors import CredentialInvalid, PoolExhausted
from shoal.control.ipam import Allocation, Ledger, Pools
from shoal.control.liveness import (
    DEFAULT_HEARTBEAT_TIMEOUT,
    SEEN_PERSIST_INTERVAL,
    Clock,
    Liveness,
    utcnow,
)
from shoal.model.keys import PublicKey
from shoal.model.netmap import Container, ContainerKey, MapUpdate, MeshSettings, NetworkMap, Node
from shoal.model.policy import Policy, parse
from shoal.store.base import NodeRecord, PolicyRecord, Released, Snapshot, Store

DEFAULT_QUARANTINE = timedelta(hours=24)


class Registry:
    """The index of nodes and containers, their only writer, and the mapper answering each
    node's poll; `log` (the change log) and `liveness` are its parts."""

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
        self.quarantine = quarantine
        self.settings = settings
        self._clock = clock
        self._nodes: dict[str, NodeRecord] = {}
        self._models: dict[str, Node] = {}
        # The ids of `_models`, kept sorted: a registration's full map took a sort of every
        # node id (6 ms at 10,000 nodes) because each registration is a new revision.
        self._ids: list[str] = []
        self._by_key: dict[PublicKey, str] = {}
        self._by_name: dict[str, str] = {}
        # The few nodes the per-second sweep looks at beyond liveness (sorting all 10,000
        # nodes twice a second for them was most of an idle sweep's cost).
        self._ephemeral: set[str] = set()
        self._rotating: set[str] = set()
        # By node id; a removed node's addresses stay in it under "released:<id>" (see
        # `allocate`).
        self._ledger: Ledger[str] = Ledger()
        self._released: dict[str, Released] = {}
        self._revoked: set[PublicKey] = set(snapshot.revoked_keys)
        self.liveness = Liveness(
            store,
            self._nodes.keys(),
            clock=clock,
            heartbeat_timeout=heartbeat_timeout,
            seen_persist_interval=seen_persist_interval,
        )
        # Keyed by (node id, container id): a node's report only ever touches its own.
        self._containers: dict[ContainerKey, Container] = {}
        self._hosted: dict[str, dict[str, Container]] = {}  # node id → its containers by id
        self._write = asyncio.Lock()
        self.log = ChangeLog.from_snapshot(snapshot, limit=log_limit)
        # The sorted parts of the full map, valid for one revision (`full_map`).
        self._cache_rev = -1
        self._none: MapUpdate | None = None
        self._all_nodes: tuple[Node, ...] | None = None
        self._visible: tuple[Container, ...] | None = None
        for node in snapshot.nodes:
            self._index(node)
            self.liveness.stored(node.id, node.last_seen)
            if not node.online:
                self.liveness.set_online([node.id], online=False)
        for record in snapshot.containers:
            self._put_container(record.container)
        # The access-control policy: no change-log entry, a delta carries it when it changed
        # after `since` (its own revision says so).
        self.policy_record = snapshot.policy
        self.policy = None if snapshot.policy is None else _policy(snapshot.policy)
        taken = {(n.mesh_ip, n.subnet) for n in snapshot.nodes}
        for released in snapshot.released:
            # A quarantined allocation since handed out again (the pool ran short) is over.
            if not any(released.mesh_ip == ip or _overlap(released.subnet, s) for ip, s in taken):
                self._release(released)

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

    @property
    def revision(self) -> int:
        """The revision of the newest change this registry knows of."""
        return self.log.revision

    @property
    def heartbeat_timeout(self) -> timedelta:
        return self.liveness.heartbeat_timeout

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

    def ephemeral_nodes(self) -> list[NodeRecord]:
        """The nodes that joined with an ephemeral token, by id."""
        return [self._nodes[nid] for nid in sorted(self._ephemeral)]

    def rotating_nodes(self) -> list[NodeRecord]:
        """The nodes with a key rotation announced (`next_key` set), by id."""
        return [self._nodes[nid] for nid in sorted(self._rotating)]

    def allocate(self, pools: Pools, node_id: str, *, subnet: bool = True) -> Allocation:
        """The mesh IP and subnet of this node: its own, else the lowest never used.

        A removed node's addresses stay taken (quarantined) so that no peer routes its
        traffic to a newcomer; only when the pools run out are those whose quarantine is over
        handed out again, the longest released first."""
        while True:
            try:
                return self._ledger.allocate(pools, node_id, subnet=subnet)
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
        return self.liveness.last_seen(node_id)

    def silent_for(self, node_id: str, now: datetime) -> timedelta:
        """How long since the node was last heard of (a server start counts as hearing)."""
        return self.liveness.silent_for(node_id, now)

    def online(self, node_id: str) -> bool:
        """Heard from within the heartbeat timeout (a server start counts as hearing from all),
        and not withdrawn by the sweeper."""
        return node_id in self._nodes and self.liveness.online(node_id)

    # Writing.

    async def save(self, node: NodeRecord, *, consume_token: str | None = None) -> NodeRecord:
        """Persist `node` (new or changed) at a new revision and tell the long-polls."""
        async with self._write:
            now = self._clock()
            rev = await self.store.save_node(node, consume_token=consume_token, at=now)
            await self._fill_gap(rev)
            old = self._nodes.get(node.id)
            saved = replace(node, updated_rev=rev, online=node.id not in self.liveness.offline)
            if old is not None:
                self._unindex(old)
            self._index(saved)
            self.liveness.stored(saved.id, saved.last_seen)
            self.log.record(rev, [node.id])
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
            self.liveness.forget(node_id)
            gone = [(node_id, cid) for cid in self._hosted.pop(node_id, {})]
            for key in gone:
                del self._containers[key]
            if rev is None:
                return node is not None
            self.log.record(rev, [node_id, *gone])
        return True

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
            self.log.record(rev, [c.key for c in changed] + [(node_id, c) for c in removed])
        return rev

    async def save_policy(self, policy: Policy | None, source: str) -> PolicyRecord:
        """Persist a validated policy (its text as given) at a new revision, or with None its
        removal (a record with no file: shoal's defaults again); it reaches every node's next
        poll in the delta."""
        async with self._write:
            file = "" if policy is None else policy.file
            record = await self.store.save_policy(file, source, self._clock())
            await self._fill_gap(record.updated_rev)
            self.policy_record = record
            self.policy = (
                None if policy is None else policy.model_copy(update={"revision": record.revision})
            )
            self.log.record(record.updated_rev, [])
        return record

    async def seen(self, node_id: str) -> None:
        """The node made an authenticated request: it is alive. Brings an offline node (and
        its containers) back at once; last_seen reaches the store with the next sweep."""
        if self.liveness.heard(node_id):
            await self._set_online([node_id], online=True)

    async def flush_seen(self) -> None:
        """Persist the last_seen times not written for the persist interval."""
        await self.liveness.flush()

    async def sweep(self) -> list[str]:
        """Persist due last_seen times, then take nodes silent for longer than the heartbeat
        timeout offline; their ids."""
        silent = await self.liveness.silent()
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
            self.liveness.forget(stone.node_id)
            for cid in self._hosted.pop(stone.node_id, {}):
                del self._containers[(stone.node_id, cid)]
            entries.append((stone.removed_rev, stone.node_id))
        for record in changes.nodes:
            old = self._nodes.get(record.id)
            if old is not None:
                self._unindex(old)
            self._index(record)
            if record.last_seen is not None:
                self.liveness.stored_elsewhere({record.id: record.last_seen})
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
        self.liveness.replace_offline(changes.offline)
        self._revoked = set(changes.revoked_keys)
        for released in changes.released:
            if released.node_id not in self._released and released.node_id not in self._nodes:
                self._release(released)
        entries.sort(key=itemgetter(0))
        for rev, group in groupby(entries, key=itemgetter(0)):
            self.log.record(rev, [subject for _, subject in group])
        self.log.advance(changes.revision)
        self.log.notify()

    def close(self) -> None:
        """Server shutting down: end every long-poll now, and do not start new waits."""
        self.log.close()

    # Mapping.

    def full_map(self, node_id: str) -> NetworkMap:
        me = self.require(node_id)
        if self._cache_rev != self.revision:
            self._cache_rev = self.revision
            self._all_nodes = self._visible = None
        if self._all_nodes is None:
            self._all_nodes = tuple(map(self._models.__getitem__, self._ids))
        if self._visible is None:
            offline = self.liveness.offline
            self._visible = tuple(
                self._containers[k]
                for k in sorted(self._containers)
                if self._containers[k].node_id not in offline
            )
        return NetworkMap(
            revision=self.revision,
            settings=self.settings,
            self_node=self._models[me.id],
            peers=_without(self._all_nodes, bisect.bisect_left(self._ids, node_id)),
            containers=self._visible,
            policy=self.policy,
        )

    async def map_update(self, node_id: str, since: int, wait: float) -> MapUpdate:
        """What `node_id`, holding the map at revision `since`, should receive next."""
        self.require(node_id)
        if since == self.log.revision and wait > 0:  # nothing to send yet
            await self.log.wait(node_id, since, wait)
            self.require(node_id)  # removed while waiting → its credential is now invalid
        revision = self.log.revision
        if since == revision:
            return self._nothing_new()
        if not self.log.covers(since):
            return MapUpdate(kind="full", revision=revision, full=self.full_map(node_id))
        delta = self.log.delta(since, self._shared_delta)
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

    def shared_update(self, node_id: str, since: int) -> MapUpdate | None:
        """What `map_update(node_id, since, 0)` returns when it is the update shared by every
        node not itself changed since `since` (built and encoded once per revision): the
        delta, or "none" when `since` is the current revision; for a known node that is
        online. None otherwise (the caller takes the long way)."""
        if node_id not in self._nodes or node_id in self.liveness.offline:
            return None
        if since == self.log.revision:
            return self._nothing_new()
        if not self.log.covers(since):
            return None
        delta = self.log.delta(since, self._shared_delta)
        return None if node_id in delta.nodes_changed else delta.update

    def _nothing_new(self) -> MapUpdate:
        """The "none" update of the current revision: one object per revision, so that each
        stream's heartbeat writes the bytes the encoder made once (10,000 streams send one
        every `wait` seconds whether anything changed or not)."""
        nothing = self._none
        if nothing is None or nothing.revision != self.log.revision:
            nothing = self._none = MapUpdate(kind="none", revision=self.log.revision)
        return nothing

    def _shared_delta(self, since: int, changed: Changed) -> SharedDelta:
        """The delta from `since` of every node not among `changed.nodes`."""
        nodes = {k: self._models[k] for k in changed.nodes if k in self._models}
        offline = self.liveness.offline
        visible = [
            c
            for k in changed.containers
            if (c := self._containers.get(k)) is not None and c.node_id not in offline
        ]
        shown = {c.key for c in visible}
        update = MapUpdate(
            kind="delta",
            revision=self.revision,
            peers_changed=tuple(nodes.values()),
            peers_removed=tuple(k for k in changed.nodes if k not in self._models),
            containers_changed=tuple(visible),
            containers_removed=tuple(k for k in changed.containers if k not in shown),
            policy=self.policy if self._policy_changed(since) else None,
            policy_cleared=self.policy is None and self._policy_changed(since),
        )
        return SharedDelta(nodes_changed=nodes, update=update)

    # Internals.

    def _policy_changed(self, since: int) -> bool:
        """Whether the policy was set or cleared after revision `since`."""
        return self.policy_record is not None and self.policy_record.updated_rev > since

    async def _set_online(self, node_ids: Iterable[str], *, online: bool) -> list[str]:
        async with self._write:
            now = self._clock()
            # Checked again under the lock: another request may have flipped them meanwhile.
            flip = [
                nid
                for nid in node_ids
                if nid in self._nodes and self.liveness.should_flip(nid, online=online, now=now)
            ]
            if not flip:
                return []
            rev = await self.store.set_online(flip, online)
            await self._fill_gap(rev)
            self.liveness.set_online(flip, online=online)
            changes: list[Subject] = [(nid, c) for nid in flip for c in self._hosted.get(nid, {})]
            # A host with no containers going off- or online changes nobody's map: waking
            # every long-poll for it made mass flips (a restarted fleet) cost N² replies.
            if rev is not None and changes:
                self.log.record(rev, changes)
        return flip

    def _put_container(self, container: Container) -> None:
        self._containers[container.key] = container
        self._hosted.setdefault(container.node_id, {})[container.id] = container

    def _index(self, node: NodeRecord) -> None:
        if node.id not in self._models:
            bisect.insort(self._ids, node.id)
        self._nodes[node.id] = node
        self._models[node.id] = node.node()
        self._by_key[node.public_key] = node.id
        if node.next_key is not None:
            self._by_key[node.next_key] = node.id
        self._by_name[node.name] = node.id
        if node.ephemeral:
            self._ephemeral.add(node.id)
        if node.next_key is not None:
            self._rotating.add(node.id)
        self._ledger.add(node.id, Allocation(mesh_ip=node.mesh_ip, subnet=node.subnet))
        self.liveness.track(node.id)

    def _unindex(self, node: NodeRecord) -> None:
        self._nodes.pop(node.id, None)
        if self._models.pop(node.id, None) is not None:
            del self._ids[bisect.bisect_left(self._ids, node.id)]
        self._by_key.pop(node.public_key, None)
        if node.next_key is not None:
            self._by_key.pop(node.next_key, None)
        self._by_name.pop(node.name, None)
        self._ephemeral.discard(node.id)
        self._rotating.discard(node.id)

    def _release(self, released: Released) -> None:
        self._released[released.node_id] = released
        self._ledger.add(
            f"released:{released.node_id}",
            Allocation(mesh_ip=released.mesh_ip, subnet=released.subnet),
        )


def _without(nodes: tuple[Node, ...], index: int) -> tuple[Node, ...]:
    """`nodes` less the one at `index` (slices: no Python-level loop over the mesh)."""
    return nodes[:index] + nodes[index + 1 :]


def _overlap(a: IPv4Network | None, b: IPv4Network | None) -> bool:
    return a is not None and b is not None and a.overlaps(b)


def _policy(record: PolicyRecord) -> Policy | None:
    """A stored policy, parsed again (it was validated before it was stored); None for a
    removal."""
    if record.cleared:
        return None
    return parse(record.source, record.file).model_copy(update={"revision": record.revision})
