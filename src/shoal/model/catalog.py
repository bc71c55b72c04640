"""The service catalog: containers grouped into services, as `shoal services` shows them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from shoal.model.api import ServiceInfo, ServiceInstance
from shoal.model.netmap import Container


def build_catalog(
    containers: Iterable[Container], node_names: Mapping[str, str], online: Iterable[str]
) -> list[ServiceInfo]:
    """Compose services grouped by (project, service) as `<service>.<project>`; a container
    outside compose is a service of its own, by name. `node_names` maps node id -> name;
    `online` holds the ids of hosts within their heartbeat timeout. Sorted by name, then a lone
    container before a compose service of the same name (Docker allows dots in names)."""
    up = set(online)
    groups: dict[tuple[str, str | None, str | None], list[ServiceInstance]] = {}
    for c in containers:
        key: tuple[str, str | None, str | None] = (c.name, None, None)
        if c.service and c.project:
            key = (f"{c.service}.{c.project}", c.project, c.service)
        groups.setdefault(key, []).append(
            ServiceInstance(
                container=c.name,
                node=node_names.get(c.node_id, c.node_id),
                ip=c.ip,
                health=c.health,
                online=c.node_id in up,
            )
        )
    return [
        ServiceInfo(
            name=name,
            project=project,
            service=service,
            instances=tuple(sorted(instances, key=lambda i: (i.node, i.container))),
        )
        for (name, project, service), instances in sorted(
            groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2] or "")
        )
    ]
