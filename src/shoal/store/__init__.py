"""The server's persistent state behind one `Store` protocol; the server logic never sees SQL.

`open_store(url, data_dir)` picks the backend from a URL: none, `sqlite:PATH` or
`sqlite:///path` → SQLite (default `<data dir>/shoal.db`), `postgresql://...` → PostgreSQL
(several replicas share it; migrated on first use), `memory:` → in-memory (tests).
"""

from __future__ import annotations

from pathlib import Path

from shoal.store.base import (
    ContainerRecord,
    ContainerTombstone,
    NodeRecord,
    RouteRecord,
    Snapshot,
    Store,
    TokenRecord,
    Tombstone,
)
from shoal.store.errors import StoreConflict, StoreError, TokenUnavailable

__all__ = [
    "ContainerRecord",
    "ContainerTombstone",
    "NodeRecord",
    "RouteRecord",
    "Snapshot",
    "Store",
    "StoreConflict",
    "StoreError",
    "TokenRecord",
    "TokenUnavailable",
    "Tombstone",
    "is_postgres_url",
    "open_store",
]


def is_postgres_url(url: str) -> bool:
    """A PostgreSQL store: one that several server replicas may share."""
    return url.startswith(("postgres://", "postgresql://"))


def open_store(url: str | None, data_dir: Path) -> Store:
    if url is None or url == "":
        from shoal.store.sqlite import SqliteStore

        return SqliteStore(data_dir / "shoal.db")
    if url.startswith("sqlite:"):  # sqlite:///abs/path or sqlite:PATH
        from shoal.store.sqlite import SqliteStore

        path = url.removeprefix("sqlite://") if url.startswith("sqlite:///") else url[7:]
        if not path:
            raise StoreError(f"store URL {url!r} names no file; expected sqlite:PATH")
        return SqliteStore(Path(path))
    if url == "memory:":
        from shoal.store.memory import MemoryStore

        return MemoryStore()
    if is_postgres_url(url):
        from shoal.store.postgresql import PostgresStore

        return PostgresStore(url)
    raise StoreError(f"unknown store URL {url!r}; expected sqlite:///PATH or postgresql://...")
