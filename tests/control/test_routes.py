"""Subnet routes through the real API: advertised at join, pending until approved, refused
when they overlap a pool or another node's route, in every peer's netmap once approved (a
delta of the advertising node) and out of it once rejected; a read-only token cannot decide."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from shoal.control.app import RunningServer
from shoal.controlclient.client import ControlClient
from shoal.controlclient.errors import ControlRejected
from shoal.model.api import AdminTokenCreateRequest, RegisterRequest
from shoal.model.keys import PrivateKey
from shoal.model.netmap import NetworkMap
from shoal.model.routes import route_id
from tests.control.servers import Joined, admin_client, join, new_token, node_client

LAN = IPv4Network("192.168.77.0/24")


async def join_routing(server: RunningServer, name: str, *routes: IPv4Network) -> Joined:
    """`name` joins with a new single-use token, advertising `routes`."""
    key = PrivateKey.generate()
    token = await new_token(server)
    async with node_client(server, key) as client:
        reply = await client.register(
            RegisterRequest(
                token=token, name=name, public_key=key.public_key(), advertise_routes=routes
            )
        )
    return Joined(node_id=reply.node_id, netmap=reply.netmap, key=key)


async def peer_routes(server: RunningServer, who: Joined, since: int = 0) -> dict[str, object]:
    async with node_client(server, who.key) as client:
        update = await client.poll(since=since, wait=0)
    nm = update.full if update.full is not None else None
    assert isinstance(nm, NetworkMap)
    return {p.name: p.routes for p in nm.peers}


async def test_a_route_is_pending_until_approved_then_every_peer_routes_it(
    server: RunningServer,
) -> None:
    router = await join_routing(server, "router", LAN)
    client = await join(server, "client")
    assert (await peer_routes(server, client))["router"] == ()  # pending: nobody routes it
    async with admin_client(server) as admin:
        [listed] = await admin.list_routes()
        assert (listed.node, listed.prefix, listed.status) == ("router", LAN, "pending")
        assert listed.id == route_id(router.node_id, LAN)
        approved = await admin.decide_route(listed.id, approve=True)
        assert approved.status == "approved" and approved.decided_at is not None
    assert (await peer_routes(server, client))["router"] == (LAN,)
    async with node_client(server, client.key) as c:
        before = (await c.poll(since=0, wait=0)).revision
    async with admin_client(server) as admin:  # by prefix this time
        assert (await admin.decide_route(str(LAN), approve=False)).status == "rejected"
    async with node_client(server, client.key) as c:
        delta = await c.poll(since=before, wait=0)
    assert delta.kind == "delta"
    assert [(p.name, p.routes) for p in delta.peers_changed] == [("router", ())]


async def test_joining_again_keeps_the_decision_and_reporting_endpoints_keeps_the_routes(
    server: RunningServer,
) -> None:
    router = await join_routing(server, "router", LAN)
    async with admin_client(server) as admin:
        await admin.decide_route(str(LAN), approve=True)
    async with node_client(server, router.key) as c:  # endpoints only: routes unchanged
        await c.register(RegisterRequest(name="router", public_key=router.key.public_key()))
    async with admin_client(server) as admin:
        assert [r.status for r in await admin.list_routes()] == ["approved"]
    async with node_client(server, router.key) as c:  # an empty set withdraws them
        await c.register(
            RegisterRequest(name="router", public_key=router.key.public_key(), advertise_routes=())
        )
    async with admin_client(server) as admin:
        assert await admin.list_routes() == []


@pytest.mark.parametrize(
    ("prefix", "says"),
    [
        ("10.42.0.0/24", "overlaps the mesh's container pool 10.42.0.0/16"),
        ("100.96.0.0/12", "overlaps the mesh's mesh pool 100.64.0.0/10"),
        ("192.168.0.0/16", "overlaps 192.168.77.0/24, which node router advertises (pending)"),
    ],
)
async def test_overlapping_routes_are_refused_with_a_409_that_says_why(
    server: RunningServer, prefix: str, says: str
) -> None:
    await join_routing(server, "router", LAN)
    with pytest.raises(ControlRejected) as refused:
        await join_routing(server, "other", IPv4Network(prefix))
    assert refused.value.code == "route_conflict" and says in refused.value.message
    async with admin_client(server) as admin:
        assert [n.name for n in await admin.list_nodes()] == ["router"]  # nothing joined


async def test_unknown_routes_and_read_only_tokens_are_refused(server: RunningServer) -> None:
    await join_routing(server, "router", LAN)
    async with admin_client(server) as admin:
        with pytest.raises(ControlRejected) as unknown:
            await admin.decide_route("10.1.0.0/24", approve=True)
        assert unknown.value.code == "not_found"
        reader = (await admin.create_admin_token(AdminTokenCreateRequest(scope="read"))).token
    async with ControlClient(server.url, server.ca.ca_pem, credential=reader) as ro:
        assert len(await ro.list_routes()) == 1
        with pytest.raises(ControlRejected) as narrow:
            await ro.decide_route(str(LAN), approve=True)
        assert narrow.value.code == "admin_scope"
