"""The server's /metrics over the real app (TLS on 127.0.0.1): what it counts, who may read
it, and that Prometheus could parse it."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest

from shoal.control.app import RunningServer
from shoal.controlclient.errors import ControlRejected
from shoal.controlclient.tls import ssl_context
from shoal.model.api import AdminTokenCreateRequest, RegisterRequest
from shoal.model.keys import PrivateKey
from shoal.testing.prometheus import Key, parse, value
from tests.control.servers import admin_client, join, node_client


async def scrape(server: RunningServer, token: str | None) -> tuple[int, str, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connector = aiohttp.TCPConnector(ssl=ssl_context(server.ca.ca_pem))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(server.url + "/metrics", headers=headers) as resp,
    ):
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def metrics(server: RunningServer, token: str) -> dict[Key, float]:
    status, content_type, text = await scrape(server, token)
    assert status == 200, text
    assert content_type.startswith("text/plain; version=0.0.4")
    return parse(text)


async def test_nodes_registrations_long_polls_rejections_and_latency(
    server: RunningServer,
) -> None:
    async with admin_client(server) as admin:
        read = (await admin.create_admin_token(AdminTokenCreateRequest(scope="read"))).token
    alpha = await join(server, "alpha")
    await join(server, "beta")
    key = PrivateKey.generate()
    async with node_client(server, key) as client:
        with pytest.raises(ControlRejected):  # another server's token
            await client.register(
                RegisterRequest(token="SHOAL-1-" + "0" * 64 + "-" + "0" * 32, name="x",
                                public_key=key.public_key())
            )  # fmt: skip
    async with admin_client(server) as admin:
        admin.credential = "garbage"
        with pytest.raises(ControlRejected):
            await admin.list_nodes()

    async with node_client(server, alpha.key) as client:
        poll = asyncio.create_task(client.poll(since=alpha.netmap.revision + 1, wait=30))
        try:
            m = await metrics(server, read)
            for _ in range(100):  # the poll is in flight once the server counted it
                if value(m, "shoal_server_long_polls_open") == 1:
                    break
                await asyncio.sleep(0.01)
                m = await metrics(server, read)
        finally:
            poll.cancel()

    assert value(m, "shoal_server_long_polls_open") == 1
    assert value(m, "shoal_server_nodes", state="online") == 2
    assert value(m, "shoal_server_nodes", state="offline") == 0
    assert value(m, "shoal_server_netmap_revision") >= 2
    assert value(m, "shoal_server_registrations_total", result="ok") == 2
    assert value(m, "shoal_server_registrations_total", result="token_malformed") == 1
    assert value(m, "shoal_server_auth_failures_total", code="admin_unauthorized") == 1
    assert value(m, "shoal_server_rejected_requests_total", route="/v1/admin/nodes",
                 code="admin_unauthorized") == 1  # fmt: skip
    register = {"route": "/v1/register"}
    count = value(m, "shoal_server_request_duration_seconds_count", **register)
    assert count == 3
    assert value(m, "shoal_server_request_duration_seconds_bucket", le="+Inf", **register) == 3
    assert value(m, "shoal_server_request_duration_seconds_sum", **register) > 0
    # Long-polls are no latency: a held poll would read as a 25 s request.
    assert not any(
        name.startswith("shoal_server_request_duration") and ("route", "/v1/netmap") in labels
        for name, labels in m
    )


async def test_scanned_paths_share_one_series(server: RunningServer) -> None:
    connector = aiohttp.TCPConnector(ssl=ssl_context(server.ca.ca_pem))
    async with aiohttp.ClientSession(connector=connector) as session:
        for path in ("/wp-login.php", "/.env", "/v1/nope"):
            async with session.get(server.url + path) as resp:
                assert resp.status == 404
    m = await metrics(server, server.admin_token)
    assert value(m, "shoal_server_requests_total", route="unmatched", method="GET",
                 status="404") == 3  # fmt: skip


async def test_metrics_need_an_admin_token(server: RunningServer) -> None:
    for token in (None, "garbage"):
        status, _, text = await scrape(server, token)
        assert status == 401 and "admin_unauthorized" in text


async def test_a_change_pushed_to_streams_is_timed_and_counted(server: RunningServer) -> None:
    """A change reaching two netmap streams: two frames pushed, the fan-out timed once, no
    stream woken; a poll waiting meanwhile is woken instead."""
    async with admin_client(server) as admin:
        read = (await admin.create_admin_token(AdminTokenCreateRequest(scope="read"))).token
    alpha, beta = await join(server, "alpha"), await join(server, "beta")
    since = server.service.registry.revision
    async with (
        node_client(server, alpha.key) as a,
        node_client(server, beta.key) as b,
        contextlib.aclosing(a.watch(since=since, wait=30)) as alphas,
        contextlib.aclosing(b.watch(since=since, wait=30)) as betas,
    ):
        await anext(alphas), await anext(betas)
        await join(server, "gamma")
        await anext(alphas), await anext(betas)
        m = await metrics(server, read)
    assert value(m, "shoal_server_netmap_pushes_total") == 2
    assert value(m, "shoal_server_netmap_wakeups_total") == 0
    assert value(m, "shoal_server_fanout_seconds_count") == 1
    assert value(m, "shoal_server_fanout_seconds_bucket", le="+Inf") == 1
    assert 0 < value(m, "shoal_server_fanout_seconds_sum") < 5
