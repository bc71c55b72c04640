from ipaddress import IPv4Address

from shoal.model.catalog import build_catalog
from shoal.model.netmap import Container


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
