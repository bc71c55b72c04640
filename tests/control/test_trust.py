"""Issue 7's findings against a real server: takeover with a public key, replays, key
revocation, address quarantine, token use limits and expiry, ephemeral nodes."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from shoal.control.app import RunningServer, start_server
from shoal.control.config import load_config
from shoal.controlclient.client import ControlClient
from shoal.controlclient.errors import ControlRejected, CredentialRejected
from shoal.controlclient.tls import ssl_context
from shoal.model.api import (
    AdminTokenCreateRequest,
    ErrorBody,
    RegisterRequest,
    TokenCreateRequest,
)
from shoal.model.keys import PrivateKey, PublicKey
from shoal.model.nodeauth import shared_key, sign
from tests.control.servers import FakeClock, admin_client, join, new_token, node_client


async def send(
    server: RunningServer, method: str, path: str, body: bytes, header: str
) -> tuple[int, str]:
    connector = aiohttp.TCPConnector(ssl=ssl_context(server.ca.ca_pem))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(
            method, server.url + path, data=body or None, headers={"Authorization": header}
        ) as resp,
    ):
        return resp.status, ErrorBody.model_validate_json(await resp.text()).code if (
            resp.status >= 400
        ) else ""


def signed(
    server: RunningServer, key: PrivateKey, method: str, path: str, body: bytes, at: float
) -> str:
    public = server_key(server)
    mac_key = shared_key(key, public, key.public_key(), public)
    return sign(mac_key, key.public_key(), method, path, body, int(at)).header()


def server_key(server: RunningServer) -> PublicKey:
    return PrivateKey.parse((server.config.data_dir / "node-auth.key").read_text()).public_key()


async def test_a_token_and_the_victims_public_key_take_nothing(server: RunningServer) -> None:
    """Finding 1: re-registering as the victim with any valid token and its public key."""
    victim = await join(server, "victim")
    attacker = PrivateKey.generate()
    token = await new_token(server, reusable=True)
    takeover = RegisterRequest(token=token, name="victim", public_key=victim.key.public_key())
    # Signed with the attacker's own key: the signature does not match the key registered.
    async with node_client(server, attacker) as client:
        with pytest.raises(ControlRejected) as err:
            await client.register(takeover)
    assert err.value.code == "signature_invalid"
    # Claiming the victim's key in the header: no MAC without the victim's private key.
    forged = signed(server, attacker, "POST", "/v1/register", b"{}", time.time())
    forged = forged.replace(str(attacker.public_key()), str(victim.key.public_key()))
    assert await send(
        server, "POST", "/v1/register", takeover.model_dump_json().encode(), forged
    ) == (
        401,
        "signature_invalid",
    )
    # ... nor can it leave on the victim's behalf; the victim is untouched.
    leave = signed(server, attacker, "POST", "/v1/leave", b"", time.time())
    leave = leave.replace(str(attacker.public_key()), str(victim.key.public_key()))
    assert await send(server, "POST", "/v1/leave", b"", leave) == (401, "signature_invalid")
    async with node_client(server, victim.key) as client:
        assert (await client.poll(since=0, wait=0)).full is not None


async def test_a_replayed_or_stale_request_is_refused(server: RunningServer) -> None:
    node = await join(server, "alpha")
    header = signed(server, node.key, "GET", "/v1/netmap?since=0&wait=0", b"", time.time())
    assert await send(server, "GET", "/v1/netmap?since=0&wait=0", b"", header) == (200, "")
    assert await send(server, "GET", "/v1/netmap?since=0&wait=0", b"", header) == (
        401,
        "signature_invalid",
    )
    stale = signed(server, node.key, "GET", "/v1/netmap?since=0&wait=0", b"", time.time() - 900)
    assert await send(server, "GET", "/v1/netmap?since=0&wait=0", b"", stale) == (
        401,
        "signature_invalid",
    )
    # A signature for one query does not cover another.
    other = signed(server, node.key, "GET", "/v1/netmap?since=0&wait=0", b"", time.time())
    assert await send(server, "GET", "/v1/netmap?since=1&wait=0", b"", other) == (
        401,
        "signature_invalid",
    )


async def test_a_removed_node_cannot_rejoin_unless_the_operator_allows(
    server: RunningServer,
) -> None:
    """Finding 8: a removed key rejoined with any token."""
    token = await new_token(server, reusable=True)
    alpha = await join(server, "alpha", token=token)
    async with admin_client(server) as admin:
        await admin.remove_node("alpha")
    async with node_client(server, alpha.key) as client:
        with pytest.raises(CredentialRejected):
            await client.poll(since=0, wait=0)
    for fresh in (token, await new_token(server)):
        with pytest.raises(CredentialRejected) as err:
            await join(server, "alpha", token=fresh, key=alpha.key)
        assert err.value.code == "key_revoked" and "shoal down --leave" in err.value.message
    # Removed with --allow-rejoin: the key may come back, with a token.
    beta = await join(server, "beta", token=token)
    async with admin_client(server) as admin:
        await admin.remove_node("beta", allow_rejoin=True)
    with pytest.raises(ControlRejected) as err:
        await join(server, "beta", key=beta.key, with_token=False)
    assert err.value.code == "token_required"
    assert (await join(server, "beta", token=token, key=beta.key)).netmap.self_node.name == "beta"


async def test_a_removed_nodes_addresses_are_quarantined(tmp_path: Path) -> None:
    """Finding 7: a removed node's mesh IP and subnet went at once to the next joiner."""
    clock = FakeClock()
    config = load_config(
        listen="127.0.0.1:0",
        data_dir=tmp_path / "s",
        container_pool="10.42.0.0/23",  # two subnets: the pool runs out fast
        address_quarantine=timedelta(hours=1),
    )
    server = await start_server(config, clock=clock)
    try:
        alpha = await join(server, "alpha")
        async with admin_client(server) as admin:
            await admin.remove_node("alpha")
        beta = await join(server, "beta")
        assert beta.netmap.self_node.mesh_ip != alpha.netmap.self_node.mesh_ip
        assert beta.netmap.self_node.subnet != alpha.netmap.self_node.subnet
        with pytest.raises(ControlRejected) as err:  # only the quarantined subnet is left
            await join(server, "gamma")
        assert err.value.code == "pool_exhausted"
        clock.advance(3601)  # quarantine over, the pool short: the old subnet is reused
        gamma = await join(server, "gamma")
        assert gamma.netmap.self_node.subnet == alpha.netmap.self_node.subnet
    finally:
        await server.close()


async def test_token_uses_default_expiry_and_listing(
    server: RunningServer, clock: FakeClock
) -> None:
    """Finding 6: reusable tokens had no use limit, and tokens no default expiry."""
    token = await new_token(server, reusable=True, uses=2)
    await join(server, "a", token=token)
    await join(server, "b", token=token)
    with pytest.raises(ControlRejected) as err:
        await join(server, "c", token=token)
    assert err.value.code == "token_used" and "limited to 2 uses" in err.value.message
    default = await new_token(server)
    async with admin_client(server) as admin:
        infos = {(t.max_uses, t.uses): t for t in await admin.list_tokens()}
    limited, single = infos[(2, 2)], infos[(1, 0)]
    assert single.expires_at is not None
    assert single.expires_at - single.created_at == timedelta(hours=24)
    assert limited.reusable
    clock.advance(24 * 3600)
    with pytest.raises(ControlRejected) as err:
        await join(server, "d", token=default)
    assert err.value.code == "token_expired"


async def test_ephemeral_nodes_go_once_offline_long_enough(tmp_path: Path) -> None:
    clock = FakeClock()
    config = load_config(
        listen="127.0.0.1:0", data_dir=tmp_path / "s", ephemeral_timeout=timedelta(minutes=5)
    )
    server = await start_server(config, clock=clock)
    try:
        ci = await join(server, "ci-1", token=await new_token(server, ephemeral=True))
        await join(server, "db")
        clock.advance(200)
        async with node_client(server, ci.key) as client:
            await client.poll(since=0, wait=0)
        clock.advance(200)
        await server.service.sweep()  # silent 200 s: stays
        async with admin_client(server) as admin:
            nodes = {n.name: n.ephemeral for n in await admin.list_nodes()}
        assert nodes == {"ci-1": True, "db": False}
        clock.advance(200)
        await server.service.sweep()  # silent 400 s > 5 min: removed; db is never removed
        async with admin_client(server) as admin:
            assert [n.name for n in await admin.list_nodes()] == ["db"]
    finally:
        await server.close()


async def test_scoped_admin_tokens(server: RunningServer, clock: FakeClock) -> None:
    """Finding 8: one global admin secret, never expiring, no scopes."""
    async with admin_client(server) as root:
        read = (await root.create_admin_token(AdminTokenCreateRequest(scope="read"))).token
        full = await root.create_admin_token(
            AdminTokenCreateRequest(scope="admin", expires_in_seconds=3600)
        )
    async with ControlClient(server.url, server.ca.ca_pem, read) as reader:
        assert await reader.list_nodes() == []
        with pytest.raises(ControlRejected) as err:
            await reader.create_token(TokenCreateRequest())
        assert err.value.code == "admin_scope" and "--scope admin" in err.value.message
    async with ControlClient(server.url, server.ca.ca_pem, full.token) as operator:
        join_token = (await operator.create_token(TokenCreateRequest())).token
        listed = {t.id: t.scope for t in await operator.list_admin_tokens()}
        assert listed[full.info.id] == "admin" and len(listed) == 2
        await operator.revoke_admin_token(listed_id(listed, "read"))
    async with ControlClient(server.url, server.ca.ca_pem, read) as reader:
        with pytest.raises(ControlRejected, match="revoked"):
            await reader.list_nodes()
    clock.advance(3601)
    async with ControlClient(server.url, server.ca.ca_pem, full.token) as operator:
        with pytest.raises(ControlRejected, match="expired"):
            await operator.list_nodes()
    # Neither kind of token passes for the other.
    with pytest.raises(ControlRejected) as err:
        await join(server, "sneaky", token=full.token)
    assert err.value.code == "token_malformed"
    async with ControlClient(server.url, server.ca.ca_pem, join_token) as client:
        with pytest.raises(ControlRejected) as err:
            await client.list_nodes()
        assert err.value.code == "admin_unauthorized"
    # The server host's own admin token keeps every right.
    async with admin_client(server) as root:
        assert len(await root.list_admin_tokens()) == 2


def listed_id(listed: dict[str, str], scope: str) -> str:
    return next(tid for tid, s in listed.items() if s == scope)
