"""Moving a mesh's whole state from one store to another (`shoal server migrate`).

Everything a running mesh needs moves: nodes (with their revisions, liveness, last-seen times
and pending key rotations), tokens with their use counts, containers (with their labels),
tombstones, settings (pools, MTU, the admin token's hash), revoked keys, quarantined addresses
and the access-control policy in force, its number kept (earlier policies, kept for the record,
stay in the source only). The global revision moves too, so an agent that held revision r on
the old server gets a delta from r on the new one, and joins nothing again.
The CA and the server's keys are files in the data dir, not store rows: the new server (every
replica) runs with a copy of that data dir.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.store.base import Store
from shoal.store.postgresql import PostgresStore

# Every tombstone moves: a client behind the oldest one must still get a delta, not a full map.
ALL_TOMBSTONES = 2**62


@dataclass(frozen=True, slots=True)
class Moved:
    """What one migration carried, for the operator."""

    revision: int
    nodes: int
    tokens: int
    containers: int
    settings: int


async def copy_state(source: Store, target: PostgresStore) -> Moved:
    """Copy `source`'s state into the empty `target` in one transaction of the target (a
    failure leaves it empty). The source is only read."""
    snapshot = await source.load(ALL_TOMBSTONES)
    tokens = await source.list_tokens()
    settings = await source.list_settings()
    await target.import_state(snapshot, tokens, settings)
    return Moved(
        revision=snapshot.revision,
        nodes=len(snapshot.nodes),
        tokens=len(tokens),
        containers=len(snapshot.containers),
        settings=len(settings),
    )
