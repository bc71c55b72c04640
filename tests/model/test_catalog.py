from ipaddress import IPv4Address

from shoal.model.catalog import Catalog, build_catalog, next_catalog
from shoal.model.netmap import Container, NetworkMap, PortSpec
from shoal.testing.builders import netmap


def c(
    cid: str, node: str, name: str, service: str | None = None, health: str = "none"
) -> Container:
    return Container.model_validate(
        {
            "id": cid,
            "node_id": node,
            "name": name,
            "ip": IPv4Address(f"10.42.0.{len(cid) + 1}"),
            "project": "app" if service else None,
            "service": service,
            "health": health,
        }
    )


def test_replicas_on_two_hosts_are_one_service_and_lone_containers_their_own() -> None:
    catalog = build_catalog(
        [
            c("a", "n1", "app-api-1", "api"),
            c("bb", "n2", "app-api-2", "api", "unhealthy"),
            c("ccc", "n2", "cache"),
        ],
        {"n1": "h1", "n2": "h2"},
        online=["n1"],
    )
    assert [s.name for s in catalog] == ["api.app", "cache"]
    api = catalog[0]
    assert [(i.node, i.health, i.online) for i in api.instances] == [
        ("h1", "none", True),
        ("h2", "unhealthy", False),
    ]


def test_a_lone_container_sorts_before_a_compose_service_of_the_same_name() -> None:
    catalog = build_catalog(
        [c("a", "n1", "app-api-1", "api"), c("bb", "n1", "api.app")], {"n1": "h1"}, online=[]
    )
    assert [(s.name, s.project) for s in catalog] == [("api.app", None), ("api.app", "app")]


def test_an_instance_carries_its_host_address_ports_labels_and_names() -> None:
    container = c("a", "n1", "app-api-1", "api").model_copy(
        update={
            "ports": (PortSpec(port=8000), PortSpec(port=53, protocol="udp")),
            "labels": (("shoal.tls", "true"),),
        }
    )
    (api,) = build_catalog(
        [container], {"n1": "h1"}, online=["n1"], node_ips={"n1": IPv4Address("100.64.0.1")}
    )
    assert api.dns == "api.app.shoal"
    (instance,) = api.instances
    assert instance.node_ip == IPv4Address("100.64.0.1")
    assert instance.dns == "app-api-1.h1.shoal"
    assert [(p.port, p.protocol) for p in instance.ports] == [(8000, "tcp"), (53, "udp")]
    assert instance.labels == (("shoal.tls", "true"),)


def with_containers(revision: int, *containers: Container) -> NetworkMap:
    return netmap(1, [2], revision=revision).model_copy(update={"containers": containers})


def test_the_catalog_index_moves_only_when_the_services_change() -> None:
    first = next_catalog(Catalog(index=0), with_containers(5, c("a", "n2", "cache")))
    assert first.index == 5
    assert [(s.name, s.instances[0].node_ip) for s in first.services] == [
        ("cache", IPv4Address("100.64.0.2"))
    ]
    # A netmap revision that changed something else (a peer's endpoint) keeps the catalog.
    assert next_catalog(first, with_containers(6, c("a", "n2", "cache"))) is first
    healthier = next_catalog(first, with_containers(7, c("a", "n2", "cache", health="healthy")))
    assert healthier.index == 7
    # A server restarted with a lower revision still moves the index forward.
    assert next_catalog(healthier, with_containers(2)).index == 8
