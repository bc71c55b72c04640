"""Key rotation on the server: `POST /v1/rotate` over the real app and client. The caller must
hold both keys; the node answers to either key from the announcement until the sweep makes
the rotation final, then only to the new one; every peer learns the switch from a delta."""

from __future__ import annotations

import time

import pytest

from shoal.control.app import RunningServer
from shoal.control.nodeauth import load_or_create_auth_key
from shoal.control.service import DEFAULT_ROTATION_LEAD, ROTATION_FINAL_AFTER
from shoal.controlclient.errors import ControlRejected, CredentialRejected
from shoal.model.api import (
    ROTATE_PROOF_TARGET,
    RotateKeyReply,
    RotateKeyRequest,
    rotate_proof_body,
)
from shoal.model.keys import PrivateKey
from shoal.model.netmap import MapUpdate
from shoal.model.nodeauth import shared_key, sign
from tests.control.servers import FakeClock, Joined, admin_client, join, node_client


async def rotate(server: RunningServer, node: Joined, new: PrivateKey) -> RotateKeyReply:
    async with node_client(server, node.key) as client:
        return await client.rotate(new)


async def post_rotate(server: RunningServer, node: Joined, request: RotateKeyRequest) -> None:
    """A rotation request as built by hand (a forged or missing proof)."""
    async with node_client(server, node.key) as client:
        await client._call_json("POST", "/v1/rotate", body=request)


def proof(server: RunningServer, *, signer: PrivateKey, old: PrivateKey, new: PrivateKey) -> str:
    """A rotation proof made by `signer` over old || new (the real client signs with `new`)."""
    server_key = load_or_create_auth_key(server.config.data_dir).public_key()
    mac_key = shared_key(signer, server_key, signer.public_key(), server_key)
    body = rotate_proof_body(old.public_key(), new.public_key())
    now = int(time.time())
    return sign(mac_key, signer.public_key(), "POST", ROTATE_PROOF_TARGET, body, now).header()


async def netmap_of(
    server: RunningServer, node: Joined, key: PrivateKey | None = None
) -> MapUpdate:
    async with node_client(server, key or node.key) as client:
        return await client.poll(since=0, wait=0)


async def test_rotation_is_announced_to_peers_then_made_final(
    server: RunningServer, clock: FakeClock
) -> None:
    alpha = await join(server, "alpha")
    beta = await join(server, "beta")
    new = PrivateKey.generate()
    reply = await rotate(server, alpha, new)
    assert reply.new_public_key == new.public_key()
    assert reply.switch_at == clock() + DEFAULT_ROTATION_LEAD
    # Beta's map names alpha's next key and the switch time; so does alpha's own.
    seen_by_beta = (await netmap_of(server, beta)).full
    assert seen_by_beta is not None
    peer = seen_by_beta.peers[0]
    assert (peer.public_key, peer.next_key, peer.switch_at) == (
        alpha.key.public_key(),
        new.public_key(),
        reply.switch_at,
    )
    async with admin_client(server) as admin:
        info = {n.name: n for n in await admin.list_nodes()}["alpha"]
    assert (info.next_key, info.switch_at) == (new.public_key(), reply.switch_at)

    # Until the rotation is final the node answers to either key.
    assert (await netmap_of(server, alpha)).kind == "full"
    assert (await netmap_of(server, alpha, new)).kind == "full"
    clock.advance((DEFAULT_ROTATION_LEAD + ROTATION_FINAL_AFTER).total_seconds() - 0.5)
    await server.service.sweep()
    assert (await netmap_of(server, alpha)).kind == "full"  # not final yet

    clock.advance(1)
    await server.service.sweep()
    final = (await netmap_of(server, alpha, new)).full
    assert final is not None
    me = final.self_node
    assert (me.public_key, me.next_key, me.switch_at) == (new.public_key(), None, None)
    with pytest.raises(CredentialRejected):
        await netmap_of(server, alpha)  # the old key: 401


async def test_announcing_the_pending_key_again_returns_the_same_switch(
    server: RunningServer, clock: FakeClock
) -> None:
    alpha = await join(server, "alpha")
    new = PrivateKey.generate()
    first = await rotate(server, alpha, new)
    clock.advance(1)
    assert await rotate(server, alpha, new) == first  # a retry after a lost reply is safe
    with pytest.raises(ControlRejected) as err:
        await rotate(server, alpha, PrivateKey.generate())
    assert err.value.code == "conflict"


async def test_a_rotation_without_a_valid_proof_is_refused(server: RunningServer) -> None:
    alpha = await join(server, "alpha")
    new = PrivateKey.generate()
    other = PrivateKey.generate()
    proofs = {
        "none": "",
        # Signed by some other key than the announced one: proves nothing of the new key.
        "wrong signer": proof(server, signer=other, old=alpha.key, new=new),
        # By the new key, but over another pair (made for another node's rotation).
        "wrong keys": proof(server, signer=new, old=other, new=new),
    }
    for what, text in proofs.items():
        with pytest.raises(ControlRejected) as err:
            await post_rotate(
                server, alpha, RotateKeyRequest(new_public_key=new.public_key(), proof=text)
            )
        assert err.value.code == "signature_invalid", what
    # The same valid proof twice is a replay.
    good = proof(server, signer=new, old=alpha.key, new=new)
    await post_rotate(server, alpha, RotateKeyRequest(new_public_key=new.public_key(), proof=good))
    with pytest.raises(ControlRejected, match="replayed"):
        await post_rotate(
            server, alpha, RotateKeyRequest(new_public_key=new.public_key(), proof=good)
        )


@pytest.mark.parametrize("problem", ["current", "another_node", "revoked"])
async def test_a_new_key_that_is_not_new_is_refused(server: RunningServer, problem: str) -> None:
    alpha = await join(server, "alpha")
    beta = await join(server, "beta")
    if problem == "current":
        new = alpha.key
    elif problem == "another_node":
        new = beta.key
    else:
        async with admin_client(server) as admin:
            await admin.remove_node("beta")
        new = beta.key
    with pytest.raises(ControlRejected):
        await rotate(server, alpha, new)
    async with admin_client(server) as admin:
        assert all(n.next_key is None for n in await admin.list_nodes())


async def test_removing_a_rotating_node_revokes_both_keys(server: RunningServer) -> None:
    alpha = await join(server, "alpha")
    new = PrivateKey.generate()
    await rotate(server, alpha, new)
    async with admin_client(server) as admin:
        await admin.remove_node("alpha")
    registry = server.service.registry
    assert registry.is_revoked(alpha.key.public_key()) and registry.is_revoked(new.public_key())
