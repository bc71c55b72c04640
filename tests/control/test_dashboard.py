"""The web dashboard: what it shows, what it escapes, who may see it, and how it stays live.

The view and its events are pure (checked on values made here); the HTTP side runs against a
real server on 127.0.0.1 with nodes registered through the real client."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from ipaddress import IPv4Address

import aiohttp
import pytest

from shoal.control.app import RunningServer
from shoal.control.dashboard.view import (
    ContainerRow,
    MeshView,
    NodeRow,
    RelayedPath,
    events_between,
    render_live,
    render_page,
)
from shoal.control.dashboard.web import COOKIE, FEED, UNWATCHED_LOOK_SECONDS, Feed, Sessions
from shoal.control.relay import Relay
from shoal.controlclient.tls import ssl_context
from shoal.model.api import (
    AdminTokenCreateRequest,
    ContainerReport,
    ContainersReport,
)
from tests.control.servers import FakeClock, admin_client, join, node_client

AT = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
XSS = '<script>alert("x")</script>'
XSS_ATTR = '"><img src=x onerror=alert(1)>'


def node_row(name: str, *, online: bool = True, key: str = "AAAA", **kw: object) -> NodeRow:
    fields: dict[str, object] = {
        "id": "n-" + name,
        "name": name,
        "online": online,
        "mesh_ip": "100.64.0.1",
        "subnet": "10.42.1.0/24",
        "endpoints": ("public 192.0.2.1:51820",),
        "key": key,
        "rotating_to": None,
        "tags": (),
        "ephemeral": False,
        "created_at": AT,
        "last_seen": None if online else AT,
    }
    fields.update(kw)
    return NodeRow(**fields)  # type: ignore[arg-type]


def box_row(name: str, node: str = "h1", health: str = "none", **kw: object) -> ContainerRow:
    fields: dict[str, object] = {
        "node": node,
        "node_online": True,
        "name": name,
        "ip": "10.42.1.2",
        "service": None,
        "health": health,
        "ports": (),
        "labels": (),
    }
    fields.update(kw)
    return ContainerRow(**fields)  # type: ignore[arg-type]


def mesh(
    nodes: tuple[NodeRow, ...] = (),
    containers: tuple[ContainerRow, ...] = (),
    relayed: tuple[RelayedPath, ...] = (),
    policy: str | None = None,
) -> MeshView:
    return MeshView(
        revision=1,
        nodes=nodes,
        containers=containers,
        relayed=relayed,
        policy=policy,
        heartbeat_seconds=15,
    )


# -- events ------------------------------------------------------------------------------------


def texts(old: MeshView, new: MeshView) -> list[str]:
    return [f"{e.kind}: {e.text}" for e in events_between(old, new, AT)]


def test_joins_leaves_and_liveness_are_events() -> None:
    one = mesh((node_row("h1"),))
    two = mesh((node_row("h1"), node_row("h2")))
    assert texts(one, two) == ["join: node h2 joined: 100.64.0.1, containers 10.42.1.0/24"]
    down = mesh((node_row("h1"), node_row("h2", online=False)))
    assert texts(two, down) == [
        "offline: node h2 went offline: silent for over 15 s, its containers withdrawn"
    ]
    assert texts(down, two) == ["online: node h2 is back online"]
    assert texts(two, one) == ["leave: node h2 left the mesh or was removed"]


def test_key_rotation_endpoints_containers_paths_and_policy_are_events() -> None:
    old = mesh((node_row("h1"), node_row("h2")), (box_row("web", health="starting"),))
    new = mesh(
        (
            node_row("h1", rotating_to="BBBB"),
            node_row("h2", endpoints=("symmetric 198.51.100.7:40000",)),
        ),
        (box_row("web", health="healthy"), box_row("db", node="h2", ip="10.42.2.2")),
        relayed=(RelayedPath("h1", "h2"),),
        policy="mesh.yaml revision 2",
    )
    assert texts(old, new) == [
        "key: node h1 rotates its key AAAA… → BBBB…",
        "endpoints: node h2 endpoints: symmetric 198.51.100.7:40000",
        "health: container web on h1: starting → healthy",
        "container: container db started on h2 (10.42.2.2)",
        "path: h1 ↔ h2 relayed through the server (no direct path)",
        "policy: policy set: mesh.yaml revision 2",
    ]
    assert texts(new, old)[-2:] == [
        "container: container db on h2 is gone",
        "path: relay for h1 ↔ h2 released (idle)",
    ]


def test_an_unchanged_view_has_no_events() -> None:
    view = mesh((node_row("h1"),), (box_row("web"),))
    assert events_between(view, view, AT) == []


# -- HTML --------------------------------------------------------------------------------------


def test_every_host_supplied_text_is_escaped() -> None:
    view = mesh(
        (node_row("h1"), node_row("h2")),
        (box_row(XSS, service=XSS, labels=(("shoal.role", XSS_ATTR), (XSS_ATTR, XSS))),),
    )
    old = mesh((node_row("h1"),))
    page = render_page(view, events_between(old, view, AT), version=3)
    assert "<script>alert" not in page
    assert "<img" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    # The page's only script is its own file (the CSP forbids inline script besides).
    assert page.count("<script") == 1
    assert '<script src="/dashboard/app.js" defer></script>' in page


def test_the_page_shows_offline_hosts_paths_and_relays() -> None:
    view = mesh(
        (node_row("h1"), node_row("h2"), node_row("h3", online=False)),
        relayed=(RelayedPath("h1", "h2"),),
    )
    live = render_live(view, [])
    assert '<tr class="node offline" data-node="h3">' in live
    assert '<span class="state bad">offline</span>' in live
    # Not reported by the hosts: what the server knows (the relay it grants).
    assert '<td class="path relayed unreported" data-pair="h1 h2">relayed</td>' in live
    assert '<td class="path down" data-pair="h1 h3">host offline</td>' in live
    assert "2 of 3 hosts online" in live


# -- sessions ----------------------------------------------------------------------------------


def test_sessions_expire_and_are_bounded() -> None:
    now = [0.0]
    sessions = Sessions(clock=lambda: now[0])
    sid = sessions.open("T")
    assert sessions.token(sid) == "T"
    assert sessions.token("guess") is None and sessions.token(None) is None
    now[0] += 12 * 3600
    assert sessions.token(sid) is None
    first = sessions.open("A")
    for _ in range(300):
        sessions.open("B")
    assert sessions.token(first) is None  # the oldest went first


# -- over HTTP, against a real server ----------------------------------------------------------


def browser(server: RunningServer) -> aiohttp.ClientSession:
    # unsafe=True: the jar keeps cookies of an IP host (127.0.0.1) only so.
    return aiohttp.ClientSession(
        base_url=server.url,
        connector=aiohttp.TCPConnector(ssl=ssl_context(server.ca.ca_pem)),
        cookie_jar=aiohttp.CookieJar(unsafe=True),
    )


def feed(server: RunningServer) -> Feed:
    return server.runner.app[FEED]


async def test_without_a_session_there_is_only_the_login_form(server: RunningServer) -> None:
    await join(server, "secret-host")
    async with browser(server) as b:
        async with b.get("/dashboard") as resp:
            page = await resp.text()
            assert resp.status == 200
            assert 'id="login"' in page and "secret-host" not in page
            assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
        async with b.get("/dashboard/live?since=0") as resp:
            assert resp.status == 401
            assert (await resp.json())["code"] == "admin_unauthorized"
        async with b.post("/dashboard/login", json={"token": "SHOAL-ADMIN-1-x-y"}) as resp:
            assert resp.status == 401
        async with b.get("/dashboard", headers={"Authorization": "Bearer nope"}) as resp:
            assert resp.status == 401
        async with b.get("/dashboard", cookies={COOKIE: "guessed"}) as resp:
            assert "secret-host" not in await resp.text()


async def test_a_read_token_opens_a_session_until_it_is_revoked(server: RunningServer) -> None:
    await join(server, "h1")
    async with admin_client(server) as admin:
        made = await admin.create_admin_token(AdminTokenCreateRequest(scope="read"))
    async with browser(server) as b:
        async with b.post("/dashboard/login", json={"token": made.token}) as resp:
            assert resp.status == 204
            cookie = resp.headers["Set-Cookie"]
        for attribute in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/dashboard"):
            assert attribute in cookie
        async with b.get("/dashboard") as resp:
            page = await resp.text()
        assert 'data-node="h1"' in page and 'id="login"' not in page
        async with admin_client(server) as admin:
            await admin.revoke_admin_token(made.info.id)
        async with b.get("/dashboard") as resp:
            assert 'id="login"' in await resp.text()
        async with b.get("/dashboard/live") as resp:
            assert resp.status == 401


async def test_live_waits_for_a_change_and_names_it(
    server: RunningServer, clock: FakeClock
) -> None:
    h1 = await join(server, "h1")
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    feed(server).refresh()
    version = feed(server).version
    async with browser(server) as b:
        async with b.get(f"/dashboard/live?since={version - 1}", headers=headers) as resp:
            assert (await resp.json())["version"] == version  # behind: at once

        async def poll() -> dict[str, object]:
            async with b.get(f"/dashboard/live?since={version}&wait=5", headers=headers) as r:
                reply: dict[str, object] = await r.json()
                return reply

        waiting = asyncio.create_task(poll())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        ip = h1.netmap.self_node.subnet.network_address + 2
        labels = (("shoal.role", XSS),)
        async with node_client(server, h1.key) as client:
            report = ContainerReport(id="a" * 64, name="web", ip=ip, labels=labels)
            await client.report_containers(ContainersReport(containers=(report,)))
        feed(server).refresh()
        update = await asyncio.wait_for(waiting, 5)
        assert update["version"] == version + 1
        html = str(update["html"])
        assert 'data-container="web"' in html and IPv4Address(str(ip)).exploded in html
        assert "container web started on h1" in html
        assert "<script>" not in html and "shoal.role=&lt;script&gt;" in html

        clock.advance(60)  # past the heartbeat timeout: h1 is silent
        assert feed(server).refresh()
        async with b.get("/dashboard", headers=headers) as resp:
            page = await resp.text()
        assert '<tr class="node offline" data-node="h1">' in page
        assert "node h1 went offline" in page


async def test_an_unchanged_mesh_keeps_its_version(server: RunningServer, clock: FakeClock) -> None:
    await join(server, "h1")
    feed(server).refresh()
    version = feed(server).version
    assert not feed(server).refresh()
    clock.advance(5)  # within the heartbeat timeout: nothing an operator sees moved
    assert not feed(server).refresh()
    assert feed(server).version == version


async def test_nobody_watching_costs_a_look_only_every_so_often(server: RunningServer) -> None:
    """A change with no viewer must not cost a look of the whole mesh: the feed ticks look
    every TICK only while a viewer waits for a change."""
    now = [1000.0]
    watched = Feed(feed(server).service, Relay("127.0.0.1"), monotonic=lambda: now[0])
    assert watched.due()
    watched.refresh()
    assert not watched.due()
    now[0] += UNWATCHED_LOOK_SECONDS - 1
    assert not watched.due()
    waiting = asyncio.create_task(watched.after(watched.version, 5))
    await asyncio.sleep(0)
    assert watched.due()  # a viewer waits: every tick looks
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    assert not watched.due()
    now[0] += 1
    assert watched.due()


async def test_the_script_and_style_are_served(server: RunningServer) -> None:
    async with browser(server) as b:
        async with b.get("/dashboard/app.js") as resp:
            assert resp.status == 200 and "javascript" in resp.content_type
            assert 'new EventSource("/dashboard/events")' in await resp.text()
        async with b.get("/dashboard/app.css") as resp:
            assert resp.status == 200 and resp.content_type == "text/css"


async def test_a_login_body_is_bounded(server: RunningServer) -> None:
    async with browser(server) as b:
        async with b.post("/dashboard/login", data=b"{" + b" " * 2000 + b"}") as resp:
            assert resp.status == 413
        async with b.post("/dashboard/login", data=b"not json") as resp:
            assert resp.status == 400
            assert (await resp.json())["message"] == 'expected {"token": "SHOAL-ADMIN-1-..."}'


@pytest.mark.parametrize("query", ["since=x", "wait=-1", "wait=nan"])
async def test_bad_live_queries_are_400(server: RunningServer, query: str) -> None:
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    async with browser(server) as b, b.get(f"/dashboard/live?{query}", headers=headers) as resp:
        assert resp.status == 400
