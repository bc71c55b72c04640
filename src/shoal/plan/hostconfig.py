"""Desired host state, computed in pure code from the netmap and local facts.

Each part goes to one adapter (data plane, routes, Docker network, firewall); each adapter
converges its slice of the host to it and reports whether anything changed.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from shoal.model.keys import PrivateKey, PublicKey
from shoal.model.netmap import Frozen, NetworkMap

INTERFACE = "shoal0"
DOCKER_NETWORK = "shoal"
BRIDGE = "shoal-br0"
KEEPALIVE_SECONDS = 25


class InterfaceConfig(Frozen):
    name: str
    private_key: PrivateKey
    listen_port: int
    address: IPv4Interface  # mesh IP with the mesh pool's prefix length
    mtu: int


class PeerConfig(Frozen):
    public_key: PublicKey
    endpoint: str | None  # "ip:port"; the first advertised endpoint
    allowed_ips: tuple[IPv4Network, ...]
    keepalive: int = KEEPALIVE_SECONDS


class RouteConfig(Frozen):
    """A route over the mesh interface, sourced from this host's mesh IP."""

    dst: IPv4Network
    dev: str
    src: IPv4Address
    mtu: int


class DockerNetworkConfig(Frozen):
    name: str
    bridge: str
    subnet: IPv4Network
    gateway: IPv4Address
    mtu: int


class FirewallConfig(Frozen):
    """Forwarding between the mesh interface and the Docker bridge, without NAT inside the mesh."""

    mesh_interface: str
    bridge: str
    local_subnet: IPv4Network
    container_pool: IPv4Network
    mesh_pool: IPv4Network
    # Where this host's service-discovery DNS listens. Containers on the bridge ask whatever
    # resolver Docker gave them; their port-53 traffic is redirected here, so names work with
    # no per-container flag and no change to the daemon's configuration.
    dns_address: IPv4Address | None = None


class HostConfig(Frozen):
    interface: InterfaceConfig
    peers: tuple[PeerConfig, ...]  # sorted by public key
    routes: tuple[RouteConfig, ...]  # sorted by destination
    docker_network: DockerNetworkConfig
    firewall: FirewallConfig


def plan_host(netmap: NetworkMap, private_key: PrivateKey, listen_port: int) -> HostConfig:
    settings = netmap.settings
    me = netmap.self_node
    interface = InterfaceConfig(
        name=INTERFACE,
        private_key=private_key,
        listen_port=listen_port,
        address=settings.mesh_interface(me.mesh_ip),
        mtu=settings.mtu,
    )
    peers = tuple(
        sorted(
            (
                PeerConfig(
                    public_key=peer.public_key,
                    endpoint=str(peer.endpoints[0]) if peer.endpoints else None,
                    allowed_ips=peer.allowed_ips(),
                )
                for peer in netmap.peers
            ),
            key=lambda p: str(p.public_key),
        )
    )
    # Peers' mesh IPs are reached through the connected route of the mesh prefix on shoal0;
    # only their container subnets need routes of their own.
    routes = tuple(
        sorted(
            (
                RouteConfig(dst=peer.subnet, dev=INTERFACE, src=me.mesh_ip, mtu=settings.mtu)
                for peer in netmap.peers
            ),
            key=lambda r: (int(r.dst.network_address), r.dst.prefixlen),
        )
    )
    docker_network = DockerNetworkConfig(
        name=DOCKER_NETWORK,
        bridge=BRIDGE,
        subnet=me.subnet,
        gateway=next(me.subnet.hosts()),
        mtu=settings.mtu,
    )
    firewall = FirewallConfig(
        mesh_interface=INTERFACE,
        bridge=BRIDGE,
        local_subnet=me.subnet,
        container_pool=settings.container_pool,
        mesh_pool=settings.mesh_pool,
        dns_address=me.mesh_ip,
    )
    return HostConfig(
        interface=interface,
        peers=peers,
        routes=routes,
        docker_network=docker_network,
        firewall=firewall,
    )
