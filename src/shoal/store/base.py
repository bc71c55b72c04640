"""The `Store` protocol and the records it keeps.

The control server's logic talks only to this protocol. Every method is one transaction. A
mutation other nodes must see (`save_node`, `remove_node`, `save_containers`, `set_online`)
bumps the global revision inside its transaction and returns it, so several server replicas
sharing one database agree on it. Every row others see carries the revision of its last change
(`updated_rev`), and removals leave tombstones, so that the server can rebuild its change log
at start and keep answering deltas across a restart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network
from typing import Protocol

from shoal.model.keys import PublicKey
from shoal.model.netmap import Container, Endpoint, Node
from shoal.model.routes import RouteStatus


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A join token as stored: only the hash of its secret."""

    id: str
    secret_hash: str
    reusable: bool
    tags: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None = None
    used_at: datetime | None = None
    used_by: str | None = None  # node id of the first registration it authorised
    revoked_at: datetime | None = None
    max_uses: int | None = 1  # registrations it may authorise; None: unlimited
    uses: int = 0
    ephemeral: bool = False  # its nodes are removed once offline for the ephemeral timeout
    # None for a join token; "read" or "admin" for an admin token (SHOAL-ADMIN-1-...).
    scope: str | None = None


@dataclass(frozen=True, slots=True)
class RouteRecord:
    """A subnet route a node advertised, and the admin's decision on it (table `routes`)."""

    prefix: IPv4Network
    status: RouteStatus
    advertised_at: datetime
    decided_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A node as stored; `node()` is what its peers see in the netmap."""

    id: str
    name: str
    public_key: PublicKey
    mesh_ip: IPv4Address
    subnet: IPv4Network | None  # None: a host without Docker
    endpoints: tuple[Endpoint, ...]
    created_at: datetime
    tags: tuple[str, ...] = ()
    ephemeral: bool = False
    last_seen: datetime | None = None
    updated_rev: int = 0  # the revision of its last change visible to peers
    # False once the server withdrew its containers (missed heartbeats); changed only by
    # `Store.set_online`, never by `save_node`.
    online: bool = True
    # A key rotation in progress (see `Node.next_key`); the node is found by either key until
    # the server finalises it.
    next_key: PublicKey | None = None
    switch_at: datetime | None = None
    # The subnet routes it advertises, sorted by prefix; saved with the node (`save_node`
    # replaces them), so an approval reaches the peers as a change of the node.
    routes: tuple[RouteRecord, ...] = ()

    def node(self) -> Node:
        return Node(
            id=self.id,
            name=self.name,
            public_key=self.public_key,
            mesh_ip=self.mesh_ip,
            subnet=self.subnet,
            endpoints=self.endpoints,
            tags=self.tags,
            next_key=self.next_key,
            switch_at=self.switch_at,
            routes=tuple(r.prefix for r in self.routes if r.status == "approved"),
        )


@dataclass(frozen=True, slots=True)
class Tombstone:
    node_id: str
    removed_rev: int


@dataclass(frozen=True, slots=True)
class ContainerRecord:
    """A container as stored, with the revision of its last change (its node going offline or
    online counts as a change: it leaves or re-enters every map)."""

    container: Container
    updated_rev: int = 0


@dataclass(frozen=True, slots=True)
class ContainerTombstone:
    node_id: str
    container_id: str
    removed_rev: int


@dataclass(frozen=True, slots=True)
class Released:
    """The addresses of a removed node, quarantined: not handed to another node before
    `released_at` + the quarantine, so peers never route a removed node's traffic to a new
    (possibly hostile) host while stale maps, caches or connections still name it."""

    node_id: str
    mesh_ip: IPv4Address
    subnet: IPv4Network | None
    released_at: datetime


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    """The access-control policy as the admin set it (its text, comments and all)."""

    revision: int  # the policy's own number: 1 for the first one set, then 2, ...
    file: str  # the name it was set from, for `file:line` in errors and verdicts; "": cleared
    source: str
    set_at: datetime
    updated_rev: int = 0  # the global revision at which it reached the maps

    @property
    def cleared(self) -> bool:
        """Whether this record removed the policy (`shoal policy clear`): shoal's defaults
        apply again. A set policy always has a file name."""
        return not self.file


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the server loads at start."""

    revision: int
    nodes: tuple[NodeRecord, ...]
    tombstones: tuple[Tombstone, ...]  # the most recent ones, oldest first
    containers: tuple[ContainerRecord, ...] = ()  # sorted by key (node id, container id)
    container_tombstones: tuple[ContainerTombstone, ...] = ()  # most recent, oldest first
    revoked_keys: tuple[PublicKey, ...] = ()  # keys of removed nodes: they may not rejoin
    released: tuple[Released, ...] = ()  # oldest first
    policy: PolicyRecord | None = None  # the newest policy; None: none was ever set


@dataclass(frozen=True, slots=True)
class Changes:
    """What changed in the store after a revision: how a server replica catches up with the
    writes of the others (see `Store.changes_since`)."""

    revision: int  # the revision these changes bring the reader up to
    nodes: tuple[NodeRecord, ...]  # saved after `since`, by updated_rev
    tombstones: tuple[Tombstone, ...]  # removed after `since`, by removed_rev
    containers: tuple[ContainerRecord, ...]  # by updated_rev
    container_tombstones: tuple[ContainerTombstone, ...]  # by removed_rev
    offline: frozenset[str]  # every node flagged offline now (the flag takes no node revision)
    revoked_keys: frozenset[PublicKey]  # all of them now
    released: tuple[Released, ...]  # all of them now
    policy: PolicyRecord | None = None  # the newest policy, if it was set in the range


def no_changes(revision: int) -> Changes:
    """Nothing after `revision` (the sets are empty: a reader ignores a Changes that brings
    no newer revision)."""
    return Changes(
        revision=revision,
        nodes=(),
        tombstones=(),
        containers=(),
        container_tombstones=(),
        offline=frozenset(),
        revoked_keys=frozenset(),
        released=(),
    )


class Store(Protocol):
    async def load(self, tombstone_limit: int) -> Snapshot: ...

    async def get_setting(self, key: str) -> str | None: ...

    async def put_setting(self, key: str, value: str) -> None: ...

    async def list_settings(self) -> dict[str, str]:
        """Every setting (what `shoal server migrate` carries to another store)."""
        ...

    async def add_token(self, token: TokenRecord) -> None: ...

    async def get_token(self, token_id: str) -> TokenRecord | None: ...

    async def list_tokens(self) -> list[TokenRecord]: ...

    async def revoke_token(self, token_id: str, at: datetime) -> bool:
        """Revoke; False if there is no such token."""
        ...

    async def save_node(
        self, node: NodeRecord, *, consume_token: str | None = None, at: datetime | None = None
    ) -> int:
        """Insert or replace `node` (by id) at a new revision and return that revision. Its
        `routes` replace the ones stored for it.

        With `consume_token`, counts one use of that token (at `at`, by `node.id`) in the
        same transaction, only if it still has uses left and is unrevoked and unexpired at
        `at`; else raises `TokenUnavailable` and changes nothing. Raises `StoreConflict` when
        a unique field belongs to another node.
        """
        ...

    async def remove_node(
        self, node_id: str, *, revoke_key: bool = False, at: datetime | None = None
    ) -> int | None:
        """Delete the node and its containers, leave tombstones for all of them, and release
        its addresses into quarantine (at `at`); with `revoke_key`, record its key (and its
        next key, during a rotation) as revoked.
        The new revision, or None if it did not exist."""
        ...

    async def drop_released(self, node_ids: Sequence[str]) -> None:
        """Forget quarantined allocations (their addresses are handed out again)."""
        ...

    async def save_containers(
        self, node_id: str, changed: Sequence[Container], removed: Sequence[str]
    ) -> int:
        """Upsert `node_id`'s containers `changed` (each must belong to `node_id`) and delete
        its containers with the ids `removed` (leaving tombstones), all at one new revision,
        returned. A container is keyed by (node id, container id): another node's container
        of the same id is never touched."""
        ...

    async def set_online(self, node_ids: Sequence[str], online: bool) -> int | None:
        """Flag the nodes online or offline. If any of them has containers, their rows take a
        new revision (returned); otherwise no revision is used and None is returned."""
        ...

    async def touch_nodes(self, seen: Mapping[str, datetime]) -> None:
        """Record each node's `last_seen` (one transaction for all; unknown ids are ignored);
        not a change peers see, so no new revision."""
        ...

    async def changes_since(self, since: int, *, before: int | None = None) -> Changes:
        """The rows changed at revisions in (since, before), or after `since` if `before` is
        None, read in one consistent snapshot; `revision` is `before - 1`, or the store's
        revision in that snapshot. A row changed inside the range and again at `before` or
        later is not returned (its newest change is a later catch-up's); so is a policy."""
        ...

    async def seen_times(self, node_ids: Sequence[str]) -> dict[str, datetime]:
        """The stored last_seen of these nodes (those that have one): what other replicas
        heard of them."""
        ...

    def notifications(self) -> AsyncIterator[int]:
        """Revisions committed by any writer, as they commit (and the current one after each
        (re)connection, so nothing missed while away goes unnoticed). A store with a single
        writer (SQLite, memory) has nothing to tell and waits forever, at no cost."""
        ...

    def exclusive(self, name: str) -> AbstractAsyncContextManager[None]:
        """Hold the lock `name` across every server sharing the store while the block runs
        (one holder at a time; a holder that dies releases it). A store one server uses has
        nothing to hold: that server's own locks suffice."""
        ...

    async def claim_signature(self, mac: bytes, expires_at: int, now: int) -> bool:
        """Record a signed request's MAC as used until `expires_at` (unix seconds): True the
        first time, False for any later claim of it before then (a replay), made through any
        server sharing the store. `now` is the caller's clock; a claim past its expiry may be
        forgotten (the signature's time window refuses that request by then anyway). A store
        one server uses keeps its claims in that process (`shoal.store.claims`)."""
        ...

    async def save_policy(self, file: str, source: str, at: datetime) -> PolicyRecord:
        """Store a new policy (the previous one's revision + 1) at a new global revision;
        earlier policies are kept for the record."""
        ...

    async def close(self) -> None: ...
