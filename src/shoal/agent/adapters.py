"""The real host behind the reconciler: each package's entry point as an `Adapter`.

Thin on purpose: the logic lives in the packages (`hostnet`, `firewall`, `docker`, `dns`); this
module only gives them the one shape the reconciler drives, `apply(part) -> changed` and
`teardown() -> removed`. Tests hand the reconciler `shoal.testing` fakes instead.
"""

from __future__ import annotations

import logging

from shoal import firewall, hostnet
from shoal.agent.meshdns import DNS_PORT as DNS_PORT  # the doctor's probe asks it there
from shoal.agent.meshdns import MeshDns
from shoal.agent.reconciler import Adapters
from shoal.dataplane import DataPlane
from shoal.dockerhost import DockerHost
from shoal.plan.hostconfig import (
    BRIDGE,
    DOCKER_NETWORK,
    DockerNetworkConfig,
    FirewallConfig,
    RoutingConfig,
)

log = logging.getLogger(__name__)


class HostRouting:
    """IPv4 forwarding when planned, and exactly the planned routes on the mesh interface."""

    async def apply(self, cfg: RoutingConfig) -> bool:
        # Never turned off: Docker or the operator may need it for their own reasons.
        changed = hostnet.ensure_ip_forward() if cfg.forward else False
        # The mesh interface is shoal's own: every non-connected route on it is ours.
        changed |= await hostnet.sync_routes(cfg.device, cfg.routes)
        return changed

    async def teardown(self) -> bool:
        # Routes go with the interface; forwarding stays on (Docker turned it on first).
        return False


class IptablesFirewall:
    """shoal's nftables table and iptables chains (`shoal.firewall`)."""

    async def apply(self, cfg: FirewallConfig) -> bool:
        return await firewall.apply(cfg)

    async def teardown(self) -> bool:
        return await firewall.teardown()


class DockerNetwork:
    """The `shoal` bridge network; kept at teardown while containers are attached."""

    def __init__(self, docker: DockerHost, name: str = DOCKER_NETWORK, bridge: str = BRIDGE):
        self.docker = docker
        self.name = name
        self.bridge = bridge
        self._kept_for: tuple[str, ...] = ()

    @property
    def kept_for(self) -> tuple[str, ...]:
        return self._kept_for

    async def apply(self, cfg: DockerNetworkConfig | None) -> bool:
        return False if cfg is None else await self.docker.ensure_network(cfg)

    async def teardown(self) -> bool:
        result = await self.docker.remove_network(self.name)
        self._kept_for = result.attached
        if result.removed and await hostnet.link_exists(self.bridge):
            # Docker removes its bridge with the network; a leftover means a crashed dockerd.
            await hostnet.delete_link(self.bridge)
        return result.removed


class NoDockerNetwork:
    """The Docker network of a host without Docker (`shoal up --no-docker`): there is none."""

    @property
    def kept_for(self) -> tuple[str, ...]:
        return ()

    async def apply(self, cfg: DockerNetworkConfig | None) -> bool:
        return False

    async def teardown(self) -> bool:
        return False


def host_adapters(
    dataplane: DataPlane, docker: DockerHost | None, dns: MeshDns | None = None
) -> Adapters:
    """The adapters of this host: the data plane picked at start, the resolver if it already
    answers (`answer_from_cache`), and the rest (no Docker network where `docker` is None: a
    host without Docker)."""
    return Adapters(
        tunnel=dataplane,
        routing=HostRouting(),
        docker_network=NoDockerNetwork() if docker is None else DockerNetwork(docker),
        dns=dns or MeshDns(),
        firewall=IptablesFirewall(),
    )
