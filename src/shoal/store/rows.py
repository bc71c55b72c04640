"""Row encodings the SQL backends share (what differs by dialect stays in each backend)."""

from __future__ import annotations

import json

from shoal.model.netmap import Container


def container_row(c: Container, rev: int) -> tuple[object, ...]:
    """A container as the columns of the `containers` table, in `_CONTAINER_COLS` order."""
    return (
        c.node_id,
        c.id,
        c.name,
        str(c.ip),
        c.project,
        c.service,
        json.dumps([p.model_dump(mode="json") for p in c.ports]),
        c.health,
        rev,
        json.dumps([list(kv) for kv in c.labels]),
    )
