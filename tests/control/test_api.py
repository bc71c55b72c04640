"""The HTTP API end to end: the real aiohttp app over TLS on 127.0.0.1, the real client."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import aiohttp
import pytest

from shoal.control.app import RunningServer
from shoal.control.errors import ServerConfigError
from shoal.controlclient.client import ControlClient
from shoal.controlclient.errors import ControlRejected, CredentialRejected
from shoal.controlclient.tls import ssl_context
from shoal.model.api import ErrorBody, RegisterRequest, TokenInfo
from shoal.model.keys import PrivateKey
from shoal.model.netmap import Endpoint
from shoal.model.tokens import parse_join_token
from tests.control.servers import (
    FakeClock,
    admin_client,
    join,
    new_token,
    node_client,
    running_server,
)


async def tokens(server: RunningServer) -> dict[str, TokenInfo]:
    async with admin_client(server) as admin:
        return {t.id: t for t in await admin.list_tokens()}


async def node_names(server: RunningServer) -> list[str]:
    async with admin_client(server) as admin:
        return [n.name for n in await admin.list_nodes()]


async def test_join_gives_an_allocation_and_a_full_map(server: RunningServer) -> None:
    token = await new_token(server, tags=("web",))
    first = await join(server, "alpha", token=token)
    assert first.netmap.self_node.mesh_ip == IPv4Address("100.64.0.1")
    assert first.netmap.self_node.subnet == IPv4Network("10.42.0.0/24")
    second = await join(server, "beta")
    assert [p.name for p in second.netmap.peers] == ["alpha"]
    info = (await tokens(server))[parse_join_token(token).id]
    assert info.used_at is not None and info.tags == ("web",)
    async with admin_client(server) as admin:
        nodes = await admin.list_nodes()
    assert [(n.name, str(n.mesh_ip)) for n in nodes] == [
        ("alpha", "100.64.0.1"),
        ("beta", "100.64.0.2"),
    ]


@pytest.mark.parametrize("problem", ["unknown", "expired", "revoked", "used", "malformed"])
async def test_a_bad_token_is_refused_and_nothing_changes(
    server: RunningServer, clock: FakeClock, problem: str
) -> None:
    token = await new_token(server, expires_in_seconds=60)
    tid = parse_join_token(token).id
    if problem == "unknown":
        token = token[:-4] + ("0000" if not token.endswith("0000") else "1111")
    elif problem == "expired":
        clock.advance(61)
    elif problem == "revoked":
        async with admin_client(server) as admin:
            await admin.revoke_token(tid)
    elif problem == "used":
        await join(server, "first", token=token)
    else:
        token = "SHOAL-1-nonsense"
    before = await tokens(server)
    with pytest.raises(ControlRejected) as err:
        await join(server, "intruder", token=token)
    assert err.value.code == f"token_{problem}"
    assert "intruder" not in await node_names(server)
    assert await tokens(server) == before  # not consumed, not changed


async def test_single_use_token_raced_by_two_agents(server: RunningServer) -> None:
    token = await new_token(server)
    results = await asyncio.gather(
        *(join(server, f"h{i}", token=token) for i in range(4)), return_exceptions=True
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, ControlRejected)]
    assert len(winners) == 1 and len(losers) == 3
    assert {e.code for e in losers} == {"token_used"}
    assert len(await node_names(server)) == 1


async def test_pool_conflict_names_the_route_and_keeps_the_token(server: RunningServer) -> None:
    token = await new_token(server)
    key = PrivateKey.generate()
    request = RegisterRequest(
        token=token,
        name="clash",
        public_key=key.public_key(),
        host_prefixes=(IPv4Network("0.0.0.0/0"), IPv4Network("10.42.7.0/24")),
    )
    async with node_client(server, key) as client:
        with pytest.raises(ControlRejected) as err:
            await client.register(request)
    assert err.value.code == "pool_conflict" and "10.42.7.0/24" in err.value.message
    assert (await tokens(server))[parse_join_token(token).id].used_at is None
    fixed = request.model_copy(update={"host_prefixes": (IPv4Network("0.0.0.0/0"),)})
    async with node_client(server, key) as client:
        assert (await client.register(fixed)).netmap.self_node.name == "clash"


async def test_name_taken_by_another_key(server: RunningServer) -> None:
    await join(server, "alpha")
    with pytest.raises(ControlRejected) as err:
        await join(server, "alpha")
    assert err.value.code == "name_taken"


async def test_rejoin_with_the_same_key_keeps_the_allocation(server: RunningServer) -> None:
    key = PrivateKey.generate()
    token = await new_token(server, reusable=True)
    first = await join(server, "alpha", token=token, key=key)
    await join(server, "beta", token=token)
    # A retry with the token it already used, and a join again with no token at all: the
    # signature proves the key, and the key is the node.
    again = await join(server, "alpha", token=token, key=key)
    renamed = await join(server, "alpha-2", key=key, with_token=False)
    for later in (again, renamed):
        assert later.node_id == first.node_id
        assert later.netmap.self_node.mesh_ip == first.netmap.self_node.mesh_ip
        assert later.netmap.self_node.subnet == first.netmap.self_node.subnet
    assert renamed.netmap.self_node.name == "alpha-2"
    assert (await tokens(server))[parse_join_token(token).id].uses == 2  # rejoins use none


async def test_a_used_single_use_token_may_be_retried_by_its_node(server: RunningServer) -> None:
    key = PrivateKey.generate()
    token = await new_token(server)
    first = await join(server, "alpha", token=token, key=key)
    assert (await join(server, "alpha", token=token, key=key)).node_id == first.node_id


async def test_long_poll_wakes_when_another_node_joins(server: RunningServer) -> None:
    alpha = await join(server, "alpha")
    async with node_client(server, alpha.key) as client:
        poll = asyncio.create_task(client.poll(since=alpha.netmap.revision, wait=30))
        beta = await join(server, "beta")
        update = await poll
    assert update.kind == "delta"
    assert [p.id for p in update.peers_changed] == [beta.node_id]
    assert alpha.netmap.apply(update).peer(beta.node_id) is not None


async def test_poll_none_endpoints_leave(server: RunningServer) -> None:
    alpha = await join(server, "alpha")
    beta = await join(server, "beta")
    async with node_client(server, alpha.key) as a:
        assert (await a.poll(since=beta.netmap.revision, wait=0)).kind == "none"
        full = await a.poll(since=0, wait=0)
        assert full.kind == "full"
    endpoint = Endpoint(host=IPv4Address("192.0.2.7"), port=51820)
    async with node_client(server, beta.key) as b:
        await b.register(
            RegisterRequest(name="beta", public_key=beta.key.public_key(), endpoints=(endpoint,))
        )
    async with node_client(server, alpha.key) as a:
        delta = await a.poll(since=full.revision, wait=0)
        assert delta.peers_changed[0].endpoints == (endpoint,)
        await a.leave()
        with pytest.raises(CredentialRejected):
            await a.poll(since=0, wait=0)
    assert await node_names(server) == ["beta"]
    async with node_client(server, beta.key) as b:
        assert (await b.poll(since=delta.revision, wait=0)).peers_removed == (alpha.node_id,)


async def test_admin_removes_a_node_and_its_poll_is_rejected(server: RunningServer) -> None:
    alpha = await join(server, "alpha")
    async with node_client(server, alpha.key) as a:
        poll = asyncio.create_task(a.poll(since=alpha.netmap.revision, wait=30))
        async with admin_client(server) as admin:
            await admin.remove_node("alpha")
            with pytest.raises(ControlRejected) as err:
                await admin.remove_node("alpha")
            assert err.value.code == "not_found"
        with pytest.raises(CredentialRejected):
            await poll


async def test_online_and_last_seen(server: RunningServer, clock: FakeClock) -> None:
    alpha = await join(server, "alpha")
    async with admin_client(server) as admin:
        assert (await admin.list_nodes())[0].online
        clock.advance(16)
        assert not (await admin.list_nodes())[0].online
        async with node_client(server, alpha.key) as a:
            await a.poll(since=0, wait=0)
        node = (await admin.list_nodes())[0]
        assert node.online and node.last_seen == clock.now


async def test_admin_token_is_required(server: RunningServer) -> None:
    for credential in (None, "SHOAL-ADMIN-1-" + "0" * 64 + "-" + "0" * 32, "garbage"):
        async with ControlClient(server.url, server.ca.ca_pem, credential) as client:
            with pytest.raises(ControlRejected) as err:
                await client.list_nodes()
            assert err.value.code == "admin_unauthorized"


async def raw(server: RunningServer, method: str, path: str, data: bytes = b"") -> tuple[int, str]:
    connector = aiohttp.TCPConnector(ssl=ssl_context(server.ca.ca_pem))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(method, server.url + path, data=data) as resp,
    ):
        return resp.status, await resp.text()


@pytest.mark.parametrize(
    ("method", "path", "data", "status", "code"),
    [
        ("POST", "/v1/register", b"{not json", 401, "signature_invalid"),
        ("POST", "/v1/register", b"x" * 100_000, 413, "payload_too_large"),
        ("GET", "/v1/nope", b"", 404, "not_found"),
        ("PUT", "/v1/register", b"", 405, "method_not_allowed"),
        ("GET", "/v1/netmap", b"", 401, "signature_invalid"),
    ],
)
async def test_bad_requests_get_json_errors(
    server: RunningServer, method: str, path: str, data: bytes, status: int, code: str
) -> None:
    got_status, text = await raw(server, method, path, data)
    assert got_status == status
    body = ErrorBody.model_validate_json(text)
    assert body.code == code and "Traceback" not in body.message


async def test_ca_is_served_without_auth(server: RunningServer) -> None:
    status, text = await raw(server, "GET", "/v1/ca")
    assert status == 200 and text.encode() == server.ca.ca_pem


async def test_state_survives_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "server"
    async with running_server(data) as server:
        alpha = await join(server, "alpha")
        fingerprint, admin_token = server.ca.fingerprint, server.admin_token
    async with running_server(data) as server:
        assert server.ca.fingerprint == fingerprint and server.admin_token == admin_token
        for secret in ("ca.key", "server.key", "admin.token", "node-auth.key"):
            assert (data / secret).stat().st_mode & 0o777 == 0o600
        assert await node_names(server) == ["alpha"]
        async with node_client(server, alpha.key) as a:
            update = await a.poll(since=alpha.netmap.revision, wait=0)
        assert update.kind == "none"


async def test_the_data_dir_is_private_even_when_it_was_not(tmp_path: Path) -> None:
    """Issue 7 finding 9: a pre-created data dir stayed 0755 and shoal.db was 0644. Every
    file the server writes is 0600 in a 0700 dir, also after a start over looser modes."""
    import os
    import stat

    data = tmp_path / "server"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    async with running_server(data) as server:
        await join(server, "alpha")
    for p in data.iterdir():
        os.chmod(p, 0o644)
    async with running_server(data) as server:
        await join(server, "beta")
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data.iterdir()}
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert {"shoal.db", "ca.key", "server.key", "admin.token", "server.json"} <= set(modes)
        assert set(modes.values()) == {0o600}, modes


async def test_one_server_per_data_dir_a_second_is_refused_in_one_line(tmp_path: Path) -> None:
    async with running_server(tmp_path) as first:
        with pytest.raises(ServerConfigError, match="already runs with data dir") as refused:
            async with running_server(tmp_path):
                pass
        assert "\n" not in str(refused.value)
        assert (tmp_path / "server.json").exists()  # the first one's, left alone
        async with admin_client(first) as admin:
            assert await admin.list_tokens() == []  # and still serving
    async with running_server(tmp_path):  # the lock went with the first server
        pass
