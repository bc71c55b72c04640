"""`POST /v1/relay` on the real server: both nodes of a pair get their side's port; a node
gets no relay to itself or to a node that does not exist; strangers get nothing."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from shoal.control.app import RunningServer
from shoal.controlclient.errors import ControlRejected, CredentialRejected
from shoal.model.api import RegisterRequest
from shoal.model.keys import PrivateKey
from shoal.model.netmap import Endpoint
from tests.control.servers import join, node_client


async def test_a_pair_gets_its_two_ports(server: RunningServer) -> None:
    alpha, beta = await join(server, "alpha"), await join(server, "beta")
    public = Endpoint(host=IPv4Address("192.0.2.7"), port=51820, kind="symmetric")
    async with node_client(server, alpha.key) as a:
        await a.register(
            RegisterRequest(name="alpha", public_key=alpha.key.public_key(), endpoints=(public,))
        )
        grant_a = await a.relay(beta.node_id)
        assert grant_a == await a.relay(beta.node_id)  # asked again: the same port
    async with node_client(server, beta.key) as b:
        grant_b = await b.relay(alpha.node_id)
    assert grant_a.peer == beta.node_id and grant_b.peer == alpha.node_id
    assert grant_a.port != grant_b.port


async def test_no_relay_to_itself_or_to_nobody(server: RunningServer) -> None:
    alpha = await join(server, "alpha")
    async with node_client(server, alpha.key) as a:
        for peer in (alpha.node_id, "n000000000000"):
            with pytest.raises(ControlRejected, match="no peer node"):
                await a.relay(peer)


async def test_a_key_that_is_no_node_gets_nothing(server: RunningServer) -> None:
    alpha = await join(server, "alpha")
    async with node_client(server, PrivateKey.generate()) as stranger:
        with pytest.raises(CredentialRejected):
            await stranger.relay(alpha.node_id)
