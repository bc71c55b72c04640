"""The store protocol, against the SQLite backend (a file in tmp_path) and the memory reference."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from shoal.model.keys import PrivateKey
from shoal.model.netmap import Endpoint
from shoal.store import (
    NodeRecord,
    Store,
    StoreConflict,
    TokenRecord,
    TokenUnavailable,
    open_store,
)
from shoal.store.memory import MemoryStore
from shoal.store.sqlite import SqliteStore

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def token(tid: str = "t1", *, reusable: bool = False, **kw: object) -> TokenRecord:
    return TokenRecord(
        id=tid,
        secret_hash="h-" + tid,
        reusable=reusable,
        tags=("web",),
        created_at=T0,
        **kw,  # type: ignore[arg-type]
    )


def node(i: int, **kw: object) -> NodeRecord:
    base = NodeRecord(
        id=f"n{i}",
        name=f"h{i}",
        public_key=PrivateKey(bytes([i]) * 32).public_key(),
        mesh_ip=IPv4Address(f"100.64.0.{i}"),
        subnet=IPv4Network(f"10.42.{i}.0/24"),
        endpoints=(Endpoint(host=IPv4Address("192.0.2.1"), port=51820 + i),),
        credential_hash=f"c{i}",
        created_at=T0,
        tags=("web",),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s: Store = SqliteStore(tmp_path / "shoal.db") if request.param == "sqlite" else MemoryStore()
    yield s
    await s.close()


async def test_tokens_roundtrip_and_revoke(store: Store) -> None:
    await store.add_token(token("t1", expires_at=T0 + timedelta(hours=1)))
    await store.add_token(token("t2", reusable=True))
    assert [t.id for t in await store.list_tokens()] == ["t1", "t2"]
    got = await store.get_token("t1")
    assert got == token("t1", expires_at=T0 + timedelta(hours=1))
    assert await store.revoke_token("t1", T0) is True
    assert await store.revoke_token("nope", T0) is False
    revoked = await store.get_token("t1")
    assert revoked is not None and revoked.revoked_at == T0
    assert await store.get_token("nope") is None


async def test_nodes_bump_the_revision_and_leave_tombstones(store: Store) -> None:
    assert (await store.load(100)).revision == 0
    assert await store.save_node(node(1)) == 1
    assert await store.save_node(node(2)) == 2
    assert await store.save_node(node(1, endpoints=())) == 3
    assert await store.remove_node("n2") == 4
    assert await store.remove_node("n2") is None
    await store.touch_node("n1", T0 + timedelta(seconds=5))
    snap = await store.load(100)
    assert snap.revision == 4
    assert snap.nodes == (
        node(1, endpoints=(), updated_rev=3, last_seen=T0 + timedelta(seconds=5)),
    )
    assert [(t.node_id, t.removed_rev) for t in snap.tombstones] == [("n2", 4)]


async def test_unique_fields_conflict(store: Store) -> None:
    await store.save_node(node(1))
    with pytest.raises(StoreConflict) as err:
        await store.save_node(node(2, name="h1"))
    assert err.value.field == "name"
    with pytest.raises(StoreConflict):
        await store.save_node(node(2, subnet=IPv4Network("10.42.1.0/24")))
    assert (await store.load(10)).revision == 1  # nothing changed


async def test_consuming_a_single_use_token_is_once_only(store: Store) -> None:
    await store.add_token(token("t1"))
    await store.save_node(node(1), consume_token="t1", at=T0)
    used = await store.get_token("t1")
    assert used is not None and used.used_at == T0 and used.used_by == "n1"
    with pytest.raises(TokenUnavailable):
        await store.save_node(node(2), consume_token="t1", at=T0)
    snap = await store.load(10)
    assert [n.id for n in snap.nodes] == ["n1"] and snap.revision == 1


async def test_expired_or_revoked_token_is_not_consumed(store: Store) -> None:
    await store.add_token(token("old", expires_at=T0))
    await store.add_token(token("rev"))
    await store.revoke_token("rev", T0)
    for tid in ("old", "rev"):
        with pytest.raises(TokenUnavailable):
            await store.save_node(node(1), consume_token=tid, at=T0)
    assert (await store.load(10)).nodes == ()


async def test_sqlite_persists_across_reopen(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path / "shoal.db")
    await first.save_node(node(1))
    await first.put_setting("mesh_pool", "100.64.0.0/10")
    await first.close()
    again = open_store(None, tmp_path)
    assert (await again.load(10)).nodes == (node(1, updated_rev=1),)
    assert await again.get_setting("mesh_pool") == "100.64.0.0/10"
    await again.close()


async def test_two_servers_racing_on_one_single_use_token(tmp_path: Path) -> None:
    """Two connections to one database file: exactly one registration consumes the token."""
    a, b = SqliteStore(tmp_path / "shoal.db"), SqliteStore(tmp_path / "shoal.db")
    await a.add_token(token("t1"))
    results = await asyncio.gather(
        a.save_node(node(1), consume_token="t1", at=T0),
        b.save_node(node(2), consume_token="t1", at=T0),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["TokenUnavailable", "int"]
    snap = await a.load(10)
    assert len(snap.nodes) == 1 and snap.revision == 1
    await a.close()
    await b.close()
