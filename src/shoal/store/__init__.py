"""The server's persistent state behind one `Store` protocol; the server logic never sees SQL.

`open_store(url, data_dir)` picks the backend from a URL: none or `sqlite:///path` → SQLite
(default `<data dir>/shoal.db`), `postgresql://...` → PostgreSQL (several replicas share it;
migrated on first use), `memory:` → in-memory (tests).
"""

from __future__ import annotations

from pathlib import Path

from shoal.store.base import (
    ContainerRecord,
    ContainerTombstone,
    NodeRecord,
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
    "Snapshot",
    "Store",
    "StoreConflict",
    "StoreError",
    "TokenRecord",
    "TokenUnavailable",
    "Tombstone",
    "open_store",
]


def open_store(url: str | None, data_dir: Path) -> Store:
    if url is None or url == "":
        from shoal.store.sqlite import SqliteStore

        return SqliteStore(data_dir / "shoal.db")
    if url.startswith("sqlite:///"):
        from shoal.store.sqlite import SqliteStore

        return SqliteStore(Path(url.removeprefix("sqlite://")))
    if url == "memory:":
        from shoal.store.memory import MemoryStore

        return MemoryStore()
    if url.startswith(("postgres://", "postgresql://")):
        from shoal.store.postgresql import PostgresStore

        return PostgresStore(url)
    raise StoreError(f"unknown store URL {url!r}; expected sqlite:///PATH or postgresql://...")
