"""The embedded SQLite store (the default): one file in the server's data dir, WAL mode.

The only module importing sqlite3. Calls run in a worker thread (`asyncio.to_thread`) on one
connection guarded by a lock; write transactions start with BEGIN IMMEDIATE so that two
processes sharing the file serialise on the write lock instead of failing at commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from importlib import resources
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import TypeVar

from shoal.model.keys import PublicKey
from shoal.model.netmap import Container, Endpoint, PortSpec
from shoal.store.base import (
    Changes,
    ContainerRecord,
    ContainerTombstone,
    NodeRecord,
    PolicyRecord,
    Released,
    RouteRecord,
    Snapshot,
    TokenRecord,
    Tombstone,
    no_changes,
)
from shoal.store.claims import ClaimLedger
from shoal.store.errors import StoreConflict, StoreError, TokenUnavailable
from shoal.store.rows import container_row, route_status

T = TypeVar("T")
_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"
_UNIQUE_FIELDS = ("name", "public_key", "mesh_ip", "subnet")
# The store's own rows in `meta`, not settings of the server.
_META_KEYS = ("revision", "schema_version")
# Container tombstones kept (the server loads at most its change-log length of them); older
# ones are pruned now and then, so that churning containers do not grow the file forever.
CONTAINER_TOMBSTONES_KEPT = 20_000
PRUNE_EVERY = 256  # revisions


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).strftime(_TIME)


def _dt(text: str | None) -> datetime | None:
    return None if text is None else datetime.strptime(text, _TIME).replace(tzinfo=UTC)


def _required_dt(text: str) -> datetime:
    return datetime.strptime(text, _TIME).replace(tzinfo=UTC)


def schema_sql() -> str:
    return resources.files("shoal.store").joinpath("schema.sql").read_text()


class SqliteStore:
    """`Store` over one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._claims = ClaimLedger()
        try:
            # 0600 before SQLite opens it: SQLite gives the -wal and -shm files the mode of
            # the database, and all three hold every node's key, address and endpoints.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            os.chmod(path, 0o600)
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before the reply that follows it leaves (a power loss
            # under NORMAL could roll back a registration whose credential an agent holds).
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(schema_sql())
            _migrate(self._db)
            for suffix in ("-wal", "-shm"):  # left by an older version with another mode
                with contextlib.suppress(FileNotFoundError):
                    os.chmod(f"{path}{suffix}", 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open database {path}: {exc.strerror}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {path}: {exc}") from exc

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                try:
                    return fn(self._db)
                except sqlite3.Error as exc:
                    raise StoreError(f"database {self.path}: {exc}") from exc

        return await asyncio.to_thread(locked)

    @contextmanager
    def _write(self, db: sqlite3.Connection) -> Iterator[None]:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _bump(self, db: sqlite3.Connection) -> int:
        row = db.execute(
            "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'revision' "
            "RETURNING CAST(value AS INTEGER)"
        ).fetchone()
        return int(row[0])

    async def load(self, tombstone_limit: int) -> Snapshot:
        def run(db: sqlite3.Connection) -> Snapshot:
            db.execute("BEGIN")
            try:
                rev = db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
                nodes = _with_routes(
                    db,
                    [
                        _node(row)
                        for row in db.execute(f"SELECT {_NODE_COLS} FROM nodes ORDER BY id")
                    ],
                )
                stones = db.execute(
                    "SELECT node_id, removed_rev FROM tombstones ORDER BY removed_rev DESC LIMIT ?",
                    (tombstone_limit,),
                ).fetchall()
                containers = tuple(
                    _container(row)
                    for row in db.execute(
                        f"SELECT {_CONTAINER_COLS} FROM containers ORDER BY node_id, id"
                    )
                )
                gone = db.execute(
                    "SELECT node_id, container_id, removed_rev FROM container_tombstones "
                    "ORDER BY removed_rev DESC LIMIT ?",
                    (tombstone_limit,),
                ).fetchall()
                revoked = db.execute("SELECT public_key FROM revoked_keys").fetchall()
                released = db.execute(
                    "SELECT node_id, mesh_ip, subnet, released_at FROM released "
                    "ORDER BY released_at"
                ).fetchall()
                policy = db.execute(
                    "SELECT revision, file, source, set_at, updated_rev FROM policies "
                    "ORDER BY revision DESC LIMIT 1"
                ).fetchone()
            finally:
                db.execute("COMMIT")
            return Snapshot(
                revision=int(rev[0]),
                nodes=nodes,
                tombstones=tuple(Tombstone(node_id=s[0], removed_rev=s[1]) for s in stones[::-1]),
                containers=containers,
                container_tombstones=tuple(
                    ContainerTombstone(node_id=g[0], container_id=g[1], removed_rev=g[2])
                    for g in gone[::-1]
                ),
                revoked_keys=tuple(PublicKey.parse(str(r[0])) for r in revoked),
                released=tuple(_released(r) for r in released),
                policy=None if policy is None else _policy(policy),
            )

        return await self._run(run)

    async def get_setting(self, key: str) -> str | None:
        def run(db: sqlite3.Connection) -> str | None:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

        return await self._run(run)

    async def put_setting(self, key: str, value: str) -> None:
        def run(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

        await self._run(run)

    async def list_settings(self) -> dict[str, str]:
        def run(db: sqlite3.Connection) -> dict[str, str]:
            rows = db.execute("SELECT key, value FROM meta WHERE key NOT IN (?, ?)", _META_KEYS)
            return {str(k): str(v) for k, v in rows}

        return await self._run(run)

    async def add_token(self, token: TokenRecord) -> None:
        def run(db: sqlite3.Connection) -> None:
            db.execute(
                f"INSERT INTO tokens ({_TOKEN_COLS}) VALUES ({', '.join('?' * 13)})",
                (
                    token.id,
                    token.secret_hash,
                    int(token.reusable),
                    json.dumps(list(token.tags)),
                    _ts(token.created_at),
                    _ts(token.expires_at),
                    _ts(token.used_at),
                    token.used_by,
                    _ts(token.revoked_at),
                    token.max_uses,
                    token.uses,
                    int(token.ephemeral),
                    token.scope,
                ),
            )

        await self._run(run)

    async def get_token(self, token_id: str) -> TokenRecord | None:
        def run(db: sqlite3.Connection) -> TokenRecord | None:
            row = db.execute(
                f"SELECT {_TOKEN_COLS} FROM tokens WHERE id = ?", (token_id,)
            ).fetchone()
            return None if row is None else _token(row)

        return await self._run(run)

    async def list_tokens(self) -> list[TokenRecord]:
        def run(db: sqlite3.Connection) -> list[TokenRecord]:
            rows = db.execute(f"SELECT {_TOKEN_COLS} FROM tokens ORDER BY created_at, id")
            return [_token(row) for row in rows]

        return await self._run(run)

    async def revoke_token(self, token_id: str, at: datetime) -> bool:
        def run(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
                (_ts(at), token_id),
            )
            return cur.rowcount == 1

        return await self._run(run)

    async def save_node(
        self, node: NodeRecord, *, consume_token: str | None = None, at: datetime | None = None
    ) -> int:
        when = _ts(at or datetime.now(UTC))

        def run(db: sqlite3.Connection) -> int:
            with self._write(db):
                if consume_token is not None:
                    # The guard and the write are one statement: of two agents racing for a
                    # token's last use exactly one sees rowcount 1.
                    cur = db.execute(
                        "UPDATE tokens SET uses = uses + 1, used_at = COALESCE(used_at, ?), "
                        "used_by = COALESCE(used_by, ?) WHERE id = ? "
                        "AND (max_uses IS NULL OR uses < max_uses) AND revoked_at IS NULL "
                        "AND (expires_at IS NULL OR expires_at > ?)",
                        (when, node.id, consume_token, when),
                    )
                    if cur.rowcount != 1:
                        raise TokenUnavailable(consume_token)
                rev = self._bump(db)
                try:
                    db.execute(
                        f"INSERT INTO nodes ({_NODE_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
                        "ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
                        "public_key = excluded.public_key, mesh_ip = excluded.mesh_ip, "
                        "subnet = excluded.subnet, endpoints = excluded.endpoints, "
                        "tags = excluded.tags, ephemeral = excluded.ephemeral, "
                        "last_seen = excluded.last_seen, updated_rev = excluded.updated_rev, "
                        "next_key = excluded.next_key, switch_at = excluded.switch_at",
                        _node_row(node, rev),
                    )
                except sqlite3.IntegrityError as exc:
                    field = next((f for f in _UNIQUE_FIELDS if f"nodes.{f}" in str(exc)), "id")
                    raise StoreConflict(field) from exc
                db.execute("DELETE FROM tombstones WHERE node_id = ?", (node.id,))
                _save_routes(db, node)
                return rev

        return await self._run(run)

    async def remove_node(
        self, node_id: str, *, revoke_key: bool = False, at: datetime | None = None
    ) -> int | None:
        when = _ts(at or datetime.now(UTC))

        def run(db: sqlite3.Connection) -> int | None:
            with self._write(db):
                row = db.execute(
                    "DELETE FROM nodes WHERE id = ? RETURNING public_key, mesh_ip, subnet, "
                    "next_key",
                    (node_id,),
                ).fetchone()
                if row is None:
                    return None
                db.execute("DELETE FROM routes WHERE node_id = ?", (node_id,))
                key, mesh_ip, subnet, next_key = row
                if revoke_key:
                    db.executemany(
                        "INSERT OR IGNORE INTO revoked_keys (public_key) VALUES (?)",
                        [(k,) for k in (key, next_key) if k is not None],
                    )
                db.execute(
                    "INSERT OR REPLACE INTO released (node_id, mesh_ip, subnet, released_at) "
                    "VALUES (?, ?, ?, ?)",
                    (node_id, mesh_ip, subnet, when),
                )
                rev = self._bump(db)
                db.execute(
                    "INSERT INTO tombstones (node_id, removed_rev) VALUES (?, ?) "
                    "ON CONFLICT (node_id) DO UPDATE SET removed_rev = excluded.removed_rev",
                    (node_id, rev),
                )
                gone = db.execute(
                    "DELETE FROM containers WHERE node_id = ? RETURNING id", (node_id,)
                ).fetchall()
                _bury(db, node_id, [str(g[0]) for g in gone], rev)
                return rev

        return await self._run(run)

    async def save_containers(
        self, node_id: str, changed: Sequence[Container], removed: Sequence[str]
    ) -> int:
        if any(c.node_id != node_id for c in changed):
            raise ValueError(f"save_containers({node_id!r}) given another node's container")

        def run(db: sqlite3.Connection) -> int:
            with self._write(db):
                rev = self._bump(db)
                db.executemany(
                    f"INSERT INTO containers ({_CONTAINER_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?) "
                    "ON CONFLICT (node_id, id) DO UPDATE SET "
                    "name = excluded.name, ip = excluded.ip, project = excluded.project, "
                    "service = excluded.service, ports = excluded.ports, "
                    "health = excluded.health, updated_rev = excluded.updated_rev, "
                    "labels = excluded.labels",
                    [container_row(c, rev) for c in changed],
                )
                db.executemany(
                    "DELETE FROM container_tombstones WHERE node_id = ? AND container_id = ?",
                    [(node_id, c.id) for c in changed],
                )
                gone = [
                    cid
                    for cid in removed
                    if db.execute(
                        "DELETE FROM containers WHERE node_id = ? AND id = ?", (node_id, cid)
                    ).rowcount
                    == 1
                ]
                _bury(db, node_id, gone, rev)
                return rev

        return await self._run(run)

    async def set_online(self, node_ids: Sequence[str], online: bool) -> int | None:
        def run(db: sqlite3.Connection) -> int | None:
            ids = [(nid,) for nid in node_ids]
            with self._write(db):
                db.executemany(
                    "UPDATE nodes SET online = ? WHERE id = ?", [(int(online), *i) for i in ids]
                )
                has = any(
                    db.execute("SELECT 1 FROM containers WHERE node_id = ? LIMIT 1", i).fetchone()
                    for i in ids
                )
                if not has:
                    return None
                rev = self._bump(db)
                db.executemany(
                    "UPDATE containers SET updated_rev = ? WHERE node_id = ?",
                    [(rev, *i) for i in ids],
                )
                return rev

        return await self._run(run)

    async def touch_nodes(self, seen: Mapping[str, datetime]) -> None:
        def run(db: sqlite3.Connection) -> None:
            with self._write(db):
                db.executemany(
                    "UPDATE nodes SET last_seen = ? WHERE id = ?",
                    [(_ts(at), node_id) for node_id, at in seen.items()],
                )

        await self._run(run)

    async def drop_released(self, node_ids: Sequence[str]) -> None:
        def run(db: sqlite3.Connection) -> None:
            db.executemany("DELETE FROM released WHERE node_id = ?", [(n,) for n in node_ids])

        await self._run(run)

    async def changes_since(self, since: int, *, before: int | None = None) -> Changes:
        def run(db: sqlite3.Connection) -> Changes:
            db.execute("BEGIN")  # one snapshot for all the reads
            try:
                current = db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
                upto = int(current[0]) if before is None else before - 1
                if upto <= since:  # the common case on one server: nothing to read
                    return no_changes(upto)
                rng = (since, upto)
                nodes = _with_routes(
                    db,
                    [
                        _node(r)
                        for r in db.execute(
                            f"SELECT {_NODE_COLS} FROM nodes "
                            "WHERE updated_rev > ? AND updated_rev <= ? ORDER BY updated_rev, id",
                            rng,
                        )
                    ],
                )
                stones = db.execute(
                    "SELECT node_id, removed_rev FROM tombstones "
                    "WHERE removed_rev > ? AND removed_rev <= ? ORDER BY removed_rev, node_id",
                    rng,
                ).fetchall()
                containers = db.execute(
                    f"SELECT {_CONTAINER_COLS} FROM containers "
                    "WHERE updated_rev > ? AND updated_rev <= ? ORDER BY updated_rev, node_id, id",
                    rng,
                ).fetchall()
                gone = db.execute(
                    "SELECT node_id, container_id, removed_rev FROM container_tombstones "
                    "WHERE removed_rev > ? AND removed_rev <= ? "
                    "ORDER BY removed_rev, node_id, container_id",
                    rng,
                ).fetchall()
                offline = db.execute("SELECT id FROM nodes WHERE online = 0").fetchall()
                revoked = db.execute("SELECT public_key FROM revoked_keys").fetchall()
                released = db.execute(
                    "SELECT node_id, mesh_ip, subnet, released_at FROM released "
                    "ORDER BY released_at"
                ).fetchall()
                policy = db.execute(
                    "SELECT revision, file, source, set_at, updated_rev FROM policies "
                    "WHERE updated_rev > ? AND updated_rev <= ? "
                    "AND revision = (SELECT MAX(revision) FROM policies)",
                    rng,
                ).fetchone()
            finally:
                db.execute("COMMIT")
            return Changes(
                revision=upto,
                nodes=nodes,
                tombstones=tuple(Tombstone(node_id=s[0], removed_rev=s[1]) for s in stones),
                containers=tuple(_container(r) for r in containers),
                container_tombstones=tuple(
                    ContainerTombstone(node_id=g[0], container_id=g[1], removed_rev=g[2])
                    for g in gone
                ),
                offline=frozenset(str(r[0]) for r in offline),
                revoked_keys=frozenset(PublicKey.parse(str(r[0])) for r in revoked),
                released=tuple(_released(r) for r in released),
                policy=None if policy is None else _policy(policy),
            )

        return await self._run(run)

    async def seen_times(self, node_ids: Sequence[str]) -> dict[str, datetime]:
        def run(db: sqlite3.Connection) -> dict[str, datetime]:
            found: dict[str, datetime] = {}
            for nid in node_ids:
                row = db.execute("SELECT last_seen FROM nodes WHERE id = ?", (nid,)).fetchone()
                if row is not None and row[0] is not None:
                    found[nid] = _required_dt(str(row[0]))
            return found

        return await self._run(run)

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        yield  # one server uses this store: nothing to hold across servers

    async def claim_signature(self, mac: bytes, expires_at: int, now: int) -> bool:
        return self._claims.claim(mac, expires_at, now)  # one server: its memory is the truth

    async def notifications(self) -> AsyncIterator[int]:
        await asyncio.Event().wait()  # one server owns the file: nothing to hear
        yield 0

    async def save_policy(self, file: str, source: str, at: datetime) -> PolicyRecord:
        def run(db: sqlite3.Connection) -> PolicyRecord:
            with self._write(db):
                rev = self._bump(db)
                row = db.execute(
                    "INSERT INTO policies (revision, file, source, set_at, updated_rev) "
                    "SELECT COALESCE(MAX(revision), 0) + 1, ?, ?, ?, ? FROM policies "
                    "RETURNING revision, file, source, set_at, updated_rev",
                    (file, source, _ts(at), rev),
                ).fetchone()
                return _policy(row)

        return await self._run(run)

    async def close(self) -> None:
        def run(db: sqlite3.Connection) -> None:
            db.close()

        await self._run(run)


_TOKEN_COLS = (
    "id, secret_hash, reusable, tags, created_at, expires_at, used_at, used_by, revoked_at, "
    "max_uses, uses, ephemeral, scope"
)
_NODE_COLS = (
    "id, name, public_key, mesh_ip, subnet, endpoints, tags, created_at, "
    "last_seen, updated_rev, online, ephemeral, next_key, switch_at"
)
# The containers columns of schema 4, which the 3 → 4 rebuild copies.
_CONTAINER_COLS_V4 = "node_id, id, name, ip, project, service, ports, health, updated_rev"
_CONTAINER_COLS = f"{_CONTAINER_COLS_V4}, labels"


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a database of an older schema up to this one."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(nodes)")}
    if "online" not in columns:  # schema 1 → 2: containers (new tables) and node liveness
        db.execute("ALTER TABLE nodes ADD COLUMN online INTEGER NOT NULL DEFAULT 1")
        columns.add("online")
    if "credential_hash" in columns:
        # Schema 2 → 3: nodes prove their key on every call, bearer credentials are gone.
        # SQLite cannot drop a UNIQUE column: rebuild the table.
        create = re.search(r"CREATE TABLE IF NOT EXISTS nodes \(.*?\n\);", schema_sql(), re.S)
        assert create is not None, "schema.sql defines the nodes table"
        db.executescript(
            "BEGIN IMMEDIATE;"
            "ALTER TABLE nodes RENAME TO nodes_v2;"
            "DROP INDEX IF EXISTS nodes_updated_rev;"
            f"{create.group(0)}"
            "INSERT INTO nodes (id, name, public_key, mesh_ip, subnet, endpoints, tags, "
            "created_at, last_seen, updated_rev, online, ephemeral) SELECT id, name, public_key, "
            "mesh_ip, subnet, endpoints, tags, created_at, last_seen, updated_rev, online, 0 "
            "FROM nodes_v2;"
            "DROP TABLE nodes_v2;"
            "CREATE INDEX IF NOT EXISTS nodes_updated_rev ON nodes (updated_rev);"
            "COMMIT;"
        )
    if "next_key" not in {row[1] for row in db.execute("PRAGMA table_info(nodes)")}:
        # Key rotation only adds two nullable columns (no schema version of its own).
        db.execute("ALTER TABLE nodes ADD COLUMN next_key TEXT")
        db.execute("ALTER TABLE nodes ADD COLUMN switch_at TEXT")
    tokens = {row[1] for row in db.execute("PRAGMA table_info(tokens)")}
    if "max_uses" not in tokens:  # schema 2 → 3: use limits and ephemeral nodes
        db.execute("ALTER TABLE tokens ADD COLUMN max_uses INTEGER")
        db.execute("ALTER TABLE tokens ADD COLUMN uses INTEGER NOT NULL DEFAULT 0")
        db.execute("ALTER TABLE tokens ADD COLUMN ephemeral INTEGER NOT NULL DEFAULT 0")
        db.execute("ALTER TABLE tokens ADD COLUMN scope TEXT")
        db.execute(
            "UPDATE tokens SET max_uses = CASE WHEN reusable THEN NULL ELSE 1 END, "
            "uses = CASE WHEN used_at IS NULL THEN 0 ELSE 1 END"
        )
    stone_columns = {row[1] for row in db.execute("PRAGMA table_info(container_tombstones)")}
    if "node_id" not in stone_columns:
        # Schema 3 → 4: containers keyed by (node_id, id). Schema 3 kept one row per id, so
        # the rows carry over as they are; its tombstones do not know their node and are
        # dropped (a client behind them gets a full map).
        tables = [
            re.search(rf"CREATE TABLE IF NOT EXISTS {name} \(.*?\n\);", schema_sql(), re.S)
            for name in ("containers", "container_tombstones")
        ]
        assert all(tables), "schema.sql defines the container tables"
        db.executescript(
            "BEGIN IMMEDIATE;"
            "ALTER TABLE containers RENAME TO containers_v3;"
            "DROP INDEX IF EXISTS containers_node_id;"
            "DROP TABLE container_tombstones;"
            + "".join(t.group(0) for t in tables if t is not None)
            + f"INSERT INTO containers ({_CONTAINER_COLS_V4}) "
            f"SELECT {_CONTAINER_COLS_V4} FROM containers_v3;"
            "DROP TABLE containers_v3;"
            "CREATE INDEX IF NOT EXISTS container_tombstones_removed_rev "
            "ON container_tombstones (removed_rev);"
            "COMMIT;"
        )
    containers = {row[1] for row in db.execute("PRAGMA table_info(containers)")}
    if "labels" not in containers:  # schema 4 → 5: container labels (policies), policies
        db.execute("ALTER TABLE containers ADD COLUMN labels TEXT NOT NULL DEFAULT '[]'")
    # Schema 5 → 6: subnet routes, a new table (schema.sql creates it), and hosts without
    # Docker, whose subnet is NULL: SQLite cannot drop NOT NULL, the two tables are rebuilt.
    if _not_null(db, "nodes", "subnet"):
        _rebuild(
            db,
            "nodes",
            _NODE_COLS,
            "CREATE INDEX IF NOT EXISTS nodes_updated_rev ON nodes (updated_rev);",
        )
    if _not_null(db, "released", "subnet"):
        _rebuild(db, "released", "node_id, mesh_ip, subnet, released_at", "")
    db.execute("UPDATE meta SET value = '6' WHERE key = 'schema_version'")


def _bury(db: sqlite3.Connection, node_id: str, container_ids: Sequence[str], rev: int) -> None:
    """Tombstones for `node_id`'s removed containers; prunes the oldest now and then."""
    db.executemany(
        "INSERT INTO container_tombstones (node_id, container_id, removed_rev) VALUES (?, ?, ?) "
        "ON CONFLICT (node_id, container_id) DO UPDATE SET removed_rev = excluded.removed_rev",
        [(node_id, cid, rev) for cid in container_ids],
    )
    if container_ids and rev % PRUNE_EVERY == 0:
        db.execute(
            "DELETE FROM container_tombstones WHERE removed_rev < (SELECT removed_rev FROM "
            "container_tombstones ORDER BY removed_rev DESC LIMIT 1 OFFSET ?)",
            (CONTAINER_TOMBSTONES_KEPT,),
        )


def _not_null(db: sqlite3.Connection, table: str, column: str) -> bool:
    return any(row[1] == column and row[3] for row in db.execute(f"PRAGMA table_info({table})"))


def _rebuild(db: sqlite3.Connection, table: str, columns: str, indexes: str) -> None:
    """Recreate `table` as schema.sql defines it now, keeping its rows (`columns`)."""
    create = re.search(rf"CREATE TABLE IF NOT EXISTS {table} \(.*?\n\);", schema_sql(), re.S)
    assert create is not None, f"schema.sql defines the {table} table"
    db.executescript(
        "BEGIN IMMEDIATE;"
        f"ALTER TABLE {table} RENAME TO {table}_v5;"
        f"DROP INDEX IF EXISTS {table}_updated_rev;"
        f"{create.group(0)}"
        f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {table}_v5;"
        f"DROP TABLE {table}_v5;"
        f"{indexes}"
        "COMMIT;"
    )


def _save_routes(db: sqlite3.Connection, node: NodeRecord) -> None:
    """`node`'s routes replace the stored ones (inside the caller's transaction)."""
    db.execute("DELETE FROM routes WHERE node_id = ?", (node.id,))
    db.executemany(
        "INSERT INTO routes (node_id, prefix, status, advertised_at, decided_at) "
        "VALUES (?, ?, ?, ?, ?)",
        [
            (node.id, str(r.prefix), r.status, _ts(r.advertised_at), _ts(r.decided_at))
            for r in node.routes
        ],
    )


def _with_routes(db: sqlite3.Connection, nodes: list[NodeRecord]) -> tuple[NodeRecord, ...]:
    """`nodes` with their stored routes, sorted by prefix (one query per node that has any:
    only subnet routers do, a few in a mesh)."""
    owners = {str(r[0]) for r in db.execute("SELECT DISTINCT node_id FROM routes")}
    out: list[NodeRecord] = []
    for node in nodes:
        if node.id in owners:
            rows = db.execute(
                "SELECT prefix, status, advertised_at, decided_at FROM routes WHERE node_id = ?",
                (node.id,),
            ).fetchall()
            node = replace(node, routes=_routes(rows))
        out.append(node)
    return tuple(out)


def _routes(rows: Sequence[tuple[object, ...]]) -> tuple[RouteRecord, ...]:
    records = [
        RouteRecord(
            prefix=IPv4Network(str(prefix)),
            status=route_status(str(status)),
            advertised_at=_required_dt(str(advertised)),
            decided_at=_dt(decided if isinstance(decided, str) else None),
        )
        for prefix, status, advertised, decided in rows
    ]
    return tuple(sorted(records, key=lambda r: (int(r.prefix.network_address), r.prefix.prefixlen)))


def _released(row: tuple[object, ...]) -> Released:
    return Released(
        node_id=str(row[0]),
        mesh_ip=IPv4Address(str(row[1])),
        subnet=IPv4Network(row[2]) if isinstance(row[2], str) else None,
        released_at=_required_dt(str(row[3])),
    )


def _token(row: tuple[object, ...]) -> TokenRecord:
    (tid, secret_hash, reusable, tags, created, expires, used, used_by, revoked) = row[:9]
    max_uses, uses, ephemeral, scope = row[9:]
    return TokenRecord(
        id=str(tid),
        secret_hash=str(secret_hash),
        reusable=bool(reusable),
        tags=tuple(json.loads(str(tags))),
        created_at=_required_dt(str(created)),
        expires_at=_dt(expires if isinstance(expires, str) else None),
        used_at=_dt(used if isinstance(used, str) else None),
        used_by=used_by if isinstance(used_by, str) else None,
        revoked_at=_dt(revoked if isinstance(revoked, str) else None),
        max_uses=None if max_uses is None else int(str(max_uses)),
        uses=int(str(uses)),
        ephemeral=bool(ephemeral),
        scope=scope if isinstance(scope, str) else None,
    )


def _node_row(node: NodeRecord, rev: int) -> tuple[object, ...]:
    return (
        node.id,
        node.name,
        str(node.public_key),
        str(node.mesh_ip),
        None if node.subnet is None else str(node.subnet),
        json.dumps([e.model_dump(mode="json") for e in node.endpoints]),
        json.dumps(list(node.tags)),
        _ts(node.created_at),
        _ts(node.last_seen),
        rev,
        int(node.online),
        int(node.ephemeral),
        None if node.next_key is None else str(node.next_key),
        _ts(node.switch_at),
    )


def _node(row: tuple[object, ...]) -> NodeRecord:
    (nid, name, key, ip, subnet, endpoints, tags, created, seen, rev, online, ephemeral) = row[:12]
    next_key, switch_at = row[12:]
    return NodeRecord(
        id=str(nid),
        name=str(name),
        public_key=PublicKey.parse(str(key)),
        mesh_ip=IPv4Address(str(ip)),
        subnet=IPv4Network(subnet) if isinstance(subnet, str) else None,
        endpoints=tuple(Endpoint.model_validate(e) for e in json.loads(str(endpoints))),
        tags=tuple(json.loads(str(tags))),
        created_at=_required_dt(str(created)),
        last_seen=_dt(seen if isinstance(seen, str) else None),
        updated_rev=int(str(rev)),
        online=bool(online),
        ephemeral=bool(ephemeral),
        next_key=PublicKey.parse(next_key) if isinstance(next_key, str) else None,
        switch_at=_dt(switch_at if isinstance(switch_at, str) else None),
    )


def _container(row: tuple[object, ...]) -> ContainerRecord:
    (node_id, cid, name, ip, project, service, ports, health, rev, labels) = row
    container = Container(
        id=str(cid),
        node_id=str(node_id),
        name=str(name),
        ip=IPv4Address(str(ip)),
        project=project if isinstance(project, str) else None,
        service=service if isinstance(service, str) else None,
        ports=tuple(PortSpec.model_validate(p) for p in json.loads(str(ports))),
        health=str(health),  # validated by the model
        labels=tuple((str(k), str(v)) for k, v in json.loads(str(labels))),
    )
    return ContainerRecord(container=container, updated_rev=int(str(rev)))


def _policy(row: tuple[object, ...]) -> PolicyRecord:
    revision, file, source, set_at, rev = row
    return PolicyRecord(
        revision=int(str(revision)),
        file=str(file),
        source=str(source),
        set_at=_required_dt(str(set_at)),
        updated_rev=int(str(rev)),
    )
