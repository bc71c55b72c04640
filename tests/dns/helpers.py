"""A small mesh for the DNS tests: nodes h1..h3, containers stated per test."""

from __future__ import annotations

from ipaddress import IPv4Address

from shoal.model.netmap import Container, Health, NetworkMap, PortSpec
from shoal.testing import builders


def container(
    name: str,
    node: int,
    host_part: int,
    project: str | None = None,
    service: str | None = None,
    ports: tuple[tuple[int, str], ...] = (),
    health: Health = "none",
) -> Container:
    return Container(
        id=f"{name}-{node}-{host_part}".ljust(12, "0"),
        node_id=f"n{node}",
        name=name,
        ip=IPv4Address(f"10.42.{node}.{host_part}"),
        project=project,
        service=service,
        ports=tuple(PortSpec(port=p, protocol=proto) for p, proto in ports),  # type: ignore[arg-type]
        health=health,
    )


def mesh(*containers: Container, revision: int = 7) -> NetworkMap:
    """Node h1 (self) with peers h2, h3 and `containers`."""
    base = builders.netmap(1, [2, 3], revision=revision)
    return base.model_copy(update={"containers": tuple(sorted(containers, key=lambda c: c.id))})


# The seed's compose project `app`: web on h1 and h2 (h2's failing its check), cache on h2,
# a standalone `db` on h3, and project `blog` with its own `web` on h3.
WEB1 = container("app-web-1", 1, 2, "app", "web", ports=((80, "tcp"),), health="healthy")
WEB2 = container("app-web-2", 2, 2, "app", "web", ports=((80, "tcp"),), health="unhealthy")
WEB3 = container("app-web-3", 3, 5, "app", "web", ports=((80, "tcp"), (8080, "tcp")))
CACHE = container("app-cache-1", 2, 3, "app", "cache", ports=((6379, "tcp"),))
DB = container("db", 3, 2, ports=((5432, "tcp"), (53, "udp")))
BLOG = container("blog-web-1", 3, 3, "blog", "web", ports=((80, "tcp"),))
SEED = mesh(WEB1, WEB2, WEB3, CACHE, DB, BLOG)
