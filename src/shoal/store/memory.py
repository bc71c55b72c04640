"""The in-memory store: the reference semantics of `Store`, and a fake for tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime

from shoal.model.keys import PublicKey
from shoal.model.netmap import Container, ContainerKey
from shoal.store.base import (
    Changes,
    ContainerRecord,
    ContainerTombstone,
    NodeRecord,
    PolicyRecord,
    Released,
    Snapshot,
    TokenRecord,
    Tombstone,
)
from shoal.store.claims import ClaimLedger
from shoal.store.errors import StoreConflict, TokenUnavailable

_UNIQUE = ("name", "public_key", "mesh_ip", "subnet")


class MemoryStore:
    def __init__(self) -> None:
        self.revision = 0
        self.settings: dict[str, str] = {}
        self.tokens: dict[str, TokenRecord] = {}
        self.nodes: dict[str, NodeRecord] = {}
        self.tombstones: dict[str, int] = {}
        self.containers: dict[ContainerKey, ContainerRecord] = {}
        self.container_tombstones: dict[ContainerKey, int] = {}
        self.revoked_keys: set[PublicKey] = set()
        self.released: dict[str, Released] = {}
        self.policies: list[PolicyRecord] = []
        self._claims = ClaimLedger()

    async def load(self, tombstone_limit: int) -> Snapshot:
        stones = sorted(self.tombstones.items(), key=lambda s: s[1])[-tombstone_limit:]
        gone = sorted(self.container_tombstones.items(), key=lambda s: s[1])
        return Snapshot(
            revision=self.revision,
            nodes=tuple(self.nodes[k] for k in sorted(self.nodes)),
            tombstones=tuple(Tombstone(node_id=n, removed_rev=r) for n, r in stones),
            containers=tuple(self.containers[k] for k in sorted(self.containers)),
            container_tombstones=tuple(
                ContainerTombstone(node_id=n, container_id=c, removed_rev=r)
                for (n, c), r in gone[-tombstone_limit:]
            ),
            revoked_keys=tuple(sorted(self.revoked_keys, key=str)),
            released=tuple(sorted(self.released.values(), key=lambda r: r.released_at)),
            policy=self.policies[-1] if self.policies else None,
        )

    async def get_setting(self, key: str) -> str | None:
        return self.settings.get(key)

    async def put_setting(self, key: str, value: str) -> None:
        self.settings[key] = value

    async def list_settings(self) -> dict[str, str]:
        return dict(self.settings)

    async def add_token(self, token: TokenRecord) -> None:
        if token.id in self.tokens:
            raise StoreConflict("token id")
        self.tokens[token.id] = token

    async def get_token(self, token_id: str) -> TokenRecord | None:
        return self.tokens.get(token_id)

    async def list_tokens(self) -> list[TokenRecord]:
        return sorted(self.tokens.values(), key=lambda t: (t.created_at, t.id))

    async def revoke_token(self, token_id: str, at: datetime) -> bool:
        token = self.tokens.get(token_id)
        if token is None:
            return False
        if token.revoked_at is None:
            self.tokens[token_id] = replace(token, revoked_at=at)
        return True

    async def save_node(
        self, node: NodeRecord, *, consume_token: str | None = None, at: datetime | None = None
    ) -> int:
        when = at or datetime.now(UTC)
        for other in self.nodes.values():
            if other.id == node.id:
                continue
            for field in _UNIQUE:
                value = getattr(node, field)
                if value is not None and getattr(other, field) == value:
                    raise StoreConflict(field)
        if consume_token is not None:
            token = self.tokens.get(consume_token)
            if (
                token is None
                or (token.max_uses is not None and token.uses >= token.max_uses)
                or token.revoked_at is not None
                or (token.expires_at is not None and token.expires_at <= when)
            ):
                raise TokenUnavailable(consume_token)
            self.tokens[consume_token] = replace(
                token,
                uses=token.uses + 1,
                used_at=token.used_at or when,
                used_by=token.used_by or node.id,
            )
        self.revision += 1
        old = self.nodes.get(node.id)
        online = old.online if old is not None else True
        self.nodes[node.id] = replace(node, updated_rev=self.revision, online=online)
        self.tombstones.pop(node.id, None)
        return self.revision

    async def remove_node(
        self, node_id: str, *, revoke_key: bool = False, at: datetime | None = None
    ) -> int | None:
        node = self.nodes.pop(node_id, None)
        if node is None:
            return None
        if revoke_key:
            self.revoked_keys.add(node.public_key)
            if node.next_key is not None:
                self.revoked_keys.add(node.next_key)
        self.released[node_id] = Released(
            node_id, node.mesh_ip, node.subnet, at or datetime.now(UTC)
        )
        self.revision += 1
        self.tombstones[node_id] = self.revision
        for key in [k for k in self.containers if k[0] == node_id]:
            del self.containers[key]
            self.container_tombstones[key] = self.revision
        return self.revision

    async def save_containers(
        self, node_id: str, changed: Sequence[Container], removed: Sequence[str]
    ) -> int:
        if any(c.node_id != node_id for c in changed):
            raise ValueError(f"save_containers({node_id!r}) given another node's container")
        self.revision += 1
        for container in changed:
            self.containers[container.key] = ContainerRecord(container, self.revision)
            self.container_tombstones.pop(container.key, None)
        for cid in removed:
            if self.containers.pop((node_id, cid), None) is not None:
                self.container_tombstones[(node_id, cid)] = self.revision
        return self.revision

    async def set_online(self, node_ids: Sequence[str], online: bool) -> int | None:
        wanted = set(node_ids)
        for nid in wanted & self.nodes.keys():
            self.nodes[nid] = replace(self.nodes[nid], online=online)
        affected = [k for k in self.containers if k[0] in wanted]
        if not affected:
            return None
        self.revision += 1
        for key in affected:
            self.containers[key] = replace(self.containers[key], updated_rev=self.revision)
        return self.revision

    async def touch_nodes(self, seen: Mapping[str, datetime]) -> None:
        for node_id, at in seen.items():
            node = self.nodes.get(node_id)
            if node is not None:
                self.nodes[node_id] = replace(node, last_seen=at)

    async def drop_released(self, node_ids: Sequence[str]) -> None:
        for node_id in node_ids:
            self.released.pop(node_id, None)

    async def changes_since(self, since: int, *, before: int | None = None) -> Changes:
        upto = self.revision if before is None else before - 1

        def within(rev: int) -> bool:
            return since < rev <= upto

        return Changes(
            revision=upto,
            nodes=tuple(
                sorted(
                    (n for n in self.nodes.values() if within(n.updated_rev)),
                    key=lambda n: (n.updated_rev, n.id),
                )
            ),
            tombstones=tuple(
                Tombstone(node_id=n, removed_rev=r)
                for n, r in sorted(self.tombstones.items(), key=lambda s: (s[1], s[0]))
                if within(r)
            ),
            containers=tuple(
                sorted(
                    (c for c in self.containers.values() if within(c.updated_rev)),
                    key=lambda c: (c.updated_rev, c.container.key),
                )
            ),
            container_tombstones=tuple(
                ContainerTombstone(node_id=k[0], container_id=k[1], removed_rev=r)
                for k, r in sorted(self.container_tombstones.items(), key=lambda s: (s[1], s[0]))
                if within(r)
            ),
            offline=frozenset(n.id for n in self.nodes.values() if not n.online),
            revoked_keys=frozenset(self.revoked_keys),
            released=tuple(sorted(self.released.values(), key=lambda r: r.released_at)),
            policy=self.policies[-1]
            if self.policies and within(self.policies[-1].updated_rev)
            else None,
        )

    async def seen_times(self, node_ids: Sequence[str]) -> dict[str, datetime]:
        return {
            nid: seen
            for nid in node_ids
            if (node := self.nodes.get(nid)) is not None and (seen := node.last_seen) is not None
        }

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        yield  # one server uses this store: nothing to hold across servers

    async def claim_signature(self, mac: bytes, expires_at: int, now: int) -> bool:
        return self._claims.claim(mac, expires_at, now)  # one server: its memory is the truth

    async def notifications(self) -> AsyncIterator[int]:
        await asyncio.Event().wait()  # one writer: nothing to hear
        yield self.revision

    async def save_policy(self, file: str, source: str, at: datetime) -> PolicyRecord:
        self.revision += 1
        record = PolicyRecord(len(self.policies) + 1, file, source, at, self.revision)
        self.policies.append(record)
        return record

    async def close(self) -> None:
        return None
