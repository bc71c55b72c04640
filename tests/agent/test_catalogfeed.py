"""The agent's catalog feed and its read-only socket: long-polls wake on a change, not on a
netmap that leaves the catalog as it was; bad queries are 400s; the CLI's client reads it."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from ipaddress import IPv4Address
from pathlib import Path

from shoal.agent.catalogfeed import CatalogFeed
from shoal.agent.localapi import INDEX_HEADER, serve_catalog
from shoal.agent.localclient import fetch_catalog
from shoal.model.netmap import Container, NetworkMap
from shoal.testing.builders import netmap


def with_cache(revision: int, health: str = "none") -> NetworkMap:
    cache = Container.model_validate(
        {"id": "c1", "node_id": "n2", "name": "cache", "ip": IPv4Address("10.42.2.2"),
         "health": health}
    )  # fmt: skip
    return netmap(1, [2], revision=revision).model_copy(update={"containers": (cache,)})


async def test_a_waiter_wakes_on_a_change_and_not_on_an_unchanged_catalog() -> None:
    feed = CatalogFeed(with_cache(3))
    assert feed.catalog.index == 3
    waiter = asyncio.create_task(feed.wait(3, timeout=30))
    await asyncio.sleep(0)  # the waiter blocks on the current event
    assert feed.update(with_cache(4)) is False  # same services: nobody is woken
    await asyncio.sleep(0)
    assert not waiter.done()
    assert feed.update(with_cache(5, health="healthy")) is True
    woken = await asyncio.wait_for(waiter, 1)
    assert woken.index == 5 and woken.services[0].instances[0].health == "healthy"


async def test_an_old_index_answers_at_once_and_zero_wait_does_not_block() -> None:
    feed = CatalogFeed(with_cache(3))
    assert (await feed.wait(2, timeout=30)).index == 3
    assert (await feed.wait(3, timeout=0)).index == 3


def request(sock: Path, path: str, method: str = "GET") -> tuple[int, dict[str, str], object]:
    """One blocking HTTP request over the unix socket (call it in a thread)."""
    conn = http.client.HTTPConnection("agent", timeout=5)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(sock))
    conn.sock = s
    try:
        conn.request(method, path)
        response = conn.getresponse()
        body = response.read()
        if response.headers.get_content_type() != "application/json":
            return response.status, dict(response.headers), body.decode()
        return response.status, dict(response.headers), json.loads(body)
    finally:
        conn.close()


async def test_the_socket_is_read_only_for_everyone_and_refuses_bad_queries(
    tmp_path: Path,
) -> None:
    feed = CatalogFeed(with_cache(3))
    sock = tmp_path / "catalog.sock"
    runner = await serve_catalog(sock, feed)
    try:
        assert sock.stat().st_mode & 0o777 == 0o666
        status, headers, body = await asyncio.to_thread(request, sock, "/v1/catalog/cache")
        assert status == 200 and headers[INDEX_HEADER] == "3"
        assert isinstance(body, list) and body[0]["name"] == "cache"
        for bad in ("index=x", "index=-1", "wait=nan", "wait=-3"):
            status, _, body = await asyncio.to_thread(request, sock, f"/v1/catalog?{bad}")
            assert status == 400, bad
            assert isinstance(body, dict) and body["code"] == "bad_request"
        status, _, _ = await asyncio.to_thread(request, sock, "/v1/catalog/nothing")
        assert status == 404
        # POST and friends do not exist: the socket only reads.
        status, _, _ = await asyncio.to_thread(request, sock, "/v1/catalog", "POST")
        assert status == 405
    finally:
        await runner.cleanup()


async def test_the_clients_long_poll_returns_the_next_catalog(tmp_path: Path) -> None:
    feed = CatalogFeed(with_cache(3))
    sock = tmp_path / "catalog.sock"
    runner = await serve_catalog(sock, feed)
    try:
        assert (await asyncio.to_thread(fetch_catalog, sock)).index == 3
        poll = asyncio.create_task(asyncio.to_thread(fetch_catalog, sock, 3, 30.0))
        # Blocked or not yet arrived, the poll answers the catalog after this change: an index
        # above the one asked for returns at once (see the feed's own test for the blocking).
        feed.update(with_cache(9, health="unhealthy"))
        assert (await asyncio.wait_for(poll, 10)).index == 9
    finally:
        await runner.cleanup()
