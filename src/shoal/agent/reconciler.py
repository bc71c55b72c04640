"""Desired HostConfig -> actual host state, through the adapters; latest wins.

Each adapter converges its own slice and says whether it changed anything, so a re-apply of an
unchanged config touches nothing (an agent restart drops no packet). The reconciler keeps one
pending slot, never a queue: a burst of netmaps coalesces into one apply of the newest.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from shoal import firewall, hostnet
from shoal.dataplane import DataPlane
from shoal.docker import DockerHost, RemoveResult
from shoal.plan.hostconfig import BRIDGE, DOCKER_NETWORK, INTERFACE, HostConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TeardownReport:
    interface_removed: bool
    firewall_removed: bool
    network: RemoveResult


class Reconciler:
    def __init__(self, dataplane: DataPlane, docker: DockerHost) -> None:
        self.dataplane = dataplane
        self.docker = docker
        self._pending: HostConfig | None = None
        self._wakeup = asyncio.Event()
        # apply and teardown never interleave, and nothing is applied after a teardown: a
        # netmap arriving during `shoal down` must not bring the interface back.
        self._lock = asyncio.Lock()
        self._torn_down = False

    async def apply(self, cfg: HostConfig) -> bool:
        """Converge the host to `cfg`; True when anything had to change."""
        async with self._lock:
            if self._torn_down:
                return False
            return await self._apply(cfg)

    async def _apply(self, cfg: HostConfig) -> bool:
        changed = await self.dataplane.ensure_interface(cfg.interface)
        changed |= await self.dataplane.set_peers(cfg.peers)
        changed |= hostnet.ensure_ip_forward()
        # Routes after peers: a route to a subnet whose peer is not configured yet would
        # black-hole its first packets into the interface with no matching AllowedIPs.
        changed |= await hostnet.sync_routes(cfg.interface.name, cfg.routes)
        changed |= await self.docker.ensure_network(cfg.docker_network)
        changed |= await firewall.apply(cfg.firewall)
        return changed

    def submit(self, cfg: HostConfig) -> None:
        """Hand over the newest desired state; an older pending one is dropped."""
        self._pending = cfg
        self._wakeup.set()

    async def next_pending(self, timeout: float) -> HostConfig | None:
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        except TimeoutError:
            return None
        self._wakeup.clear()
        cfg, self._pending = self._pending, None
        return cfg

    async def teardown(self) -> TeardownReport:
        """Remove everything shoal made on this host; the Docker network stays if in use."""
        async with self._lock:
            self._torn_down = True
            return await self._teardown()

    async def _teardown(self) -> TeardownReport:
        network = await self.docker.remove_network(DOCKER_NETWORK)
        firewall_removed = await firewall.teardown()
        interface_removed = await self.dataplane.teardown(INTERFACE)
        if await hostnet.link_exists(BRIDGE) and network.removed:
            # Docker removes its bridge with the network; a leftover means a crashed dockerd.
            await hostnet.delete_link(BRIDGE)
        return TeardownReport(interface_removed, firewall_removed, network)
