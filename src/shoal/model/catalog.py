"""The service catalog: containers grouped into services, as `shoal services` shows them and the
agent's catalog endpoint serves them to tools (see docs/catalog.md)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address

from shoal.model.api import ServiceInfo, ServiceInstance
from shoal.model.netmap import Container, Frozen, NetworkMap

ZONE = "shoal"


class Catalog(Frozen):
    """The whole catalog at `index`: the netmap revision at which it last changed, so a
    watcher that saw index N waits for a larger one (Consul's blocking-query index)."""

    index: int
    services: tuple[ServiceInfo, ...] = ()


def build_catalog(
    containers: Iterable[Container],
    node_names: Mapping[str, str],
    online: Iterable[str],
    node_ips: Mapping[str, IPv4Address] | None = None,
) -> list[ServiceInfo]:
    """Compose services grouped by (project, service) as `<service>.<project>`; a container
    outside compose is a service of its own, by name. `node_names` maps node id -> name,
    `node_ips` node id -> mesh IP; `online` holds the ids of hosts within their heartbeat
    timeout. Sorted by name, then a lone container before a compose service of the same name
    (Docker allows dots in names)."""
    up = set(online)
    ips = node_ips or {}
    groups: dict[tuple[str, str | None, str | None], list[ServiceInstance]] = {}
    for c in containers:
        key: tuple[str, str | None, str | None] = (c.name, None, None)
        if c.service and c.project:
            key = (f"{c.service}.{c.project}", c.project, c.service)
        node = node_names.get(c.node_id, c.node_id)
        groups.setdefault(key, []).append(
            ServiceInstance(
                container=c.name,
                node=node,
                ip=c.ip,
                health=c.health,
                online=c.node_id in up,
                node_ip=ips.get(c.node_id),
                dns=f"{c.name}.{node}.{ZONE}",
                ports=c.ports,
                labels=c.labels,
            )
        )
    return [
        ServiceInfo(
            name=name,
            project=project,
            service=service,
            instances=tuple(sorted(instances, key=lambda i: (i.node, i.container))),
            dns=f"{name}.{ZONE}",
        )
        for (name, project, service), instances in sorted(
            groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2] or "")
        )
    ]


def netmap_catalog(netmap: NetworkMap) -> tuple[ServiceInfo, ...]:
    """The catalog an agent serves: every container of its netmap (the server has already
    withdrawn the containers of silent hosts, so every host in it counts as online)."""
    nodes = (netmap.self_node, *netmap.peers)
    return tuple(
        build_catalog(
            netmap.containers,
            {n.id: n.name for n in nodes},
            online=[n.id for n in nodes],
            node_ips={n.id: n.mesh_ip for n in nodes},
        )
    )


def next_catalog(current: Catalog, netmap: NetworkMap) -> Catalog:
    """The catalog after `netmap`: the same value (same index) when its services did not
    change, so a peer's new endpoint never wakes a watcher; else indexed by the revision."""
    services = netmap_catalog(netmap)
    if services == current.services:
        return current
    return Catalog(index=max(netmap.revision, current.index + 1), services=services)
