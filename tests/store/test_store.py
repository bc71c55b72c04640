"""The store protocol, against the SQLite backend (a file in tmp_path), PostgreSQL (a schema of
the run's test database) and the memory reference."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import psycopg
import pytest

from shoal.model.keys import PrivateKey
from shoal.model.netmap import Container, Endpoint, PortSpec
from shoal.store import (
    ContainerRecord,
    ContainerTombstone,
    NodeRecord,
    RouteRecord,
    Store,
    StoreConflict,
    StoreError,
    TokenRecord,
    TokenUnavailable,
    open_store,
)
from shoal.store.memory import MemoryStore
from shoal.store.postgresql import MIGRATIONS, SCHEMA_VERSION, PostgresStore, migrate
from shoal.store.sqlite import SqliteStore, schema_sql
from shoal.store.transfer import copy_state

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def token(tid: str = "t1", *, reusable: bool = False, **kw: object) -> TokenRecord:
    return TokenRecord(
        id=tid,
        secret_hash="h-" + tid,
        reusable=reusable,
        max_uses=None if reusable else 1,
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
        created_at=T0,
        tags=("web",),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgresql", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s: Store
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "shoal.db")
    elif request.param == "postgresql":
        s = PostgresStore(request.getfixturevalue("postgres_url"))
    else:
        s = MemoryStore()
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
    await store.touch_nodes({"n1": T0 + timedelta(seconds=5), "gone": T0})
    snap = await store.load(100)
    assert snap.revision == 4
    assert snap.nodes == (
        node(1, endpoints=(), updated_rev=3, last_seen=T0 + timedelta(seconds=5)),
    )
    assert [(t.node_id, t.removed_rev) for t in snap.tombstones] == [("n2", 4)]


async def test_routes_are_saved_with_their_node_replaced_by_the_next_save_and_removed_with_it(
    store: Store,
) -> None:
    lan = RouteRecord(IPv4Network("192.168.7.0/24"), "pending", T0)
    vpc = RouteRecord(IPv4Network("172.20.0.0/16"), "approved", T0, T0 + timedelta(minutes=1))
    await store.save_node(node(1, routes=(vpc, lan)))
    await store.save_node(node(2))
    snap = await store.load(100)
    assert [n.routes for n in snap.nodes] == [(vpc, lan), ()]
    assert snap.nodes[0].node().routes == (IPv4Network("172.20.0.0/16"),)
    rev = await store.save_node(node(1, routes=(lan,)))
    changed = await store.changes_since(rev - 1)
    assert [(n.id, n.routes) for n in changed.nodes] == [("n1", (lan,))]
    await store.remove_node("n1")
    await store.save_node(node(1))  # the same id again: nothing of the old routes is left
    assert [n.routes for n in (await store.load(100)).nodes] == [(), ()]


async def test_hosts_without_docker_have_no_subnet_and_do_not_conflict_on_it(
    store: Store,
) -> None:
    await store.save_node(node(1, subnet=None))
    await store.save_node(node(2, subnet=None))
    assert [n.subnet for n in (await store.load(100)).nodes] == [None, None]
    await store.remove_node("n1")
    assert [(r.node_id, r.subnet) for r in (await store.load(100)).released] == [("n1", None)]


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


def box(n: int, node_id: str = "n1", **kw: object) -> Container:
    return Container(
        id=f"{n:064x}",
        node_id=node_id,
        name=f"c{n}",
        ip=IPv4Address(f"10.42.1.{n + 1}"),
        **kw,
    )


async def test_containers_take_one_revision_per_save_and_leave_tombstones(store: Store) -> None:
    await store.save_node(node(1))
    await store.save_node(node(2))
    web = box(1, project="app", service="web", ports=(PortSpec(port=80, protocol="tcp"),))
    assert await store.save_containers("n1", [web, box(2)], []) == 3
    assert await store.save_containers("n1", [box(2, health="healthy")], [web.id]) == 4
    assert await store.save_containers("n2", [], [box(2).id]) == 5  # not n2's: kept
    snap = await store.load(100)
    assert snap.revision == 5
    assert snap.containers == (ContainerRecord(box(2, health="healthy"), 4),)
    assert snap.container_tombstones == (ContainerTombstone("n1", web.id, 4),)
    assert await store.save_containers("n1", [web], []) == 6  # back: no tombstone
    assert (await store.load(100)).container_tombstones == ()


async def test_online_flag_bumps_containers_only_when_there_are_some(store: Store) -> None:
    await store.save_node(node(1))
    await store.save_node(node(2))
    await store.save_containers("n1", [box(1)], [])
    assert await store.set_online(["n2"], False) is None  # no containers: no revision
    assert await store.set_online(["n1", "n2"], False) == 4
    await store.save_node(node(1, endpoints=()))  # a save keeps the flag
    snap = await store.load(100)
    assert [n.online for n in snap.nodes] == [False, False]
    assert snap.containers == (ContainerRecord(box(1), 4),)
    assert await store.set_online(["n1"], True) == 6


async def test_removing_a_node_removes_its_containers(store: Store) -> None:
    await store.save_node(node(1))
    await store.save_containers("n1", [box(1), box(2)], [])
    assert await store.remove_node("n1") == 3
    snap = await store.load(100)
    assert snap.containers == ()
    assert {(t.container_id, t.removed_rev) for t in snap.container_tombstones} == {
        (box(1).id, 3),
        (box(2).id, 3),
    }


async def test_sqlite_keeps_containers_across_reopen(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path / "shoal.db")
    await first.save_node(node(1))
    await first.save_containers("n1", [box(1, health="starting")], [])
    await first.close()
    again = SqliteStore(tmp_path / "shoal.db")
    assert (await again.load(10)).containers == (ContainerRecord(box(1, health="starting"), 2),)
    await again.close()


SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('revision', '1'), ('schema_version', '1');
CREATE TABLE tokens (id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL UNIQUE,
    reusable INTEGER NOT NULL, tags TEXT NOT NULL, created_at TEXT NOT NULL, expires_at TEXT,
    used_at TEXT, used_by TEXT, revoked_at TEXT);
CREATE TABLE nodes (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE,
    public_key TEXT NOT NULL UNIQUE, mesh_ip TEXT NOT NULL UNIQUE, subnet TEXT NOT NULL UNIQUE,
    endpoints TEXT NOT NULL, tags TEXT NOT NULL, credential_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL, last_seen TEXT, updated_rev INTEGER NOT NULL);
CREATE INDEX nodes_updated_rev ON nodes (updated_rev);
CREATE TABLE tombstones (node_id TEXT PRIMARY KEY, removed_rev INTEGER NOT NULL);
"""


def test_sqlite_upgrades_a_schema_1_database(tmp_path: Path) -> None:
    """Schema 1 (no liveness, containers, bearer credentials, use counts) → 3."""
    path = tmp_path / "shoal.db"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_1)
    db.execute(
        "INSERT INTO nodes VALUES ('n1','h1',?,'100.64.0.1','10.42.1.0/24','[]','[]','c1',"
        "'2026-01-01T12:00:00.000000Z',NULL,1)",
        (str(PrivateKey(bytes([1]) * 32).public_key()),),
    )
    db.executemany(
        "INSERT INTO tokens VALUES (?, ?, ?, '[]', '2026-01-01T12:00:00.000000Z', NULL, ?, ?, "
        "NULL)",
        [
            ("once", "h1", 0, "2026-01-01T12:00:01.000000Z", "n1"),
            ("many", "h2", 1, None, None),
        ],
    )
    db.commit()
    db.close()

    async def check() -> None:
        store = SqliteStore(path)
        snap = await store.load(10)
        assert [(n.id, n.online, n.ephemeral) for n in snap.nodes] == [("n1", True, False)]
        assert await store.get_setting("schema_version") == "6"
        tokens = {t.id: (t.uses, t.max_uses) for t in await store.list_tokens()}
        assert tokens == {"once": (1, 1), "many": (0, None)}
        await store.save_containers("n1", [box(1)], [])
        await store.save_node(node(2))  # no credential column left to fill
        await store.close()

    asyncio.run(check())


async def test_containers_of_two_nodes_with_one_id_are_two_containers(store: Store) -> None:
    await store.save_node(node(1))
    await store.save_node(node(2))
    mine, theirs = box(1), box(1, node_id="n2", health="healthy")
    await store.save_containers("n1", [mine], [])
    await store.save_containers("n2", [theirs], [])
    assert [r.container for r in (await store.load(100)).containers] == [mine, theirs]
    await store.save_containers("n2", [], [theirs.id])
    snap = await store.load(100)
    assert [r.container for r in snap.containers] == [mine]
    assert snap.container_tombstones == (ContainerTombstone("n2", theirs.id, 5),)
    with pytest.raises(ValueError, match="another node's container"):
        await store.save_containers("n2", [mine], [])


def test_sqlite_upgrades_a_schema_3_database_to_containers_keyed_by_node(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shoal.db"
    db = sqlite3.connect(path)
    db.executescript(
        schema_sql().split("-- Containers on each host")[0]
        + """
        CREATE TABLE containers (
            id TEXT PRIMARY KEY, node_id TEXT NOT NULL, name TEXT NOT NULL, ip TEXT NOT NULL,
            project TEXT, service TEXT, ports TEXT NOT NULL, health TEXT NOT NULL,
            updated_rev INTEGER NOT NULL);
        CREATE INDEX containers_node_id ON containers (node_id);
        CREATE TABLE container_tombstones (
            container_id TEXT PRIMARY KEY, removed_rev INTEGER NOT NULL);
        INSERT INTO containers VALUES ('"""
        + box(1).id
        + """', 'n1', 'c1', '10.42.1.2', NULL, NULL, '[]', 'none', 1);
        INSERT INTO container_tombstones VALUES ('dead', 1);
        UPDATE meta SET value = '3' WHERE key = 'schema_version';
        """
    )
    db.commit()
    db.close()

    async def check() -> None:
        store = SqliteStore(path)
        snap = await store.load(10)
        assert snap.containers == (ContainerRecord(box(1), 1),)
        assert snap.container_tombstones == ()
        assert await store.get_setting("schema_version") == "6"
        await store.save_node(node(2))
        await store.save_containers("n2", [box(1, node_id="n2")], [])
        assert len((await store.load(10)).containers) == 2
        await store.close()

    asyncio.run(check())


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_sqlite_is_synchronous_full_and_private(tmp_path: Path) -> None:
    """Issue 7 finding 9: shoal.db, -wal and -shm were 0644 and synchronous=NORMAL could roll
    back a registration whose credential the agent already held."""
    path = tmp_path / "shoal.db"
    store = SqliteStore(path)
    await store.save_node(node(1))
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert {p.name: _mode(p) for p in tmp_path.iterdir()} == {
        "shoal.db": 0o600,
        "shoal.db-wal": 0o600,
        "shoal.db-shm": 0o600,
    }
    await store.close()


async def test_sqlite_tightens_files_an_older_version_left_open(tmp_path: Path) -> None:
    path = tmp_path / "shoal.db"
    first = SqliteStore(path)
    await first.save_node(node(1))
    await first.close()
    for p in tmp_path.iterdir():
        os.chmod(p, 0o644)
    again = SqliteStore(path)
    await again.save_node(node(2))
    assert {_mode(p) for p in tmp_path.iterdir()} == {0o600}
    await again.close()


async def test_postgresql_replicas_racing_for_tokens_and_addresses(postgres_url: str) -> None:
    """Two replicas (two pools on one database): a single-use token is used once, a token
    limited to 3 uses 3 times, and of registrations racing for one mesh IP exactly one wins."""
    a, b = PostgresStore(postgres_url), PostgresStore(postgres_url)
    await a.add_token(token("once"))
    await a.add_token(replace(token("three", reusable=True), max_uses=3))
    once = await asyncio.gather(
        *(s.save_node(node(i), consume_token="once", at=T0) for i, s in ((1, a), (2, b))),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in once) == ["TokenUnavailable", "int"]
    three = await asyncio.gather(
        *((a, b)[i % 2].save_node(node(i), consume_token="three", at=T0) for i in range(3, 9)),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in three) == ["TokenUnavailable"] * 3 + ["int"] * 3
    same_ip = await asyncio.gather(
        *(
            (a, b)[i % 2].save_node(node(i, mesh_ip=IPv4Address("100.64.9.9")))
            for i in range(10, 16)
        ),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in same_ip) == ["StoreConflict"] * 5 + ["int"]
    used = await b.get_token("three")
    snap = await b.load(10)
    assert used is not None and used.uses == 3
    assert len(snap.nodes) == 1 + 3 + 1 and snap.revision == 5  # failures used no revision
    assert sorted(n.updated_rev for n in snap.nodes) == [1, 2, 3, 4, 5]
    await a.close()
    await b.close()


async def test_a_signature_is_claimed_once_until_it_expires(store: Store) -> None:
    now = 1_000_000
    assert await store.claim_signature(b"m" * 32, now + 300, now)
    assert not await store.claim_signature(b"m" * 32, now + 300, now + 299)
    assert await store.claim_signature(b"n" * 32, now + 300, now)
    # Past its expiry (and the sweeps' slack), a claim is forgotten.
    assert await store.claim_signature(b"m" * 32, now + 1300, now + 1000)


async def test_postgresql_replicas_claim_each_signature_once(postgres_url: str) -> None:
    """A MAC claimed through one replica is a replay on the other; claims racing on both
    replicas (batched while one INSERT is in flight) are each won exactly once."""
    a, b = PostgresStore(postgres_url), PostgresStore(postgres_url)
    now = 1_000_000
    assert await a.claim_signature(b"x" * 32, now + 300, now)
    assert not await b.claim_signature(b"x" * 32, now + 300, now)
    macs = [i.to_bytes(32, "big") for i in range(200)]
    won = await asyncio.gather(
        *(s.claim_signature(m, now + 300, now) for m in macs for s in (a, b))
    )
    assert sum(won) == len(macs)
    assert all(won[2 * i] != won[2 * i + 1] for i in range(len(macs)))
    await a.close()
    await b.close()


async def test_postgresql_exclusive_is_held_across_replicas(postgres_url: str) -> None:
    """While one replica holds `exclusive("register")`, another waits for it (and not for
    another name)."""
    a, b = PostgresStore(postgres_url), PostgresStore(postgres_url)
    release = asyncio.Event()
    entered: list[str] = []

    async def hold() -> None:
        async with a.exclusive("register"):
            entered.append("a")
            await release.wait()

    async def take(name: str) -> None:
        async with b.exclusive(name):
            entered.append(f"b:{name}")

    holder = asyncio.create_task(hold())
    async with asyncio.timeout(10):
        while entered != ["a"]:
            await asyncio.sleep(0.01)
        await take("other")  # another lock: not held
        waiter = asyncio.create_task(take("register"))
        async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
            while True:  # until B waits on the advisory lock A holds
                cur = await conn.execute(
                    "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                    "WHERE locktype = 'advisory' AND NOT granted AND datname = current_database()"
                )
                if (await cur.fetchone()) == (1,):
                    break
                await asyncio.sleep(0.01)
        assert entered == ["a", "b:other"]
        release.set()
        await asyncio.gather(holder, waiter)
    assert entered == ["a", "b:other", "b:register"]
    await a.close()
    await b.close()


async def test_postgresql_unreachable_claims_are_kept_by_the_replica() -> None:
    """With the database away, a replica still refuses a replay to itself (and serves)."""
    store = PostgresStore("postgresql://nobody@127.0.0.1:1/shoal")
    assert await store.claim_signature(b"y" * 32, 1300, 1000)
    assert not await store.claim_signature(b"y" * 32, 1300, 1000)
    await store.close()


async def test_postgresql_migrations_run_once_and_are_recorded(postgres_url: str) -> None:
    assert await migrate(postgres_url) == list(range(1, SCHEMA_VERSION + 1))
    assert await migrate(postgres_url) == []
    replicas = [PostgresStore(postgres_url) for _ in range(3)]
    await asyncio.gather(*(r.save_node(node(i + 1)) for i, r in enumerate(replicas)))
    assert (await replicas[0].load(10)).revision == 3
    for r in replicas:
        await r.close()


async def test_postgresql_migration_2_keeps_the_rows_of_a_version_1_database(
    postgres_url: str,
) -> None:
    """A database of migration 1 (before key rotation and policies) gains the columns, with
    no pending rotation and no labels, and the policies table."""
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
            "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        await conn.execute(MIGRATIONS[0][1].encode())
        await conn.execute("INSERT INTO schema_migrations (version) VALUES (1)")
        await conn.execute(
            "INSERT INTO nodes (id, name, public_key, mesh_ip, subnet, endpoints, tags, "
            "created_at, updated_rev) VALUES ('n1', 'h1', %s, '100.64.0.1', '10.42.1.0/24', "
            "'[]', '[]', %s, 1)",
            (str(node(1).public_key), T0),
        )
        await conn.execute(
            "INSERT INTO containers (node_id, id, name, ip, ports, health, updated_rev) "
            "VALUES ('n1', %s, 'c1', '10.42.1.2', '[]', 'none', 1)",
            (box(1).id,),
        )
    assert await migrate(postgres_url) == [2, 3, 4]
    store = PostgresStore(postgres_url)
    snap = await store.load(10)
    assert [(n.id, n.next_key, n.switch_at) for n in snap.nodes] == [("n1", None, None)]
    assert [c.container.labels for c in snap.containers] == [()] and snap.policy is None
    assert (await store.save_policy("p.yaml", "rules: []\n", T0)).revision == 1
    await store.close()


async def test_copy_state_moves_rotations_labels_and_the_policy_into_postgresql(
    tmp_path: Path, postgres_url: str
) -> None:
    source = SqliteStore(tmp_path / "shoal.db")
    rotating = node(1, next_key=node(9).public_key, switch_at=T0 + timedelta(seconds=5))
    await source.save_node(rotating)
    await source.save_containers("n1", [box(1, labels=(("shoal.tags", "web"),))], [])
    await source.save_policy("p.yaml", "rules: []\n", T0)
    policy = await source.save_policy("q.yaml", "# none\n", T0)
    target = PostgresStore(postgres_url)
    await copy_state(source, target)
    moved, before = await target.load(10), await source.load(10)
    assert moved.nodes == before.nodes and moved.containers == before.containers
    assert moved.policy == policy and moved.revision == policy.updated_rev
    # The policy numbers go on from the newest one moved.
    assert (await target.save_policy("r.yaml", "rules: []\n", T0)).revision == 3
    await source.close()
    await target.close()


async def test_postgresql_unreachable_is_a_store_error_naming_the_database() -> None:
    store = PostgresStore("postgresql://nobody:secret@127.0.0.1:1/shoal")
    with pytest.raises(StoreError, match=r"database postgresql://nobody@127.0.0.1/shoal: ") as err:
        await store.load(10)
    assert "secret" not in str(err.value)
    await store.close()


async def test_changes_since_a_revision_for_a_replica_catching_up(store: Store) -> None:
    for i in (1, 2, 3):
        await store.save_node(node(i))
    await store.save_containers("n1", [box(1)], [])
    await store.remove_node("n2", at=T0)
    await store.save_node(node(3, endpoints=()))
    changes = await store.changes_since(1)
    assert changes.revision == 6
    assert [(n.id, n.updated_rev) for n in changes.nodes] == [("n3", 6)]
    assert [(t.node_id, t.removed_rev) for t in changes.tombstones] == [("n2", 5)]
    assert changes.containers == (ContainerRecord(box(1), 4),)
    assert [r.node_id for r in changes.released] == ["n2"] and changes.offline == frozenset()
    # Bounded: what changed at `before` or later waits for the next catch-up.
    bounded = await store.changes_since(1, before=6)
    assert bounded.revision == 5 and bounded.nodes == () and len(bounded.tombstones) == 1
    assert await store.set_online(["n1"], False) == 7
    later = await store.changes_since(6)
    assert later.containers == (ContainerRecord(box(1), 7),) and later.offline == {"n1"}
    assert later.nodes == () and later.tombstones == ()
    await store.touch_nodes({"n1": T0})
    assert await store.seen_times(["n1", "n3", "nope"]) == {"n1": T0}


async def test_changes_since_carry_the_policy_set_in_the_range(store: Store) -> None:
    await store.save_node(node(1))
    assert (await store.changes_since(0)).policy is None
    first = await store.save_policy("p.yaml", "rules: []\n", T0)
    await store.save_node(node(2))
    assert (await store.changes_since(1)).policy == first
    assert (await store.changes_since(1, before=first.updated_rev)).policy is None
    assert (await store.changes_since(first.updated_rev)).policy is None  # not changed since
    second = await store.save_policy("q.yaml", "# none\n", T0)
    # Only the newest counts: the first one, in range, was replaced after it.
    assert (await store.changes_since(1)).policy == second
    assert (await store.changes_since(1, before=second.updated_rev)).policy is None


async def test_policies_are_numbered_and_the_newest_loads(store: Store) -> None:
    await store.save_node(node(1))
    assert (await store.load(10)).policy is None
    first = await store.save_policy("p.yaml", "rules: []\n", T0)
    assert (first.revision, first.file, first.source, first.set_at) == (
        1,
        "p.yaml",
        "rules: []\n",
        T0,
    )
    assert first.updated_rev == 2  # a global revision: it reaches the maps as a change
    second = await store.save_policy("q.yaml", "# none\n", T0 + timedelta(seconds=1))
    assert (second.revision, second.updated_rev) == (2, 3)
    snap = await store.load(10)
    assert snap.policy == second and snap.revision == 3


async def test_container_labels_round_trip(store: Store) -> None:
    await store.save_node(node(1))
    labelled = box(1, labels=(("shoal.tags", "web"), ("shoal.tier", "front")))
    await store.save_containers("n1", [labelled], [])
    assert (await store.load(10)).containers == (ContainerRecord(labelled, 2),)


def test_sqlite_adds_labels_to_a_schema_4_containers_table(tmp_path: Path) -> None:
    path = tmp_path / "shoal.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE containers (node_id TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT "
        "NULL, ip TEXT NOT NULL, project TEXT, service TEXT, ports TEXT NOT NULL, health TEXT "
        "NOT NULL, updated_rev INTEGER NOT NULL, PRIMARY KEY (node_id, id));"
        "CREATE TABLE container_tombstones (node_id TEXT NOT NULL, container_id TEXT NOT "
        "NULL, removed_rev INTEGER NOT NULL, PRIMARY KEY (node_id, container_id));"
        f"INSERT INTO containers VALUES ('n1', '{box(1).id}', 'c1', '10.42.1.2', NULL, NULL, "
        "'[]', 'none', 1);"
    )
    db.commit()
    db.close()

    async def check() -> None:
        store = SqliteStore(path)
        snap = await store.load(10)
        assert [c.container.labels for c in snap.containers] == [()]
        assert await store.get_setting("schema_version") == "6"
        await store.close()

    asyncio.run(check())


async def test_a_pending_key_rotation_roundtrips_and_clears(store: Store) -> None:
    new = PrivateKey(b"\x63" * 32).public_key()
    rotating = node(1, next_key=new, switch_at=T0 + timedelta(seconds=3))
    await store.save_node(rotating)
    (got,) = (await store.load(10)).nodes
    assert (got.next_key, got.switch_at) == (new, T0 + timedelta(seconds=3))
    await store.save_node(replace(rotating, public_key=new, next_key=None, switch_at=None))
    (got,) = (await store.load(10)).nodes
    assert (got.public_key, got.next_key, got.switch_at) == (new, None, None)


async def test_removing_a_rotating_node_revokes_both_its_keys(store: Store) -> None:
    new = PrivateKey(b"\x63" * 32).public_key()
    await store.save_node(node(1, next_key=new, switch_at=T0))
    await store.remove_node("n1", revoke_key=True)
    revoked = set((await store.load(10)).revoked_keys)
    assert revoked == {node(1).public_key, new}


def test_sqlite_adds_the_rotation_columns_to_an_older_database(tmp_path: Path) -> None:
    """A database from before key rotation gains next_key and switch_at (NULL)."""
    path = tmp_path / "shoal.db"
    asyncio.run(_save_and_close(SqliteStore(path), node(1)))
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE nodes DROP COLUMN next_key")
    db.execute("ALTER TABLE nodes DROP COLUMN switch_at")
    db.commit()
    db.close()

    async def check() -> None:
        store = SqliteStore(path)
        (got,) = (await store.load(10)).nodes
        assert (got.id, got.next_key, got.switch_at) == ("n1", None, None)
        await store.save_node(replace(got, next_key=node(2).public_key, switch_at=T0))
        (got,) = (await store.load(10)).nodes
        assert got.next_key == node(2).public_key
        await store.close()

    asyncio.run(check())


async def _save_and_close(store: Store, record: NodeRecord) -> None:
    await store.save_node(record)
    await store.close()
