"""Containers and liveness end to end: the real app over TLS on 127.0.0.1, SQLite in tmp_path,
the real client; the clock is injected, so a node goes silent without anyone sleeping."""

from __future__ import annotations

import asyncio
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from shoal.control.app import RunningServer
from shoal.controlclient.errors import ControlRejected
from shoal.model.api import ContainerReport, ContainersReport, RegisterResponse
from shoal.model.netmap import Container, MapUpdate, PortSpec
from tests.control.servers import (
    FakeClock,
    admin_client,
    join,
    node_client,
    running_server,
)


def cid(n: int) -> str:
    return f"{n:064x}"


def box(node: RegisterResponse, n: int, name: str, host: int, **kw: object) -> ContainerReport:
    """Container number `n` at address .`host` of `node`'s subnet."""
    ip = node.netmap.self_node.subnet.network_address + host
    return ContainerReport(id=cid(n), name=name, ip=ip, **kw)


async def report(server: RunningServer, node: RegisterResponse, *boxes: ContainerReport) -> None:
    async with node_client(server, node.key) as client:
        await client.report_containers(ContainersReport(containers=boxes))


async def poll(
    server: RunningServer, node: RegisterResponse, since: int, wait: float = 0
) -> MapUpdate:
    async with node_client(server, node.key) as client:
        return await client.poll(since=since, wait=wait)


def names(containers: tuple[Container, ...]) -> list[str]:
    return [c.name for c in containers]


async def test_a_report_wakes_another_nodes_poll_with_the_container(
    server: RunningServer,
) -> None:
    alpha = await join(server, "alpha")
    beta = await join(server, "beta")
    waiting = asyncio.create_task(poll(server, beta, since=beta.netmap.revision, wait=30))
    async with asyncio.timeout(5):  # until the poll reached the server and waits there
        while server.service.registry.log.live_polls != 1:
            await asyncio.sleep(0.01)
    started = time.monotonic()
    web = box(alpha, 1, "web", 2, ports=(PortSpec(port=80),), project="app", service="web")
    await report(server, alpha, web)
    update = await waiting
    assert time.monotonic() - started < 1.0
    assert update.kind == "delta"
    assert update.containers_changed == (Container(node_id=alpha.node_id, **web.model_dump()),)
    seen = beta.netmap.apply(update)
    assert seen.containers[0].ip == IPv4Address("10.42.0.2")
    full = await poll(server, beta, since=0)
    assert full.full == seen


async def test_removal_and_health_changes_are_deltas(server: RunningServer) -> None:
    alpha = await join(server, "alpha")
    beta = await join(server, "beta")
    web, db = box(alpha, 1, "web", 2), box(alpha, 2, "db", 3, health="starting")
    await report(server, alpha, web, db)
    first = await poll(server, beta, since=beta.netmap.revision)
    netmap = beta.netmap.apply(first)
    assert names(netmap.containers) == ["web", "db"]  # sorted by (node, id)

    healthy = db.model_copy(update={"health": "healthy"})
    await report(server, alpha, web, healthy)
    changed = await poll(server, beta, since=netmap.revision)
    assert [(c.name, c.health) for c in changed.containers_changed] == [("db", "healthy")]
    assert changed.containers_removed == ()
    netmap = netmap.apply(changed)

    await report(server, alpha, healthy)  # web stopped
    removed = await poll(server, beta, since=netmap.revision)
    assert (
        removed.containers_removed == ((alpha.node_id, cid(1)),)
        and removed.containers_changed == ()
    )
    netmap = netmap.apply(removed)
    assert names(netmap.containers) == ["db"]

    await report(server, alpha, healthy)  # the same again: nothing changes, no revision used
    assert (await poll(server, beta, since=netmap.revision)).kind == "none"
    # The reporting node sees its own containers too (its DNS answers for local ones).
    mine = (await poll(server, alpha, since=0)).full
    assert mine is not None and mine.containers == netmap.containers


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ip": IPv4Address("10.42.1.5")}, "not a host address of node alpha's subnet"),
        ({"ip": IPv4Address("10.42.0.0")}, "not a host address of node alpha's subnet"),
        ({"name": "bad name"}, "containers.0.name: String should match pattern"),
        ({"service": "a/b"}, "containers.0.service: String should match pattern"),
        ({"id": "xyz"}, "containers.0.id: String should match pattern"),
        ({"name": "x" * 129}, "containers.0.name: String should have at most 128 characters"),
        (
            {"ports": tuple(PortSpec(port=p) for p in range(1, 34))},
            "containers.0.ports: Tuple should have at most 32 items",
        ),
    ],
)
async def test_a_bad_report_is_refused_and_changes_nothing(
    server: RunningServer, change: dict[str, object], message: str
) -> None:
    alpha = await join(server, "alpha")
    await join(server, "beta")  # its subnet 10.42.1.0/24 is not alpha's to use
    good = box(alpha, 1, "web", 2)
    await report(server, alpha, good)
    before = await poll(server, alpha, since=0)
    with pytest.raises(ControlRejected) as err:
        await report(server, alpha, good.model_copy(update=change))
    assert err.value.code == "bad_request" and message in err.value.message
    assert await poll(server, alpha, since=0) == before


async def test_duplicates_in_one_report_are_refused(server: RunningServer) -> None:
    alpha = await join(server, "alpha")
    with pytest.raises(ControlRejected, match=r"IP 10\.42\.0\.2 also reported for 'web'"):
        await report(server, alpha, box(alpha, 1, "web", 2), box(alpha, 2, "db", 2))
    with pytest.raises(ControlRejected, match="reported twice"):
        await report(server, alpha, box(alpha, 1, "web", 2), box(alpha, 1, "db", 3))


async def test_a_silent_node_is_withdrawn_and_returns(
    server: RunningServer, clock: FakeClock
) -> None:
    alpha = await join(server, "alpha")
    beta = await join(server, "beta")
    await report(server, alpha, box(alpha, 1, "web", 2), box(alpha, 2, "db", 3))
    await report(server, beta, box(beta, 3, "cache", 2))
    netmap = beta.netmap.apply(await poll(server, beta, since=beta.netmap.revision))
    assert sorted(names(netmap.containers)) == ["cache", "db", "web"]

    clock.advance(10)  # beta keeps polling, alpha says nothing
    netmap = netmap.apply(await poll(server, beta, since=netmap.revision))
    await server.service.sweep()
    assert (await poll(server, beta, since=netmap.revision)).kind == "none"
    clock.advance(6)  # alpha: 16 s of silence; beta: 6 s
    await server.service.sweep()
    gone = await poll(server, beta, since=netmap.revision)
    assert set(gone.containers_removed) == {(alpha.node_id, cid(1)), (alpha.node_id, cid(2))}
    netmap = netmap.apply(gone)
    assert names(netmap.containers) == ["cache"]
    assert netmap.peer(alpha.node_id) is not None  # the data plane keeps its peer
    async with admin_client(server) as admin:
        online = {n.name: n.online for n in await admin.list_nodes()}
        catalog = {s.name: s.instances[0].online for s in await admin.list_services()}
    assert online == {"alpha": False, "beta": True}
    assert catalog == {"cache": True, "db": False, "web": False}

    await poll(server, alpha, since=0)  # alpha is back: any request will do
    back = await poll(server, beta, since=netmap.revision)
    assert names(back.containers_changed) == ["web", "db"]
    assert sorted(names(netmap.apply(back).containers)) == ["cache", "db", "web"]


async def test_every_node_request_is_a_heartbeat(server: RunningServer, clock: FakeClock) -> None:
    alpha = await join(server, "alpha")
    await report(server, alpha, box(alpha, 1, "web", 2))
    for _ in range(3):
        clock.advance(12)
        await report(server, alpha, box(alpha, 1, "web", 2))  # no change, still a heartbeat
        await server.service.sweep()
    async with node_client(server, alpha.key) as client:
        clock.advance(12)
        await client.poll(since=0, wait=0)
    await server.service.sweep()
    async with admin_client(server) as admin:
        assert [s.instances[0].online for s in await admin.list_services()] == [True]


async def test_long_polls_are_capped_at_a_third_of_the_heartbeat_timeout(tmp_path: Path) -> None:
    async with running_server(tmp_path / "s", heartbeat_timeout=1.5) as server:
        assert server.service.max_wait == 0.5
        alpha = await join(server, "alpha")
        started = time.monotonic()
        update = await poll(server, alpha, since=alpha.netmap.revision, wait=30)
        assert update.kind == "none" and time.monotonic() - started < 5
    async with running_server(tmp_path / "t") as server:
        assert server.service.max_wait == 5.0


async def test_containers_and_liveness_survive_a_restart(tmp_path: Path) -> None:
    data, clock = tmp_path / "server", FakeClock()
    async with running_server(data, clock) as server:
        alpha = await join(server, "alpha")
        beta = await join(server, "beta")
        await report(server, alpha, box(alpha, 1, "web", 2))
        await report(server, beta, box(beta, 2, "db", 2))
        before = beta.netmap.apply(await poll(server, beta, since=beta.netmap.revision))
        clock.advance(16)
        await poll(server, beta, since=0)  # beta stays
        await server.service.sweep()  # alpha is withdrawn
        after_sweep = before.apply(await poll(server, beta, since=before.revision))
        assert names(after_sweep.containers) == ["db"]
    async with running_server(data, clock) as server:
        # Deltas still work across the restart, and alpha is still offline.
        update = await poll(server, beta, since=before.revision)
        assert update.kind == "delta"
        assert before.apply(update) == after_sweep.apply(await poll(server, beta, since=0))
        assert names(before.apply(update).containers) == ["db"]
        await poll(server, alpha, since=0)
        back = await poll(server, beta, since=update.revision)
        assert names(back.containers_changed) == ["web"]


async def test_removing_a_node_removes_its_containers(server: RunningServer) -> None:
    alpha = await join(server, "alpha")
    beta = await join(server, "beta")
    await report(server, alpha, box(alpha, 1, "web", 2))
    netmap = beta.netmap.apply(await poll(server, beta, since=beta.netmap.revision))
    async with admin_client(server) as admin:
        await admin.remove_node("alpha")
        assert await admin.list_services() == []
    update = await poll(server, beta, since=netmap.revision)
    assert update.peers_removed == (alpha.node_id,) and update.containers_removed == (
        (alpha.node_id, cid(1)),
    )
    assert netmap.apply(update).containers == ()


async def test_catalog_groups_replicas_across_nodes(server: RunningServer) -> None:
    alpha = await join(server, "alpha")
    beta = await join(server, "beta")
    compose = {"project": "shop", "service": "web"}
    await report(
        server,
        alpha,
        box(alpha, 1, "shop-web-1", 2, health="healthy", **compose),
        box(alpha, 3, "cache", 3),
    )
    await report(server, beta, box(beta, 2, "shop-web-2", 2, health="unhealthy", **compose))
    async with admin_client(server) as admin:
        services = await admin.list_services()
    assert [(s.name, s.project, s.service) for s in services] == [
        ("cache", None, None),
        ("web.shop", "shop", "web"),
    ]
    web = services[1]
    assert [(i.container, i.node, str(i.ip), i.health) for i in web.instances] == [
        ("shop-web-1", "alpha", "10.42.0.2", "healthy"),
        ("shop-web-2", "beta", "10.42.1.2", "unhealthy"),
    ]
    async with node_client(server, alpha.key) as client:
        with pytest.raises(ControlRejected) as err:
            await client.list_services()
    assert err.value.code == "admin_unauthorized"


async def test_catalog_orders_services_of_one_name_lone_container_first(
    server: RunningServer,
) -> None:
    alpha = await join(server, "alpha")
    # Docker allows dots in names: a lone "web.shop" and compose service web of project shop
    # share a name; their order must not depend on container ids.
    await report(
        server,
        alpha,
        box(alpha, 1, "shop-web-1", 2, project="shop", service="web"),
        box(alpha, 2, "web.shop", 3),
    )
    async with admin_client(server) as admin:
        services = await admin.list_services()
    assert [(s.name, s.project, s.service) for s in services] == [
        ("web.shop", None, None),
        ("web.shop", "shop", "web"),
    ]


async def test_a_node_reporting_another_hosts_container_id_cannot_take_it_over(
    server: RunningServer,
) -> None:
    """Issue 7, finding 2: container identity is (node, container id). beta reporting alpha's
    container id gets a container of its own; alpha's stays alpha's, and beta withdrawing
    the id withdraws only its own."""
    alpha = await join(server, "alpha")
    beta = await join(server, "beta")
    await report(server, alpha, box(alpha, 1, "web", 2))
    await report(server, beta, box(beta, 1, "web", 2))  # alpha's id, on beta's subnet
    netmap = (await poll(server, alpha, since=0)).full
    assert netmap is not None
    assert [(c.node_id, c.id, c.name) for c in netmap.containers] == sorted(
        [(alpha.node_id, cid(1), "web"), (beta.node_id, cid(1), "web")]
    )
    async with admin_client(server) as admin:
        [web] = await admin.list_services()
    assert sorted(i.node for i in web.instances) == ["alpha", "beta"]

    since = netmap.revision
    await report(server, beta)  # beta withdraws "its" web
    update = await poll(server, alpha, since=since)
    assert update.containers_removed == ((beta.node_id, cid(1)),)
    after = netmap.apply(update)
    assert [(c.node_id, c.ip) for c in after.containers] == [
        (alpha.node_id, IPv4Address("10.42.0.2"))
    ]
    assert after == (await poll(server, alpha, since=0)).full
