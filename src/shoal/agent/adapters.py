"""The real host behind the reconciler: each package's entry point as an `Adapter`.

Thin on purpose: the logic lives in the packages (`hostnet`, `firewall`, `docker`, `dns`); this
module only gives them the one shape the reconciler drives, `apply(part) -> changed` and
`teardown() -> removed`. Tests hand the reconciler `shoal.testing` fakes instead.
"""

from __future__ import annotations

import logging
from ipaddress import IPv4Address

from shoal import firewall, hostnet
from shoal.agent.reconciler import Adapters
from shoal.dataplane import DataPlane
from shoal.dns import DnsServer, DnsStats, RecordTable, upstreams_from_resolv_conf
from shoal.dockerhost import DockerHost
from shoal.plan.hostconfig import (
    BRIDGE,
    DOCKER_NETWORK,
    DnsConfig,
    DockerNetworkConfig,
    FirewallConfig,
    RoutingConfig,
)

log = logging.getLogger(__name__)

DNS_PORT = 53


class HostRouting:
    """IPv4 forwarding, and exactly the planned routes on the mesh interface."""

    async def apply(self, cfg: RoutingConfig) -> bool:
        changed = hostnet.ensure_ip_forward()
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

    async def apply(self, cfg: DockerNetworkConfig) -> bool:
        return await self.docker.ensure_network(cfg)

    async def teardown(self) -> bool:
        result = await self.docker.remove_network(self.name)
        self._kept_for = result.attached
        if result.removed and await hostnet.link_exists(self.bridge):
            # Docker removes its bridge with the network; a leftover means a crashed dockerd.
            await hostnet.delete_link(self.bridge)
        return result.removed


class MeshDns:
    """The service-discovery resolver on the mesh IP, answering from the newest netmap.

    The record table is swapped by reference before anything else, so a new name resolves the
    moment its netmap is applied; the socket is only rebound when the address changes.
    """

    def __init__(self, port: int = DNS_PORT) -> None:
        self.port = port
        self._table: RecordTable | None = None
        self._server: DnsServer | None = None
        self._address: IPv4Address | None = None

    @property
    def stats(self) -> DnsStats | None:
        """The responder's counters since it last (re)bound; None while it does not run."""
        return self._server.stats if self._server is not None else None

    def _resolver(self) -> RecordTable:
        assert self._table is not None, "the server starts after the first table"
        return self._table

    async def apply(self, cfg: DnsConfig) -> bool:
        self._table = RecordTable.from_netmap(cfg.netmap)
        if self._server is not None and self._address == cfg.address:
            return False
        await self.teardown()
        upstreams = upstreams_from_resolv_conf(exclude=(str(cfg.address),))
        server = DnsServer(self._resolver, upstreams)
        await server.start([(str(cfg.address), self.port)])
        self._server, self._address = server, cfg.address
        return True

    async def teardown(self) -> bool:
        if self._server is None:
            return False
        await self._server.close()
        self._server, self._address = None, None
        return True


def host_adapters(dataplane: DataPlane, docker: DockerHost) -> Adapters:
    """The adapters of this host: the data plane picked at start, and the rest."""
    return Adapters(
        tunnel=dataplane,
        routing=HostRouting(),
        docker_network=DockerNetwork(docker),
        dns=MeshDns(),
        firewall=IptablesFirewall(),
    )
