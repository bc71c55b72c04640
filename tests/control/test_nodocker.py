"""Hosts without Docker through the real API: a mesh IP and no container subnet (two of them
do not collide on it), seen so by peers; they have no containers to report."""

from __future__ import annotations

import pytest

from shoal.control.app import RunningServer
from shoal.controlclient.errors import ControlRejected
from shoal.model.api import ContainerReport, ContainersReport, RegisterRequest
from shoal.model.keys import PrivateKey
from tests.control.servers import admin_client, join, new_token, node_client


async def join_bare(server: RunningServer, name: str) -> PrivateKey:
    key = PrivateKey.generate()
    async with node_client(server, key) as client:
        reply = await client.register(
            RegisterRequest(
                token=await new_token(server),
                name=name,
                public_key=key.public_key(),
                container_subnet=False,
            )
        )
    assert reply.netmap.self_node.subnet is None
    return key


async def test_hosts_without_docker_get_a_mesh_ip_and_no_subnet(server: RunningServer) -> None:
    laptop = await join_bare(server, "laptop")
    await join_bare(server, "vm")
    docker = await join(server, "docker")
    assert docker.netmap.self_node.subnet is not None
    peers = {p.name: p for p in docker.netmap.peers}
    assert peers["laptop"].subnet is None and peers["vm"].subnet is None
    assert len({p.mesh_ip for p in peers.values()}) == 2
    async with admin_client(server) as admin:
        assert {n.name: n.subnet for n in await admin.list_nodes()}["laptop"] is None
    # Joining again keeps what it has (no subnet appears on a re-registration).
    async with node_client(server, laptop) as client:
        again = await client.register(
            RegisterRequest(name="laptop", public_key=laptop.public_key())
        )
        assert again.netmap.self_node.subnet is None
        with pytest.raises(ControlRejected) as refused:
            await client.report_containers(
                ContainersReport(
                    containers=(
                        ContainerReport(
                            id="a" * 64, name="web", ip=docker.netmap.self_node.mesh_ip
                        ),
                    )
                )
            )
    assert refused.value.code == "bad_request"
    assert "joined without Docker" in refused.value.message
