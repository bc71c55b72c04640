"""A mesh of N nodes written into a SQLite store before the server starts (`--seeded`; the
PostgreSQL replicas' database takes it over first, see `server.start_control_plane`): the
server side of 10,000 hosts measured without 10,000 registrations whose replies of up to
10,000 peers the simulated fleet, one process on a shared machine, would parse for hours.

Each seeded node is what a registration would have stored (its own X25519 key, mesh IP,
container subnet, one endpoint); the server loads them as it loads any store. The simulated
agents then follow the netmap from the store's revision: they hold maps without the seeded
peers (N maps of N peers do not fit here), and every delta they receive is the very bytes a
fully synced agent gets.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from benchmarks.scale.fleet import UNDERLAY_BASE
from shoal.model.keys import PrivateKey
from shoal.model.netmap import Endpoint
from shoal.store.base import NodeRecord
from shoal.store.sqlite import SqliteStore

MESH_BASE = IPv4Address("100.64.0.1")  # the default mesh pool's first address
CONTAINER_BASE = IPv4Address("10.0.0.0")  # the run's --container-pool, a /24 per host


@dataclass(frozen=True)
class Seeded:
    """A node written into the store and the private key its simulated agent signs with."""

    record: NodeRecord
    key: PrivateKey


async def seed_store(db: Path, count: int, prefix: str) -> list[Seeded]:
    """Write `count` nodes named `prefix`0.. into a new SQLite store at `db` (a store a
    previous run left there is removed first: its nodes hold the same subnets)."""
    for leftover in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        leftover.unlink(missing_ok=True)
    store = SqliteStore(db)
    now = datetime.now(UTC)
    seeded: list[Seeded] = []
    try:
        for i in range(count):
            key = PrivateKey.generate()
            record = NodeRecord(
                id="n" + secrets.token_hex(6),
                name=f"{prefix}{i}",
                public_key=key.public_key(),
                mesh_ip=MESH_BASE + i,
                subnet=IPv4Network((int(CONTAINER_BASE) + 256 * i, 24)),
                endpoints=(Endpoint(host=UNDERLAY_BASE + i, port=51820),),
                created_at=now,
                last_seen=now,
            )
            await store.save_node(record, at=now)
            seeded.append(Seeded(record, key))
    finally:
        await store.close()
    return seeded
