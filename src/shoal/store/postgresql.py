"""The PostgreSQL store: several server replicas share one database.

The only module importing psycopg. Each call is one transaction on a pooled connection
(READ COMMITTED). What keeps replicas consistent is in the database, not in any one process:
- the global revision is one row bumped by `UPDATE ... RETURNING` inside each writing
  transaction; its row lock serialises writers until commit, so revisions become visible in
  order (a reader who sees revision r sees every change up to r);
- a token's use is counted by one conditional UPDATE (a racing replica waits on the row lock,
  then re-checks the condition against the committed row: exactly one wins its last use);
- unique constraints on name, key, mesh IP and subnet turn a lost allocation race into
  `StoreConflict`, which the caller retries with another allocation;
- `exclusive(name)` is a transaction-level advisory lock: registrations on every replica take
  turns on one, so that none allocates an address another is saving meanwhile;
- a signed request's MAC is claimed in `used_signatures` (claims batched, see
  `claim_signature`), so that a request replayed to another replica is refused there;
- every writing transaction sends NOTIFY on `CHANNEL`:<schema> with the new revision (one
  channel per schema: meshes in other schemas of the database stay silent), delivered at
  commit to every replica listening (`listen`).

The schema is versioned: `MIGRATIONS` are applied in order on first use, each in its own
transaction under an advisory lock (two replicas starting at once apply each step once), and
recorded in `schema_migrations`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg import sql

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
log = logging.getLogger("shoal.store")
Conn = psycopg.AsyncConnection[tuple[Any, ...]]
CHANNEL = "shoal_revision"
# Channel names are identifiers: at most 63 bytes.
_CHANNEL_OF_SCHEMA = "left(%s || ':' || current_schema(), 63)"
_NOTIFY = f"SELECT pg_notify({_CHANNEL_OF_SCHEMA}, %s)"
# Same retention as the SQLite store: the server loads at most its change-log length.
CONTAINER_TOMBSTONES_KEPT = 20_000
PRUNE_EVERY = 256  # revisions
# Pool bounds: a replica's store calls are short transactions; a few connections keep the
# event loop busy without holding many server slots on the database.
POOL_MAX = 4
CONNECT_TIMEOUT = 5.0  # seconds to get a connection before the call fails with StoreError
# Seconds between attempts to listen again after the database went away (doubling up to MAX).
LISTEN_RETRY, LISTEN_RETRY_MAX = 0.5, 10.0
# Claims of used signatures: expired ones are deleted at most this often (seconds), and only
# once they are this far past their expiry, so that a replica whose clock runs behind the
# deleting one's still finds them while its own window accepts the request.
CLAIM_PRUNE_INTERVAL, CLAIM_SLACK = 30, 60
# After a claim failed for the database, the next claims skip it this long (seconds): each
# would otherwise wait for the pool's timeout before being served.
CLAIM_RETRY = 5
_MIGRATION_LOCK = 0x5304A1  # advisory lock class id of shoal's migrations
_EXCLUSIVE_LOCK = 0x5304A2  # ... and of `exclusive`'s named locks
EXCLUSIVE_TIMEOUT = 10  # seconds to wait for `exclusive`'s lock before failing with StoreError

# (version, statements). Append only: a released step is never edited.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        -- The global revision: one row, bumped by every change other nodes must see.
        CREATE TABLE revision (
            one   BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
            value BIGINT NOT NULL
        );
        INSERT INTO revision (value) VALUES (0);
        CREATE TABLE tokens (
            id          TEXT PRIMARY KEY,
            secret_hash TEXT NOT NULL UNIQUE,
            reusable    BOOLEAN NOT NULL,
            tags        JSONB NOT NULL,
            created_at  TIMESTAMPTZ NOT NULL,
            expires_at  TIMESTAMPTZ,
            used_at     TIMESTAMPTZ,
            used_by     TEXT,
            revoked_at  TIMESTAMPTZ,
            max_uses    INTEGER,
            uses        INTEGER NOT NULL DEFAULT 0,
            ephemeral   BOOLEAN NOT NULL DEFAULT FALSE,
            scope       TEXT
        );
        CREATE TABLE nodes (
            id          TEXT PRIMARY KEY,
            name        TEXT NOT NULL CONSTRAINT nodes_name_key UNIQUE,
            public_key  TEXT NOT NULL CONSTRAINT nodes_public_key_key UNIQUE,
            mesh_ip     TEXT NOT NULL CONSTRAINT nodes_mesh_ip_key UNIQUE,
            subnet      TEXT NOT NULL CONSTRAINT nodes_subnet_key UNIQUE,
            endpoints   JSONB NOT NULL,
            tags        JSONB NOT NULL,
            created_at  TIMESTAMPTZ NOT NULL,
            last_seen   TIMESTAMPTZ,
            updated_rev BIGINT NOT NULL,
            online      BOOLEAN NOT NULL DEFAULT TRUE,
            ephemeral   BOOLEAN NOT NULL DEFAULT FALSE
        );
        CREATE INDEX nodes_updated_rev ON nodes (updated_rev);
        CREATE TABLE tombstones (node_id TEXT PRIMARY KEY, removed_rev BIGINT NOT NULL);
        CREATE INDEX tombstones_removed_rev ON tombstones (removed_rev);
        CREATE TABLE containers (
            node_id     TEXT NOT NULL,
            id          TEXT NOT NULL,
            name        TEXT NOT NULL,
            ip          TEXT NOT NULL,
            project     TEXT,
            service     TEXT,
            ports       JSONB NOT NULL,
            health      TEXT NOT NULL,
            updated_rev BIGINT NOT NULL,
            PRIMARY KEY (node_id, id)
        );
        CREATE INDEX containers_updated_rev ON containers (updated_rev);
        CREATE TABLE container_tombstones (
            node_id      TEXT NOT NULL,
            container_id TEXT NOT NULL,
            removed_rev  BIGINT NOT NULL,
            PRIMARY KEY (node_id, container_id)
        );
        CREATE INDEX container_tombstones_removed_rev ON container_tombstones (removed_rev);
        CREATE TABLE revoked_keys (public_key TEXT PRIMARY KEY);
        CREATE TABLE released (
            node_id     TEXT PRIMARY KEY,
            mesh_ip     TEXT NOT NULL,
            subnet      TEXT NOT NULL,
            released_at TIMESTAMPTZ NOT NULL
        );
        """,
    ),
    (
        2,
        """
        -- Key rotation: the next key and when the node switches to it (NULL: none pending).
        ALTER TABLE nodes ADD COLUMN next_key TEXT;
        ALTER TABLE nodes ADD COLUMN switch_at TIMESTAMPTZ;
        -- Access control: containers' shoal.* labels, and the policies as set.
        ALTER TABLE containers ADD COLUMN labels JSONB NOT NULL DEFAULT '[]';
        CREATE TABLE policies (
            revision    INTEGER PRIMARY KEY,  -- the policy's own number, 1, 2, ...
            file        TEXT NOT NULL,
            source      TEXT NOT NULL,
            set_at      TIMESTAMPTZ NOT NULL,
            updated_rev BIGINT NOT NULL       -- the global revision it reached the maps at
        );
        CREATE INDEX policies_updated_rev ON policies (updated_rev);
        """,
    ),
    (
        3,
        """
        -- Subnet routes nodes advertise and the admin's decision on each; written with their
        -- node (save_node replaces a node's rows), deleted with it.
        CREATE TABLE routes (
            node_id       TEXT NOT NULL,
            prefix        TEXT NOT NULL,  -- "192.168.7.0/24"
            status        TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected')),
            advertised_at TIMESTAMPTZ NOT NULL,
            decided_at    TIMESTAMPTZ,
            PRIMARY KEY (node_id, prefix)
        );
        -- Hosts without Docker (shoal up --no-docker) have no container subnet.
        ALTER TABLE nodes ALTER COLUMN subnet DROP NOT NULL;
        ALTER TABLE released ALTER COLUMN subnet DROP NOT NULL;
        """,
    ),
    (
        4,
        """
        -- Signed requests already used, by MAC, until their time window closes: a request
        -- replayed to another replica is refused there too (see Store.claim_signature).
        CREATE TABLE used_signatures (mac BYTEA PRIMARY KEY, expires_at BIGINT NOT NULL);
        CREATE INDEX used_signatures_expires_at ON used_signatures (expires_at);
        """,
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

_UNIQUE_CONSTRAINTS = {
    "nodes_name_key": "name",
    "nodes_public_key_key": "public_key",
    "nodes_mesh_ip_key": "mesh_ip",
    "nodes_subnet_key": "subnet",
}
_TOKEN_COLS = (
    "id, secret_hash, reusable, tags, created_at, expires_at, used_at, used_by, revoked_at, "
    "max_uses, uses, ephemeral, scope"
)
_NODE_COLS = (
    "id, name, public_key, mesh_ip, subnet, endpoints, tags, created_at, "
    "last_seen, updated_rev, online, ephemeral, next_key, switch_at"
)
_CONTAINER_COLS = "node_id, id, name, ip, project, service, ports, health, updated_rev, labels"
_POLICY_COLS = "revision, file, source, set_at, updated_rev"
# The newest policy; changes_since adds a range on its updated_rev.
_NEWEST_POLICY = (
    f"SELECT {_POLICY_COLS} FROM policies WHERE revision = (SELECT MAX(revision) FROM policies)"
)
_NODE_VALUES = ", ".join(["%s"] * len(_NODE_COLS.split(",")))
_CONTAINER_VALUES = ", ".join(["%s"] * len(_CONTAINER_COLS.split(",")))


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://…"
    return f"postgresql://{info.get('user', '')}@{info.get('host', '')}/{info.get('dbname', '')}"


async def migrate(url: str) -> list[int]:
    """Apply the pending migrations to the database at `url`; the versions applied."""
    try:
        async with await psycopg.AsyncConnection.connect(
            url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT)
        ) as conn:
            return await _migrate(conn)
    except psycopg.Error as exc:
        raise StoreError(f"database {redact(url)}: {_reason(exc)}") from exc


async def _migrate(conn: Conn) -> list[int]:
    applied: list[int] = []
    async with conn.transaction():
        # Scoped to the current schema so that tests (one schema each) do not wait on
        # each other; two replicas of one mesh share the schema and so the lock.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))", (_MIGRATION_LOCK,)
        )
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        cur = await conn.execute("SELECT version FROM schema_migrations")
        done = {int(row[0]) for row in await cur.fetchall()}
        for version, statements in MIGRATIONS:
            if version in done:
                continue
            await conn.execute(statements.encode())
            await conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            applied.append(version)
        newest = max(done | set(applied), default=0)
        if newest > SCHEMA_VERSION:
            raise StoreError(
                f"the database has schema version {newest}, newer than this shoal "
                f"({SCHEMA_VERSION}): upgrade shoal"
            )
    return applied


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class PostgresStore:
    """`Store` over a PostgreSQL database; migrates it on first use."""

    def __init__(self, url: str, *, pool_max: int = POOL_MAX) -> None:
        self.url = url
        self._pool = psycopg_pool.AsyncConnectionPool(
            url,
            min_size=1,
            max_size=pool_max,
            open=False,
            timeout=CONNECT_TIMEOUT,
            # A connection the database dropped (a restart, a failover) is replaced before
            # use, so that no request fails for it: one round trip on a local socket.
            check=psycopg_pool.AsyncConnectionPool.check_connection,
            kwargs={"autocommit": True, "connect_timeout": int(CONNECT_TIMEOUT)},
        )
        self._ready = False
        self._opening = asyncio.Lock()
        # Signature claims wait here while a batch is in flight and go in the next one.
        self._claims_pending: dict[bytes, tuple[int, asyncio.Future[bool]]] = {}
        self._claiming = asyncio.Lock()
        self._claims_pruned_at = 0
        self._local_claims = ClaimLedger()
        self._claims_offline_until = 0.0  # monotonic time

    def _fail(self, exc: BaseException) -> StoreError:
        return StoreError(f"database {redact(self.url)}: {_reason(exc)}")

    async def _open(self) -> None:
        async with self._opening:
            if self._ready:
                return
            # One direct connection first: an unreachable server fails at once with the
            # driver's reason (the pool would retry quietly until its timeout).
            await migrate(self.url)
            await self._pool.open(wait=False)
            self._ready = True

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[Conn]:
        """One transaction on a pooled connection; psycopg's errors become StoreError (the
        store's own errors raised inside pass through and roll the transaction back)."""
        if not self._ready:
            await self._open()
        try:
            async with self._pool.connection() as conn, conn.transaction():
                yield conn
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise self._fail(exc) from exc

    async def _run(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        async with self._tx() as conn:
            return await fn(conn)

    async def _bump(self, conn: Conn) -> int:
        cur = await conn.execute("UPDATE revision SET value = value + 1 RETURNING value")
        row = await cur.fetchone()
        assert row is not None, "migration 1 inserts the revision row"
        rev = int(row[0])
        # Delivered at commit, never for a rolled-back change.
        await conn.execute(_NOTIFY, (CHANNEL, str(rev)))
        return rev

    async def load(self, tombstone_limit: int) -> Snapshot:
        async def run(conn: Conn) -> Snapshot:
            # REPEATABLE READ: one consistent picture across the several SELECTs.
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            rev = await _one(conn, "SELECT value FROM revision")
            nodes = await _with_routes(
                conn,
                [_node(r) for r in await _all(conn, f"SELECT {_NODE_COLS} FROM nodes ORDER BY id")],
            )
            stones = await _all(
                conn,
                "SELECT node_id, removed_rev FROM tombstones ORDER BY removed_rev DESC LIMIT %s",
                (tombstone_limit,),
            )
            containers = await _all(
                conn, f"SELECT {_CONTAINER_COLS} FROM containers ORDER BY node_id, id"
            )
            gone = await _all(
                conn,
                "SELECT node_id, container_id, removed_rev FROM container_tombstones "
                "ORDER BY removed_rev DESC LIMIT %s",
                (tombstone_limit,),
            )
            revoked = await _all(conn, "SELECT public_key FROM revoked_keys ORDER BY public_key")
            released = await _all(
                conn,
                "SELECT node_id, mesh_ip, subnet, released_at FROM released "
                "ORDER BY released_at, node_id",
            )
            policy = await _all(conn, _NEWEST_POLICY)
            return Snapshot(
                revision=int(rev),
                nodes=nodes,
                tombstones=tuple(Tombstone(node_id=s[0], removed_rev=s[1]) for s in stones[::-1]),
                containers=tuple(_container(r) for r in containers),
                container_tombstones=tuple(
                    ContainerTombstone(node_id=g[0], container_id=g[1], removed_rev=g[2])
                    for g in gone[::-1]
                ),
                revoked_keys=tuple(PublicKey.parse(str(r[0])) for r in revoked),
                released=tuple(
                    Released(
                        node_id=str(r[0]),
                        mesh_ip=IPv4Address(str(r[1])),
                        subnet=_subnet(r[2]),
                        released_at=_utc(r[3]),
                    )
                    for r in released
                ),
                policy=_policy(policy[0]) if policy else None,
            )

        return await self._run(run)

    async def get_setting(self, key: str) -> str | None:
        async def run(conn: Conn) -> str | None:
            rows = await _all(conn, "SELECT value FROM settings WHERE key = %s", (key,))
            return None if not rows else str(rows[0][0])

        return await self._run(run)

    async def put_setting(self, key: str, value: str) -> None:
        async def run(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO settings (key, value) VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

        await self._run(run)

    async def list_settings(self) -> dict[str, str]:
        async def run(conn: Conn) -> dict[str, str]:
            return {str(k): str(v) for k, v in await _all(conn, "SELECT key, value FROM settings")}

        return await self._run(run)

    async def add_token(self, token: TokenRecord) -> None:
        async def run(conn: Conn) -> None:
            await conn.execute(
                f"INSERT INTO tokens ({_TOKEN_COLS}) VALUES ({', '.join(['%s'] * 13)})",
                _token_row(token),
            )

        await self._run(run)

    async def get_token(self, token_id: str) -> TokenRecord | None:
        async def run(conn: Conn) -> TokenRecord | None:
            rows = await _all(conn, f"SELECT {_TOKEN_COLS} FROM tokens WHERE id = %s", (token_id,))
            return None if not rows else _token(rows[0])

        return await self._run(run)

    async def list_tokens(self) -> list[TokenRecord]:
        async def run(conn: Conn) -> list[TokenRecord]:
            rows = await _all(conn, f"SELECT {_TOKEN_COLS} FROM tokens ORDER BY created_at, id")
            return [_token(r) for r in rows]

        return await self._run(run)

    async def revoke_token(self, token_id: str, at: datetime) -> bool:
        async def run(conn: Conn) -> bool:
            cur = await conn.execute(
                "UPDATE tokens SET revoked_at = COALESCE(revoked_at, %s) WHERE id = %s",
                (at, token_id),
            )
            return cur.rowcount == 1

        return await self._run(run)

    async def save_node(
        self, node: NodeRecord, *, consume_token: str | None = None, at: datetime | None = None
    ) -> int:
        when = at or datetime.now(UTC)

        async def run(conn: Conn) -> int:
            if consume_token is not None:
                # The guard and the write are one statement: a racing replica blocks on the
                # row lock and re-evaluates the guard against the committed row.
                cur = await conn.execute(
                    "UPDATE tokens SET uses = uses + 1, used_at = COALESCE(used_at, %s), "
                    "used_by = COALESCE(used_by, %s) WHERE id = %s "
                    "AND (max_uses IS NULL OR uses < max_uses) AND revoked_at IS NULL "
                    "AND (expires_at IS NULL OR expires_at > %s)",
                    (when, node.id, consume_token, when),
                )
                if cur.rowcount != 1:
                    raise TokenUnavailable(consume_token)
            rev = await self._bump(conn)
            try:
                await conn.execute(
                    f"INSERT INTO nodes ({_NODE_COLS}) VALUES ({_NODE_VALUES}) "
                    "ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
                    "public_key = excluded.public_key, mesh_ip = excluded.mesh_ip, "
                    "subnet = excluded.subnet, endpoints = excluded.endpoints, "
                    "tags = excluded.tags, ephemeral = excluded.ephemeral, "
                    "last_seen = excluded.last_seen, updated_rev = excluded.updated_rev, "
                    "next_key = excluded.next_key, switch_at = excluded.switch_at",
                    _node_row(node, rev),
                )
            except pg_errors.UniqueViolation as exc:
                field = _UNIQUE_CONSTRAINTS.get(exc.diag.constraint_name or "", "id")
                raise StoreConflict(field) from exc
            await conn.execute("DELETE FROM tombstones WHERE node_id = %s", (node.id,))
            await _save_routes(conn, node)
            return rev

        return await self._run(run)

    async def remove_node(
        self, node_id: str, *, revoke_key: bool = False, at: datetime | None = None
    ) -> int | None:
        when = at or datetime.now(UTC)

        async def run(conn: Conn) -> int | None:
            rows = await _all(
                conn,
                "DELETE FROM nodes WHERE id = %s RETURNING public_key, mesh_ip, subnet, next_key",
                (node_id,),
            )
            if not rows:
                return None
            await conn.execute("DELETE FROM routes WHERE node_id = %s", (node_id,))
            key, mesh_ip, subnet, next_key = rows[0]
            if revoke_key:  # a rotation in progress: its next key may not join either
                await conn.execute(
                    "INSERT INTO revoked_keys (public_key) SELECT unnest(%s::text[]) "
                    "ON CONFLICT DO NOTHING",
                    ([k for k in (key, next_key) if k is not None],),
                )
            await conn.execute(
                "INSERT INTO released (node_id, mesh_ip, subnet, released_at) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (node_id) DO UPDATE SET "
                "mesh_ip = excluded.mesh_ip, subnet = excluded.subnet, "
                "released_at = excluded.released_at",
                (node_id, mesh_ip, subnet, when),
            )
            rev = await self._bump(conn)
            await conn.execute(
                "INSERT INTO tombstones (node_id, removed_rev) VALUES (%s, %s) "
                "ON CONFLICT (node_id) DO UPDATE SET removed_rev = excluded.removed_rev",
                (node_id, rev),
            )
            gone = await _all(
                conn, "DELETE FROM containers WHERE node_id = %s RETURNING id", (node_id,)
            )
            await _bury(conn, node_id, [str(g[0]) for g in gone], rev)
            return rev

        return await self._run(run)

    async def save_containers(
        self, node_id: str, changed: Sequence[Container], removed: Sequence[str]
    ) -> int:
        if any(c.node_id != node_id for c in changed):
            raise ValueError(f"save_containers({node_id!r}) given another node's container")

        async def run(conn: Conn) -> int:
            rev = await self._bump(conn)
            async with conn.cursor() as cur:
                if changed:
                    await cur.executemany(
                        f"INSERT INTO containers ({_CONTAINER_COLS}) VALUES ({_CONTAINER_VALUES}) "
                        "ON CONFLICT (node_id, id) DO UPDATE SET "
                        "name = excluded.name, ip = excluded.ip, project = excluded.project, "
                        "service = excluded.service, ports = excluded.ports, "
                        "health = excluded.health, updated_rev = excluded.updated_rev, "
                        "labels = excluded.labels",
                        [container_row(c, rev) for c in changed],
                    )
                    await cur.execute(
                        "DELETE FROM container_tombstones "
                        "WHERE node_id = %s AND container_id = ANY(%s)",
                        (node_id, [c.id for c in changed]),
                    )
                gone: list[str] = []
                if removed:
                    await cur.execute(
                        "DELETE FROM containers WHERE node_id = %s AND id = ANY(%s) RETURNING id",
                        (node_id, list(removed)),
                    )
                    gone = [str(r[0]) for r in await cur.fetchall()]
            await _bury(conn, node_id, gone, rev)
            return rev

        return await self._run(run)

    async def set_online(self, node_ids: Sequence[str], online: bool) -> int | None:
        ids = list(node_ids)

        async def run(conn: Conn) -> int | None:
            await conn.execute("UPDATE nodes SET online = %s WHERE id = ANY(%s)", (online, ids))
            has = await _all(
                conn, "SELECT 1 FROM containers WHERE node_id = ANY(%s) LIMIT 1", (ids,)
            )
            if not has:
                return None
            rev = await self._bump(conn)
            await conn.execute(
                "UPDATE containers SET updated_rev = %s WHERE node_id = ANY(%s)", (rev, ids)
            )
            return rev

        return await self._run(run)

    async def touch_nodes(self, seen: Mapping[str, datetime]) -> None:
        if not seen:
            return
        ids, times = list(seen), list(seen.values())

        async def run(conn: Conn) -> None:
            # GREATEST: another replica may have seen the node more recently.
            await conn.execute(
                "UPDATE nodes SET last_seen = GREATEST(nodes.last_seen, s.at) "
                "FROM unnest(%s::text[], %s::timestamptz[]) AS s(id, at) WHERE nodes.id = s.id",
                (ids, times),
            )

        await self._run(run)

    async def drop_released(self, node_ids: Sequence[str]) -> None:
        async def run(conn: Conn) -> None:
            await conn.execute("DELETE FROM released WHERE node_id = ANY(%s)", (list(node_ids),))

        await self._run(run)

    async def changes_since(self, since: int, *, before: int | None = None) -> Changes:
        async def run(conn: Conn) -> Changes:
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            upto = (
                int(await _one(conn, "SELECT value FROM revision"))
                if before is None
                else (before - 1)
            )
            if upto <= since:  # nothing new: one cheap read
                return no_changes(upto)
            rng = (since, upto)
            nodes = await _with_routes(
                conn,
                [
                    _node(r)
                    for r in await _all(
                        conn,
                        f"SELECT {_NODE_COLS} FROM nodes "
                        "WHERE updated_rev > %s AND updated_rev <= %s ORDER BY updated_rev, id",
                        rng,
                    )
                ],
            )
            stones = await _all(
                conn,
                "SELECT node_id, removed_rev FROM tombstones "
                "WHERE removed_rev > %s AND removed_rev <= %s ORDER BY removed_rev, node_id",
                rng,
            )
            containers = await _all(
                conn,
                f"SELECT {_CONTAINER_COLS} FROM containers "
                "WHERE updated_rev > %s AND updated_rev <= %s ORDER BY updated_rev, node_id, id",
                rng,
            )
            gone = await _all(
                conn,
                "SELECT node_id, container_id, removed_rev FROM container_tombstones "
                "WHERE removed_rev > %s AND removed_rev <= %s "
                "ORDER BY removed_rev, node_id, container_id",
                rng,
            )
            offline = await _all(conn, "SELECT id FROM nodes WHERE NOT online")
            revoked = await _all(conn, "SELECT public_key FROM revoked_keys")
            released = await _all(
                conn,
                "SELECT node_id, mesh_ip, subnet, released_at FROM released "
                "ORDER BY released_at, node_id",
            )
            policy = await _all(
                conn, f"{_NEWEST_POLICY} AND updated_rev > %s AND updated_rev <= %s", rng
            )
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
                policy=_policy(policy[0]) if policy else None,
            )

        return await self._run(run)

    async def seen_times(self, node_ids: Sequence[str]) -> dict[str, datetime]:
        async def run(conn: Conn) -> dict[str, datetime]:
            rows = await _all(
                conn,
                "SELECT id, last_seen FROM nodes WHERE id = ANY(%s) AND last_seen IS NOT NULL",
                (list(node_ids),),
            )
            return {str(r[0]): _utc(r[1]) for r in rows}

        return await self._run(run)

    async def save_policy(self, file: str, source: str, at: datetime) -> PolicyRecord:
        async def run(conn: Conn) -> PolicyRecord:
            # The revision row's lock (taken by the bump) also serialises the policy numbers.
            rev = await self._bump(conn)
            rows = await _all(
                conn,
                f"INSERT INTO policies ({_POLICY_COLS}) "
                "SELECT COALESCE(MAX(revision), 0) + 1, %s, %s, %s, %s FROM policies "
                f"RETURNING {_POLICY_COLS}",
                (file, source, at, rev),
            )
            return _policy(rows[0])

        return await self._run(run)

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        """A transaction-level advisory lock, on a pooled connection of its own held for the
        block: released at its end, or by the database when this replica dies."""
        if not self._ready:
            await self._open()
        try:
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{EXCLUSIVE_TIMEOUT}s'")
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(%s, hashtext(current_schema() || ':' || %s))",
                    (_EXCLUSIVE_LOCK, name),
                )
                yield
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise self._fail(exc) from exc

    async def claim_signature(self, mac: bytes, expires_at: int, now: int) -> bool:
        """Group commit: the claims that arrive while one batch is in the database go
        together in the next, one INSERT for all of them. A change fans out to every agent,
        and each polls again at once: one round trip per request would cost the database a
        transaction per node per change.

        The database decides (a replay to any replica is refused). While it is unreachable,
        this replica's own claims decide: it still refuses replays to itself, and one to
        another replica is refused there the same way; replays between replicas get through
        only during the outage, when every write is refused anyway."""
        if not self._local_claims.claim(mac, expires_at, now):
            return False
        if time.monotonic() < self._claims_offline_until:
            return True  # the database failed a moment ago: do not make every request wait
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._claims_pending[mac] = (expires_at, future)
        async with self._claiming:
            if not future.done():
                batch, self._claims_pending = self._claims_pending, {}
                await self._claim_batch(batch, now)
        return future.result()

    async def _claim_batch(
        self, batch: dict[bytes, tuple[int, asyncio.Future[bool]]], now: int
    ) -> None:
        """Settle every future of `batch`: True for the MACs this INSERT stored."""
        prune = now - self._claims_pruned_at > CLAIM_PRUNE_INTERVAL

        async def run(conn: Conn) -> set[bytes]:
            # A claim lost in a database crash only lets a request captured in the last
            # moment before it through once more: not worth a disk flush per request.
            await conn.execute("SET LOCAL synchronous_commit = off")
            if prune:
                await conn.execute(
                    "DELETE FROM used_signatures WHERE expires_at < %s", (now - CLAIM_SLACK,)
                )
            rows = await _all(
                conn,
                "INSERT INTO used_signatures (mac, expires_at) "
                "SELECT * FROM unnest(%s::bytea[], %s::bigint[]) "
                "ON CONFLICT (mac) DO NOTHING RETURNING mac",
                (list(batch), [until for until, _ in batch.values()]),
            )
            return {bytes(r[0]) for r in rows}

        try:
            stored = await self._run(run)
        except StoreError as exc:
            log.warning(
                "signature claims kept by this replica alone for %d s: %s", CLAIM_RETRY, exc
            )
            self._claims_offline_until = time.monotonic() + CLAIM_RETRY
            stored = set(batch)  # the local ledger passed each of them
        except BaseException:
            for _, future in batch.values():  # cancelled: nobody else settles them
                if not future.done():
                    future.set_exception(StoreError("signature claim interrupted; retry"))
            raise
        if prune:
            self._claims_pruned_at = now
        for mac, (_, future) in batch.items():
            if not future.done():
                future.set_result(mac in stored)

    async def notifications(self) -> AsyncIterator[int]:
        """LISTEN on a connection of its own (not the pool's); reconnects by itself after the
        database went away, and then yields the current revision first, since NOTIFYs sent
        meanwhile are lost. Costs nothing while no one writes."""
        if not self._ready:
            await self._open()
        pause = LISTEN_RETRY
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT)
                ) as conn:
                    cur = await conn.execute(f"SELECT {_CHANNEL_OF_SCHEMA}", (CHANNEL,))
                    channel = await cur.fetchone()
                    assert channel is not None, "a SELECT of one value returns a row"
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel[0])))
                    cur = await conn.execute("SELECT value FROM revision")
                    row = await cur.fetchone()
                    pause = LISTEN_RETRY
                    if row is not None:
                        yield int(row[0])
                    async for note in conn.notifies():
                        yield int(note.payload)
            except psycopg.Error as exc:
                log.warning(
                    "listening for changes on %s: %s (again in %.1f s)",
                    redact(self.url),
                    _reason(exc),
                    pause,
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, LISTEN_RETRY_MAX)

    async def import_state(
        self, snapshot: Snapshot, tokens: Sequence[TokenRecord], settings: Mapping[str, str]
    ) -> None:
        """Write another store's whole state as it is (revisions included, so agents keep
        their netmap revision and get deltas), in one transaction, into an empty database;
        `StoreError` if it already holds a mesh."""

        async def run(conn: Conn) -> None:
            rev = await _one(conn, "SELECT value FROM revision FOR UPDATE")
            used = await _all(conn, "SELECT 1 FROM nodes UNION ALL SELECT 1 FROM tokens LIMIT 1")
            if rev != 0 or used:
                raise StoreError(
                    f"database {redact(self.url)} already holds a mesh (revision {rev}); "
                    "migrate into an empty database"
                )
            async with conn.cursor() as cur:
                rows: list[tuple[str, Sequence[tuple[object, ...]]]] = [
                    (
                        "INSERT INTO settings (key, value) VALUES (%s, %s) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        list(settings.items()),
                    ),
                    (
                        f"INSERT INTO tokens ({_TOKEN_COLS}) VALUES ({', '.join(['%s'] * 13)})",
                        [_token_row(t) for t in tokens],
                    ),
                    (
                        f"INSERT INTO nodes ({_NODE_COLS}) VALUES ({_NODE_VALUES})",
                        [_node_row(n, n.updated_rev) for n in snapshot.nodes],
                    ),
                    (
                        "INSERT INTO tombstones (node_id, removed_rev) VALUES (%s, %s)",
                        [(t.node_id, t.removed_rev) for t in snapshot.tombstones],
                    ),
                    (
                        f"INSERT INTO containers ({_CONTAINER_COLS}) VALUES ({_CONTAINER_VALUES})",
                        [container_row(c.container, c.updated_rev) for c in snapshot.containers],
                    ),
                    (
                        "INSERT INTO container_tombstones (node_id, container_id, removed_rev) "
                        "VALUES (%s, %s, %s)",
                        [
                            (t.node_id, t.container_id, t.removed_rev)
                            for t in snapshot.container_tombstones
                        ],
                    ),
                    (
                        "INSERT INTO revoked_keys (public_key) VALUES (%s)",
                        [(str(k),) for k in snapshot.revoked_keys],
                    ),
                    (
                        "INSERT INTO released (node_id, mesh_ip, subnet, released_at) "
                        "VALUES (%s, %s, %s, %s)",
                        [
                            (
                                r.node_id,
                                str(r.mesh_ip),
                                None if r.subnet is None else str(r.subnet),
                                r.released_at,
                            )
                            for r in snapshot.released
                        ],
                    ),
                    (
                        f"INSERT INTO policies ({_POLICY_COLS}) VALUES (%s, %s, %s, %s, %s)",
                        [
                            (p.revision, p.file, p.source, p.set_at, p.updated_rev)
                            for p in (snapshot.policy,)
                            if p is not None
                        ],
                    ),
                ]
                rows.append(
                    (
                        "INSERT INTO routes (node_id, prefix, status, advertised_at, decided_at) "
                        "VALUES (%s, %s, %s, %s, %s)",
                        [_route_row(n.id, r) for n in snapshot.nodes for r in n.routes],
                    )
                )
                for query, params in rows:
                    if params:
                        await cur.executemany(query.encode(), params)
            await conn.execute("UPDATE revision SET value = %s", (snapshot.revision,))
            await conn.execute(_NOTIFY, (CHANNEL, str(snapshot.revision)))

        await self._run(run)

    async def close(self) -> None:
        await self._pool.close()


async def _all(conn: Conn, query: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
    cur = await conn.execute(query.encode(), params)
    return await cur.fetchall()


async def _one(conn: Conn, query: str) -> Any:
    rows = await _all(conn, query)
    return rows[0][0]


async def _bury(conn: Conn, node_id: str, container_ids: Sequence[str], rev: int) -> None:
    """Tombstones for `node_id`'s removed containers; prunes the oldest now and then."""
    if not container_ids:
        return
    await conn.execute(
        "INSERT INTO container_tombstones (node_id, container_id, removed_rev) "
        "SELECT %s, unnest(%s::text[]), %s "
        "ON CONFLICT (node_id, container_id) DO UPDATE SET removed_rev = excluded.removed_rev",
        (node_id, list(container_ids), rev),
    )
    if rev % PRUNE_EVERY == 0:
        await conn.execute(
            "DELETE FROM container_tombstones WHERE removed_rev < (SELECT removed_rev FROM "
            "container_tombstones ORDER BY removed_rev DESC LIMIT 1 OFFSET %s)",
            (CONTAINER_TOMBSTONES_KEPT,),
        )


async def _save_routes(conn: Conn, node: NodeRecord) -> None:
    """`node`'s routes replace the stored ones (inside the caller's transaction)."""
    await conn.execute("DELETE FROM routes WHERE node_id = %s", (node.id,))
    if node.routes:
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO routes (node_id, prefix, status, advertised_at, decided_at) "
                "VALUES (%s, %s, %s, %s, %s)",
                [_route_row(node.id, r) for r in node.routes],
            )


def _route_row(node_id: str, route: RouteRecord) -> tuple[object, ...]:
    return (node_id, str(route.prefix), route.status, route.advertised_at, route.decided_at)


async def _with_routes(conn: Conn, nodes: list[NodeRecord]) -> tuple[NodeRecord, ...]:
    """`nodes` with their stored routes, sorted by prefix (one query for all of them)."""
    if not nodes:
        return ()
    rows = await _all(
        conn,
        "SELECT node_id, prefix, status, advertised_at, decided_at FROM routes "
        "WHERE node_id = ANY(%s) ORDER BY node_id, prefix",
        ([n.id for n in nodes],),
    )
    by_node: dict[str, list[RouteRecord]] = {}
    for node_id, prefix, status, advertised, decided in rows:
        by_node.setdefault(str(node_id), []).append(
            RouteRecord(
                prefix=IPv4Network(str(prefix)),
                status=route_status(str(status)),
                advertised_at=_utc(advertised),
                decided_at=_opt_utc(decided),
            )
        )
    return tuple(replace(n, routes=tuple(by_node[n.id])) if n.id in by_node else n for n in nodes)


def _subnet(value: Any) -> IPv4Network | None:
    """A subnet column: NULL for a host without Docker."""
    return None if value is None else IPv4Network(str(value))


def _released(row: tuple[Any, ...]) -> Released:
    return Released(
        node_id=str(row[0]),
        mesh_ip=IPv4Address(str(row[1])),
        subnet=_subnet(row[2]),
        released_at=_utc(row[3]),
    )


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _opt_utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _token_row(token: TokenRecord) -> tuple[object, ...]:
    return (
        token.id,
        token.secret_hash,
        token.reusable,
        json.dumps(list(token.tags)),
        token.created_at,
        token.expires_at,
        token.used_at,
        token.used_by,
        token.revoked_at,
        token.max_uses,
        token.uses,
        token.ephemeral,
        token.scope,
    )


def _token(row: tuple[Any, ...]) -> TokenRecord:
    (tid, secret_hash, reusable, tags, created, expires, used, used_by, revoked) = row[:9]
    max_uses, uses, ephemeral, scope = row[9:]
    return TokenRecord(
        id=tid,
        secret_hash=secret_hash,
        reusable=reusable,
        tags=tuple(tags),
        created_at=_utc(created),
        expires_at=_opt_utc(expires),
        used_at=_opt_utc(used),
        used_by=used_by,
        revoked_at=_opt_utc(revoked),
        max_uses=max_uses,
        uses=uses,
        ephemeral=ephemeral,
        scope=scope,
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
        node.created_at,
        node.last_seen,
        rev,
        node.online,
        node.ephemeral,
        None if node.next_key is None else str(node.next_key),
        node.switch_at,
    )


def _node(row: tuple[Any, ...]) -> NodeRecord:
    (nid, name, key, ip, subnet, endpoints, tags, created, seen, rev, online, ephemeral) = row[:12]
    next_key, switch_at = row[12:]
    return NodeRecord(
        id=nid,
        name=name,
        public_key=PublicKey.parse(key),
        mesh_ip=IPv4Address(ip),
        subnet=_subnet(subnet),
        endpoints=tuple(Endpoint.model_validate(e) for e in endpoints),
        tags=tuple(tags),
        created_at=_utc(created),
        last_seen=_opt_utc(seen),
        updated_rev=int(rev),
        online=online,
        ephemeral=ephemeral,
        next_key=None if next_key is None else PublicKey.parse(next_key),
        switch_at=_opt_utc(switch_at),
    )


def _container(row: tuple[Any, ...]) -> ContainerRecord:
    (node_id, cid, name, ip, project, service, ports, health, rev, labels) = row
    container = Container(
        id=cid,
        node_id=node_id,
        name=name,
        ip=IPv4Address(ip),
        project=project,
        service=service,
        ports=tuple(PortSpec.model_validate(p) for p in ports),
        health=health,
        labels=tuple((str(k), str(v)) for k, v in labels),
    )
    return ContainerRecord(container=container, updated_rev=int(rev))


def _policy(row: tuple[Any, ...]) -> PolicyRecord:
    revision, file, source, set_at, rev = row
    return PolicyRecord(
        revision=int(revision),
        file=file,
        source=source,
        set_at=_utc(set_at),
        updated_rev=int(rev),
    )
