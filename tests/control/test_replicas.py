"""Two server replicas in one process on one PostgreSQL database: a change accepted by one
reaches long-polls on the other, allocations and tokens stay right under concurrent
registrations on both, and liveness is judged from what either replica heard."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator
from ipaddress import IPv4Address
from pathlib import Path

import psycopg
import pytest

from shoal.control.app import RunningServer, start_server
from shoal.control.config import load_config
from shoal.controlclient.client import ControlClient
from shoal.controlclient.errors import ControlRejected, ControlUnreachable
from shoal.controlclient.tls import fetch_pinned_ca
from shoal.model.api import (
    ContainerReport,
    ContainersReport,
    PolicySetRequest,
    RegisterRequest,
    ServerKey,
)
from shoal.model.keys import PrivateKey
from shoal.model.nodeauth import parse_header
from tests.control.servers import FakeClock, admin_client, join, new_token, node_client
from tests.control.test_trust import send, server_key, signed

Pair = tuple[RunningServer, RunningServer]


async def _start(data_dir: Path, url: str, clock: FakeClock) -> RunningServer:
    config = load_config(
        listen="127.0.0.1:0", data_dir=data_dir, store=url, no_limits_from="127.0.0.0/8"
    )
    return await start_server(config, clock=clock)


@pytest.fixture
async def replicas(tmp_path: Path, postgres_url: str, clock: FakeClock) -> AsyncIterator[Pair]:
    """Replica A, then B with a copy of A's data dir (its CA, keys and admin token)."""
    a = await _start(tmp_path / "a", postgres_url, clock)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    b = await _start(tmp_path / "b", postgres_url, clock)
    try:
        yield a, b
    finally:
        await b.close()
        await a.close()


async def _converged(pair: Pair) -> None:
    """Until both registries hold the store's revision (each catches up on NOTIFY)."""
    async with asyncio.timeout(10):
        while True:
            current = (await pair[0].store.changes_since(0)).revision
            if all(r.service.registry.revision == current for r in pair):
                return
            await asyncio.sleep(0.02)


async def test_a_change_on_one_replica_wakes_a_long_poll_on_the_other(replicas: Pair) -> None:
    a, b = replicas
    alpha = await join(a, "alpha")
    beta = await join(b, "beta")  # B knows alpha already: it was in the store
    assert [p.name for p in beta.netmap.peers] == ["alpha"]
    await _converged(replicas)
    async with node_client(a, alpha.key) as client:
        since = a.service.registry.revision
        waiting = asyncio.create_task(client.poll(since=since, wait=20))
        async with node_client(b, beta.key) as other:
            web = ContainerReport(id=f"{7:064x}", name="web", ip=beta.netmap.self_node.subnet[2])
            await other.report_containers(ContainersReport(containers=(web,)))
        update = await asyncio.wait_for(waiting, 10)
    assert update.kind == "delta"
    assert [c.name for c in update.containers_changed] == ["web"]
    # A node registered on B polls A and gets its map there: any replica serves any agent.
    async with node_client(a, beta.key) as client:
        full = await client.poll(since=0, wait=0)
    assert full.full is not None and [c.name for c in full.full.containers] == ["web"]


async def test_a_stream_on_one_replica_carries_a_change_made_on_the_other_and_moves_on(
    tmp_path: Path, postgres_url: str, clock: FakeClock
) -> None:
    """The netmap stream across replicas: a change made through B reaches a stream held on A
    (NOTIFY); A shutting down ends it, and the next one opens on B from the same revision."""
    a = await _start(tmp_path / "a", postgres_url, clock)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    b = await _start(tmp_path / "b", postgres_url, clock)
    try:
        alpha = await join(a, "alpha")
        await _converged((a, b))
        async with ControlClient(f"{a.url},{b.url}", a.ca.ca_pem, node_key=alpha.key) as client:
            updates = client.watch(since=a.service.registry.revision, wait=30)
            assert (await anext(updates)).kind == "none"
            await join(b, "beta")
            update = await asyncio.wait_for(anext(updates), 10)
            assert [p.name for p in update.peers_changed] == ["beta"]
            await a.close()  # replica A goes: its streams end
            with pytest.raises(StopAsyncIteration):
                await anext(updates)
            async with contextlib.aclosing(client.watch(since=update.revision, wait=30)) as moved:
                assert (await anext(moved)).kind == "none"  # resumed: nothing re-sent
            assert client.server_url == b.url
    finally:
        await b.close()


SINGLES = 100  # single-use tokens, each offered to both replicas at once: 200 registrations


async def test_concurrent_registrations_on_both_replicas_stay_unique(replicas: Pair) -> None:
    a, b = replicas
    singles = [await new_token(a) for _ in range(SINGLES)]
    limited = await new_token(a, reusable=True, uses=4)

    async def register(server: RunningServer, name: str, token: str) -> object:
        key = PrivateKey.generate()
        try:
            async with node_client(server, key) as client:
                return await client.register(
                    RegisterRequest(token=token, name=name, public_key=key.public_key())
                )
        except Exception as exc:  # the refusals are what is counted
            return exc

    attempts = [register((a, b)[i % 2], f"s{i}", t) for i, t in enumerate(singles)]
    # Each single-use token offered to both replicas at once: one use each.
    attempts += [register((b, a)[i % 2], f"twice{i}", t) for i, t in enumerate(singles)]
    attempts += [register((a, b)[i % 2], f"l{i}", limited) for i in range(10)]
    results = await asyncio.gather(*attempts)
    refused = [r for r in results if isinstance(r, Exception)]
    # Refused: the token was used up. On a loaded machine a client may also stop waiting
    # (its request timeout) for a registration that is done or not, as an agent would.
    gave_up = [r for r in refused if isinstance(r, ControlUnreachable)]
    assert all(
        isinstance(r, ControlRejected) and r.code == "token_used"
        for r in refused
        if r not in gave_up
    ), [str(r) for r in refused]
    await _converged(replicas)
    tokens = [t for t in await a.store.list_tokens() if t.scope is None]
    assert all(t.uses <= (t.max_uses or 0) for t in tokens)
    for server in replicas:
        nodes = server.service.registry.nodes()
        assert len(nodes) == sum(t.uses for t in tokens)  # one node per use, no more
        assert len(nodes) == SINGLES + 4 or gave_up
        assert len({n.mesh_ip for n in nodes}) == len({n.subnet for n in nodes}) == len(nodes)
    assert [n.mesh_ip for n in a.service.registry.nodes()] == [
        n.mesh_ip for n in b.service.registry.nodes()
    ]
    assert all(n.mesh_ip != IPv4Address("100.64.0.0") for n in a.service.registry.nodes())


async def test_a_node_heard_by_one_replica_stays_online_on_the_other(
    replicas: Pair, clock: FakeClock
) -> None:
    a, b = replicas
    alpha = await join(a, "alpha")
    await _converged(replicas)
    clock.advance(6)
    async with node_client(a, alpha.key) as client:
        await client.poll(since=0, wait=0)  # A hears from alpha ...
    await a.service.sweep()  # ... and writes it down
    clock.advance(12)  # 18 s after the join, 12 s after A heard from it: within 15 s
    await b.service.sweep()
    assert b.service.registry.online(alpha.node_id)
    clock.advance(20)  # now nobody has heard from it for too long
    await b.service.sweep()
    assert not b.service.registry.online(alpha.node_id)


async def test_an_agent_fails_over_to_the_next_replica_and_resumes_from_its_revision(
    tmp_path: Path, postgres_url: str, clock: FakeClock
) -> None:
    a = await _start(tmp_path / "a", postgres_url, clock)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    b = await _start(tmp_path / "b", postgres_url, clock)
    try:
        alpha = await join(a, "alpha")
        async with ControlClient(f"{a.url},{b.url}", a.ca.ca_pem, node_key=alpha.key) as client:
            first = await client.poll(since=0, wait=0)
            assert client.server_url == a.url
            await a.close()  # replica A dies
            assert (await client.poll(since=first.revision, wait=0)).kind == "none"
            assert client.server_url == b.url  # answered by B, and stays there
            await join(b, "beta")
            update = await client.poll(since=first.revision, wait=5)
            assert update.kind == "delta" and [p.name for p in update.peers_changed] == ["beta"]
        # A dead first URL costs one refused connection, not the join.
        dead_first = f"https://127.0.0.1:1,{b.url}"
        async with ControlClient(dead_first, b.ca.ca_pem, node_key=alpha.key) as client:
            assert (await client.poll(since=0, wait=0)).kind == "full"
        assert await fetch_pinned_ca(dead_first, b.ca.fingerprint) == b.ca.ca_pem  # a join
    finally:
        await b.close()


async def test_replicas_reconnect_after_the_database_dropped_their_connections(
    replicas: Pair, postgres_url: str
) -> None:
    """What a PostgreSQL restart does to the replicas: every connection gone. Writes work
    again at once and changes still reach the other replica's long-polls."""
    a, b = replicas
    alpha = await join(a, "alpha")
    await _converged(replicas)
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    async with node_client(a, alpha.key) as client:
        since = (await client.poll(since=0, wait=0)).revision
        waiting = asyncio.create_task(client.poll(since=since, wait=20))
        await join(b, "beta")
        update = await asyncio.wait_for(waiting, 15)
    assert [p.name for p in update.peers_changed] == ["beta"]


async def test_a_node_just_registered_on_one_replica_is_known_to_the_other_at_once(
    replicas: Pair,
) -> None:
    """Before B has heard the announcement: an unknown key makes B catch up, never refuse."""
    a, b = replicas
    assert b.follower is not None
    b.follower.cancel()  # B hears no announcements from now on
    alpha = await join(a, "alpha")
    async with node_client(b, alpha.key) as client:
        assert (await client.poll(since=0, wait=0)).kind == "full"
    gamma = await join(a, "gamma")
    again = await join(b, "gamma", key=gamma.key, with_token=False)  # no token: known key
    assert again.node_id == gamma.node_id


async def test_a_policy_set_through_one_replica_reaches_a_long_poll_on_the_other(
    replicas: Pair,
) -> None:
    a, b = replicas
    beta = await join(b, "beta")
    await _converged(replicas)
    async with node_client(b, beta.key) as client:
        waiting = asyncio.create_task(client.poll(since=b.service.registry.revision, wait=20))
        async with admin_client(a) as admin:
            source = "rules:\n  - {from: service:web, to: service:db, ports: 5432}\n"
            await admin.set_policy(PolicySetRequest(file="p.yaml", source=source))
        update = await asyncio.wait_for(waiting, 10)
    assert update.kind == "delta" and update.policy is not None
    assert update.policy.revision == 1 and update.policy.file == "p.yaml"
    # B serves it to a full map too, and numbers the next policy after A's.
    async with node_client(b, beta.key) as client:
        full = await client.poll(since=0, wait=0)
    assert full.full is not None and full.full.policy == update.policy
    async with admin_client(b) as admin:
        info = await admin.set_policy(PolicySetRequest(file="q.yaml", source="rules: []\n"))
    assert info.revision == 2


async def test_a_key_rotation_announced_on_one_replica_reaches_the_other(replicas: Pair) -> None:
    a, b = replicas
    alpha = await join(a, "alpha")
    beta = await join(b, "beta")
    await _converged(replicas)
    new_key = PrivateKey.generate()
    async with node_client(b, beta.key) as client:
        waiting = asyncio.create_task(client.poll(since=b.service.registry.revision, wait=20))
        async with node_client(a, alpha.key) as rotating:
            rotation = await rotating.rotate(new_key)
        update = await asyncio.wait_for(waiting, 10)
    assert update.kind == "delta"
    (peer,) = update.peers_changed
    assert (peer.name, peer.next_key) == ("alpha", new_key.public_key())
    assert peer.switch_at == rotation.switch_at
    # Once the host switched, B knows it by its next key as well.
    async with node_client(b, new_key) as client:
        full = await client.poll(since=0, wait=0)
    assert full.full is not None and full.full.self_node.name == "alpha"


async def test_a_signed_request_replayed_to_the_other_replica_is_refused(replicas: Pair) -> None:
    a, b = replicas
    alpha = await join(a, "alpha")
    target = "/v1/netmap?since=0&wait=0"
    header = signed(a, alpha.key, "GET", target, b"", time.time())
    assert await send(a, "GET", target, b"", header) == (200, "")
    assert await send(b, "GET", target, b"", header) == (401, "signature_invalid")
    # Replayed to B first, then to A: whichever replica sees it first wins, once.
    header = signed(a, alpha.key, "GET", target, b"", time.time())
    assert await send(b, "GET", target, b"", header) == (200, "")
    assert await send(a, "GET", target, b"", header) == (401, "signature_invalid")


async def test_a_replica_dying_mid_request_does_not_use_up_the_agents_next_attempt(
    replicas: Pair,
) -> None:
    """A replica that claimed the request's signature and died before answering: the agent
    sends the request to the next replica signed anew, and is served there."""
    a, b = replicas
    alpha = await join(a, "alpha")
    seen: list[str] = []

    async def take_and_die(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        fields = dict(line.partition(": ")[::2] for line in head.splitlines()[1:] if line)
        auth = {k.lower(): v for k, v in fields.items()}.get("authorization")
        if auth is None:  # GET /v1/key: answered, so that the signed poll comes here too
            key = ServerKey(public_key=server_key(a)).model_dump_json().encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                + f"Content-Length: {len(key)}\r\n\r\n".encode()
                + key
            )
        else:
            seen.append(auth)
            sig = parse_header(auth)
            await a.store.claim_signature(sig.mac, sig.timestamp + 300, int(time.time()))
        await writer.drain()
        writer.close()

    dying = await asyncio.start_server(take_and_die, "127.0.0.1", 0, ssl=a.ca.server_ssl_context())
    port = dying.sockets[0].getsockname()[1]
    try:
        urls = f"https://127.0.0.1:{port},{b.url}"
        async with ControlClient(urls, a.ca.ca_pem, node_key=alpha.key) as client:
            update = await client.poll(since=0, wait=0)
            assert update.kind == "full" and client.server_url == b.url
    finally:
        dying.close()
    assert len(set(seen)) == 1  # (aiohttp may resend an idempotent request once)


async def test_a_registration_retried_on_the_other_replica_is_the_same_node(
    replicas: Pair,
) -> None:
    """A replica that committed a registration and died before its reply left: the agent
    sends it again to the other replica (same key, same single-use token) and is the node
    the first one made, once, with the token used once."""
    a, b = replicas
    token = await new_token(a)
    key = PrivateKey.generate()
    request = RegisterRequest(token=token, name="alpha", public_key=key.public_key())
    async with node_client(a, key) as client:
        lost = await client.register(request)  # committed; say its reply never arrived
    async with node_client(b, key) as client:
        again = await client.register(request)
    assert again.netmap.self_node == lost.netmap.self_node
    await _converged(replicas)
    for server in replicas:
        assert [n.name for n in server.service.registry.nodes()] == ["alpha"]
    async with admin_client(b) as admin:
        (info,) = [t for t in await admin.list_tokens() if t.max_uses == 1]
    assert info.uses == 1
