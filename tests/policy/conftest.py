"""A 3-host mesh with compose services to compile policies against."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

from shoal.model.netmap import Container, NetworkMap
from shoal.model.policy import Policy, parse
from shoal.testing.builders import SETTINGS, node

EXAMPLE = Path(__file__).parent / "example.yaml"


def example() -> Policy:
    return parse(EXAMPLE.read_text(), "example.yaml").model_copy(update={"revision": 3})


def box(i: int, name: str, node_index: int, service: str | None = None, **labels: str) -> Container:
    return Container(
        id=f"{i:012x}",
        node_id=f"n{node_index}",
        name=name,
        ip=IPv4Address(f"10.42.{node_index}.{10 + i}"),
        project="app" if service else None,
        service=service,
        labels=tuple(sorted((k.replace("_", "."), v) for k, v in labels.items())),
    )


CONTAINERS = (
    box(1, "app-web-1", 1, "web"),
    box(2, "app-web-2", 3, "web"),
    box(3, "app-db-1", 2, "db"),
    box(4, "api", 2, None, shoal_tags="api"),
    box(5, "cache", 2),
)


def mesh(self_index: int, policy: Policy | None = None) -> NetworkMap:
    """Host h<self_index>'s map of h1 (tag ops), h2 (tag db), h3, with CONTAINERS."""
    tags = {1: ("ops",), 2: ("db",), 3: ()}
    nodes = {i: node(i).model_copy(update={"tags": tags[i]}) for i in (1, 2, 3)}
    return NetworkMap(
        revision=7,
        settings=SETTINGS,
        self_node=nodes[self_index],
        peers=tuple(n for i, n in sorted(nodes.items()) if i != self_index),
        containers=CONTAINERS,
        policy=policy,
    )
