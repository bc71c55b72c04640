"""The real host behind `shoal doctor` (`doctor.HostProbe`): each package's read-only view.

Thin on purpose, like `adapters`: the verdicts live in `doctor`, the reading in the packages
(`hostnet.inspect`, `firewall.drift`, `docker`, `dns.probe`, `controlclient.probe`).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING

from shoal.agent.adapters import DNS_PORT
from shoal.agent.doctor import AgentView, run_doctor
from shoal.agent.ping import ping_once
from shoal.controlclient.probe import ServerProbe, probe_server
from shoal.dataplane import DataPlane, PeerStats
from shoal.dns import upstreams_from_resolv_conf
from shoal.dns.probe import DnsAnswer, ask, ask_from
from shoal.dockerhost import DockerHost
from shoal.firewall.drift import Drift, drift
from shoal.hostnet import HostNetError
from shoal.hostnet.inspect import LinkState, ip_forward_on, link_state, routes_on
from shoal.model.doctor import DoctorReport
from shoal.plan.hostconfig import DockerNetworkConfig, FirewallConfig, plan_host

WIREGUARD_MODULE = Path("/sys/module/wireguard")

if TYPE_CHECKING:
    from shoal.agent.daemon import Agent


async def diagnose(agent: Agent, target: str | None) -> DoctorReport:
    """Run doctor on the live agent: its state and plan, the real host."""
    netmap = agent.cached.netmap
    view = AgentView(
        name=netmap.self_node.name,
        state=agent.health.state(),
        warnings=agent.health.warnings(),
        subsystems=agent.reconciler.subsystems(),
        netmap=netmap,
        netmap_received_at=agent.cached.received_at,
        plan=plan_host(netmap, agent.private_key, agent.config.listen_port),
        dataplane=agent.adapters.tunnel.name,
        dns_port=DNS_PORT,
        server_url=agent.identity.server_url,
        now=agent.clock.now(),
        paths={str(n.public_key): agent.paths.path(n.public_key) for n in netmap.peers},
    )
    probe = HostDoctorProbe(
        agent.adapters.tunnel,
        agent.docker,
        agent.identity.server_url,
        agent.identity.ca_pem.encode(),
    )
    return await run_doctor(view, probe, target)


class HostDoctorProbe:
    def __init__(
        self, dataplane: DataPlane, docker: DockerHost | None, server_url: str, ca_pem: bytes
    ) -> None:
        self._dataplane = dataplane
        self._docker = docker
        self._server_url = server_url
        self._ca_pem = ca_pem
        # Echoes run in threads at once: each needs its own sequence number.
        self._seq = itertools.count(secrets.randbelow(30000))

    async def link(self, name: str) -> LinkState | None:
        return await link_state(name)

    def wireguard_module(self) -> bool:
        # /sys/module is the kernel's, the same in every network namespace.
        return WIREGUARD_MODULE.exists()

    async def routes(self, dev: str) -> Mapping[IPv4Network, int | None]:
        return await routes_on(dev)

    async def ip_forward(self) -> bool:
        return ip_forward_on()

    async def docker_network(self, cfg: DockerNetworkConfig) -> str | None:
        if self._docker is None:  # never asked: a host without Docker plans no network
            return f"no Docker on this host for network {cfg.name}"
        return await self._docker.network_drift(cfg)

    async def firewall(self, cfg: FirewallConfig) -> Drift:
        return await drift(cfg)

    async def dns(self, server: str, port: int, name: str) -> DnsAnswer:
        return await ask(server, port, name)

    async def container_dns(self, container_id: str, name: str) -> DnsAnswer | None:
        if self._docker is None:  # never asked: a host without Docker has no containers
            return None
        pid = await self._docker.container_pid(container_id)
        return None if pid is None else await ask_from(pid, name)

    def dns_upstreams(self, exclude: IPv4Address) -> Sequence[tuple[str, int]]:
        return upstreams_from_resolv_conf(exclude=(exclude,))

    async def server(self) -> ServerProbe:
        return await probe_server(self._server_url, self._ca_pem)

    async def peer_stats(self) -> Sequence[PeerStats]:
        return await self._dataplane.stats()

    async def echo(
        self, dst: IPv4Address, size: int | None, timeout: float, dont_fragment: bool
    ) -> float | None:
        seq = next(self._seq) & 0xFFFF
        try:
            result = await asyncio.to_thread(ping_once, dst, seq, timeout, size, dont_fragment)
        except OSError as exc:
            raise HostNetError(f"cannot send ICMP to {dst}: {exc}") from exc
        return result.rtt_ms

    async def tcp(self, dst: IPv4Address, port: int, timeout: float) -> str | None:
        return await tcp_connect(dst, port, timeout)


async def tcp_connect(dst: IPv4Address, port: int, timeout: float) -> str | None:
    """None once a TCP connection to dst:port opens, else why not in a few words: "Connection
    refused" (the host answered: nothing listens), or "no answer within 3s" (dropped)."""
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(str(dst), port)
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except OSError as exc:
        # asyncio raises OSError(errno, "Connect call failed (addr)"): its strerror is that
        # text, so the errno's own name ("Connection refused") is what tells the cases apart.
        return os.strerror(exc.errno) if exc.errno else str(exc)
    writer.close()
    return None
