"""Row encodings the SQL backends share (what differs by dialect stays in each backend)."""

from __future__ import annotations

import json

from shoal.model.netmap import Container
from shoal.model.routes import RouteStatus


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


_STATUSES: dict[str, RouteStatus] = {
    "pending": "pending",
    "approved": "approved",
    "rejected": "rejected",
}


def route_status(text: str) -> RouteStatus:
    """A `routes.status` column as the model's literal; ValueError for anything else (a row
    no shoal wrote)."""
    try:
        return _STATUSES[text]
    except KeyError:
        raise ValueError(f"unknown route status {text!r} in the routes table") from None
