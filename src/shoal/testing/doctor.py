"""A faked host for `shoal doctor`: `FakeDoctorProbe` reads a `FakeHost` and a small model of
the paths to its peers, the server and the DNS resolvers; `dump()` shows that model.

    host = FakeHost(); ...apply a netmap with a Reconciler...
    probe = FakeDoctorProbe(host, server=ServerProbe(...))
    probe.paths[IPv4Address("100.64.0.2")] = FakePath(up=False)   # UDP blocked to h2
    probe.paths[IPv4Address("100.64.0.3")] = FakePath(mtu=1340)   # black hole above 1340
    host.routing.delete_route("10.42.2.0/24")                     # drift
    report = await run_doctor(view, probe, None)

A peer whose path is up answers echoes up to its `mtu` and its received-bytes counter grows
with each reply, as WireGuard's would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network

from shoal.agent.ping import TooBigForRoute
from shoal.controlclient.probe import ServerProbe
from shoal.dataplane import PeerStats
from shoal.dns.probe import DnsAnswer
from shoal.firewall.drift import Drift
from shoal.hostnet.inspect import LinkState
from shoal.model.keys import PublicKey
from shoal.plan.hostconfig import INTERFACE, DockerNetworkConfig, FirewallConfig
from shoal.testing.fakes import FakeHost

REPLY_MS = 0.5


@dataclass
class FakePath:
    up: bool = True  # False: nothing crosses (UDP blocked, the peer gone)
    mtu: int = 1500  # the largest packet (IP header included) that arrives through the tunnel


class FakeDoctorProbe:
    def __init__(self, host: FakeHost, server: ServerProbe) -> None:
        self.host = host
        self.server_probe = server
        self.paths: dict[IPv4Address, FakePath] = {}
        self.route_mtu: int | None = None  # this host refuses bigger packets (EMSGSIZE)
        self.upstreams: dict[tuple[str, int], bool] = {("192.0.2.2", 53): True}
        self.dns_blocked = False  # the responder does not answer on the mesh IP
        self.tcp_open: set[tuple[IPv4Address, int]] = set()
        self.containers_dns_blocked = False  # port 53 from this host's containers is dropped
        self.stopped: set[str] = set()  # ids of containers of the netmap that do not run

    # -- shaping the fake -------------------------------------------------------------------

    def handshake(
        self, key: PublicKey, at: datetime | None, rx_bytes: int = 0, endpoint: str | None = None
    ) -> None:
        """Set what WireGuard reports of peer `key` (`endpoint`: where it was last seen, when
        not the configured one)."""
        peers = self.host.tunnel.wireguard.links[INTERFACE].peers
        peer = dataclasses.replace(peers[key], last_handshake=at, rx_bytes=rx_bytes)
        if endpoint is not None:
            peer = dataclasses.replace(peer, endpoint=endpoint)
        peers[key] = peer

    def dump(self) -> str:
        lines = [
            f"path {ip} {'up' if p.up else 'down'} mtu {p.mtu}"
            for ip, p in sorted(self.paths.items())
        ]
        lines += [
            f"upstream {h}:{p} {'up' if ok else 'down'}" for (h, p), ok in self.upstreams.items()
        ]
        lines.append(f"dns {'blocked' if self.dns_blocked else 'answers'}")
        if self.containers_dns_blocked:
            lines.append("dns from containers blocked")
        return "\n".join(lines)

    # -- HostProbe --------------------------------------------------------------------------

    async def link(self, name: str) -> LinkState | None:
        device = self.host.tunnel.wireguard.links.get(name)
        if device is None:
            return None
        kind = "wireguard" if self.host.tunnel.wireguard.flavour == "kernel" else "tun"
        return LinkState(kind=kind, mtu=device.mtu, up=device.up)

    def wireguard_module(self) -> bool:
        return self.host.tunnel.wireguard.flavour == "kernel"

    async def routes(self, dev: str) -> Mapping[IPv4Network, int | None]:
        return {dst: r.mtu for dst, r in self.host.routing.routes.items() if r.dev == dev}

    async def ip_forward(self) -> bool:
        return self.host.routing.forwarding

    async def docker_network(self, cfg: DockerNetworkConfig) -> str | None:
        have = self.host.docker_network.network
        if have is None:
            return "missing"
        return None if have == cfg else f"has subnet {have.subnet} mtu {have.mtu}"

    async def firewall(self, cfg: FirewallConfig) -> Drift:
        have = self.host.firewall.config
        if have is None:
            return Drift(
                table=("firewall: table inet shoal created",),
                docker=("firewall: filter DOCKER-USER -> SHOAL-FORWARD jump added",),
            )
        if have != cfg:
            return Drift(table=(f"firewall: inet shoal + for {cfg.local_subnet}",), docker=())
        return Drift(table=(), docker=())

    async def dns(self, server: str, port: int, name: str) -> DnsAnswer:
        if (server, port) in self.upstreams:
            ok = self.upstreams[(server, port)]
            return DnsAnswer("NXDOMAIN") if ok else DnsAnswer(None, "no answer within 2s")
        listening = self.host.dns.address
        if self.dns_blocked or listening is None or str(listening) != server:
            return DnsAnswer(None, "no answer within 2s")
        return DnsAnswer("NOERROR")

    async def container_dns(self, container_id: str, name: str) -> DnsAnswer | None:
        """Docker's resolver forwards to the responder, which answers from its netmap."""
        if container_id in self.stopped:
            return None
        config = self.host.dns.config
        if self.dns_blocked or self.containers_dns_blocked or config is None:
            return DnsAnswer(None, "no answer within 2s")
        nm = config.netmap
        found = [str(c.ip) for c in nm.containers if c.name == name]
        found += [str(n.mesh_ip) for n in (nm.self_node, *nm.peers) if f"{n.name}.shoal" == name]
        return DnsAnswer("NOERROR", addresses=tuple(found)) if found else DnsAnswer("NXDOMAIN")

    def dns_upstreams(self, exclude: IPv4Address) -> Sequence[tuple[str, int]]:
        return [up for up in self.upstreams if up[0] != str(exclude)]

    async def server(self) -> ServerProbe:
        return self.server_probe

    async def peer_stats(self) -> Sequence[PeerStats]:
        return await self.host.tunnel.stats()

    async def echo(
        self, dst: IPv4Address, size: int | None, timeout: float, dont_fragment: bool
    ) -> float | None:
        if size is not None and self.route_mtu is not None and size > self.route_mtu:
            raise TooBigForRoute(f"{size} > {self.route_mtu}")
        path = self.paths.get(dst, FakePath())
        if INTERFACE not in self.host.tunnel.wireguard.links:
            return None  # no interface: nothing routes into the mesh
        if not path.up or (size is not None and size > path.mtu):
            return None
        self._received(dst, size or 64)
        return REPLY_MS

    async def tcp(self, dst: IPv4Address, port: int, timeout: float) -> str | None:
        return None if (dst, port) in self.tcp_open else "Connection refused"

    def _received(self, dst: IPv4Address, size: int) -> None:
        peers = self.host.tunnel.wireguard.links[INTERFACE].peers
        for key, peer in peers.items():
            if any(dst in net for net in peer.allowed_ips):
                peers[key] = dataclasses.replace(peer, rx_bytes=peer.rx_bytes + size + 32)
