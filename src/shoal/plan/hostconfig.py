"""Desired host state, computed in pure code from the netmap and local facts.

`HostConfig` has one part per subsystem (tunnel, routing, Docker network, firewall, DNS); each
part goes to one adapter, which converges its slice of the host to it and reports whether
anything changed. Parts are frozen values compared by value: the reconciler skips a subsystem
whose part equals the one it last applied.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from shoal.model.keys import PrivateKey, PublicKey
from shoal.model.netmap import PEER_SWITCH_LAG, Frozen, NetworkMap, Node
from shoal.plan.policy import HostPolicy, compile_for, publishable

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
    endpoint: str | None  # "ip:port": the chosen candidate, or the first advertised endpoint
    allowed_ips: tuple[IPv4Network, ...]
    keepalive: int = KEEPALIVE_SECONDS


class TunnelConfig(Frozen):
    """The WireGuard interface and its peers: the data plane's part."""

    interface: InterfaceConfig
    peers: tuple[PeerConfig, ...]  # sorted by public key


class RouteConfig(Frozen):
    """A route over the mesh interface, sourced from this host's mesh IP."""

    dst: IPv4Network
    dev: str
    src: IPv4Address
    mtu: int


class RoutingConfig(Frozen):
    """Exactly `routes` on `device` (the mesh interface shoal owns), and IPv4 forwarding on
    when `forward` (this host routes for its containers or its approved subnet routes)."""

    device: str
    routes: tuple[RouteConfig, ...]  # sorted by destination
    # False on a host that only ends traffic (no container subnet, no subnet routes): a
    # sidecar's container cannot write /proc/sys, and needs no forwarding.
    forward: bool = True


class DockerNetworkConfig(Frozen):
    name: str
    bridge: str
    subnet: IPv4Network
    gateway: IPv4Address
    mtu: int


def gateway_of(subnet: IPv4Network) -> IPv4Address:
    """The host's own address on the Docker bridge of `subnet`: its first host address."""
    return next(subnet.hosts())


class FirewallConfig(Frozen):
    """Who may reach the mesh and how it is forwarded: only WireGuard (`mesh_interface`) and
    this host's own bridge and stack reach the pools, the host's services are closed to the
    mesh, and there is no NAT inside the mesh. The bridge's gateway is `gateway_of(local_subnet)`.
    """

    mesh_interface: str
    bridge: str
    # This host's container subnet; None: a host without Docker, whose own services are the
    # workload and so open to the mesh (unless a policy says otherwise).
    local_subnet: IPv4Network | None
    container_pool: IPv4Network
    mesh_pool: IPv4Network
    # Where this host's service-discovery DNS listens. Containers on the bridge ask whatever
    # resolver Docker gave them; their port-53 traffic is redirected here, so names work with
    # no per-container flag and no change to the daemon's configuration.
    dns_address: IPv4Address | None = None
    # The access-control policy as this host enforces it on traffic from the mesh; None: no
    # policy (containers reach containers, the host's services stay closed but ICMP).
    policy: HostPolicy | None = None
    # The addresses of this host's containers (sorted): each may only be sent from the bridge
    # port it sits behind (per-container anti-spoofing, `shoal.firewall.antispoof`).
    local_containers: tuple[IPv4Address, ...] = ()
    # This host's approved subnet routes: networks beyond it that the mesh reaches through it.
    # Traffic from the mesh to them is forwarded and masqueraded (they need no route back).
    subnet_routes: tuple[IPv4Network, ...] = ()
    # The UDP port WireGuard listens on: its datagrams from the underlay, most of what the
    # host receives while the mesh is busy, are accepted by the input chain's first rule.
    wireguard_port: int | None = None


class DnsConfig(Frozen):
    """Service discovery: answer on `address`:53 with the names of `netmap`.

    The whole netmap, not a digest of it: the record table is built from it in `shoal.dns`
    (above this package), and comparing it by value tells whether the names may have changed.
    """

    address: IPv4Address
    netmap: NetworkMap
    # Point the host's own resolver at `address` for `.shoal` (`shoal.dns.hostresolver`): on
    # a host without Docker, whose own processes are the mesh's workload.
    host_resolver: bool = False


def without_dns_redirect(cfg: FirewallConfig) -> FirewallConfig:
    """`cfg` minus the containers' DNS redirect: what stays while no agent answers DNS."""
    return cfg.model_copy(update={"dns_address": None})


class HostConfig(Frozen):
    """Everything one host should look like; one part per adapter, applied in field order.

    The order matters: routes after the tunnel's peers (a route to a subnet whose peer is not
    configured yet black-holes its first packets), DNS after the tunnel (it binds the mesh IP)
    and the firewall last (its DNS redirect must point at a resolver that already listens).
    """

    tunnel: TunnelConfig
    routing: RoutingConfig
    docker_network: DockerNetworkConfig | None  # None: a host without Docker
    dns: DnsConfig
    firewall: FirewallConfig
    # When this plan changes with no new netmap (a key rotation's switch, UTC): the reconciler
    # plans again then. None: only a new netmap changes it.
    replan_at: datetime | None = None


def own_key(me: Node, keys: Sequence[PrivateKey], now: datetime) -> PrivateKey:
    """Of the keys this host holds (current first, then a next one during a rotation), the one
    the netmap says it carries traffic with at `now`; the first when none matches (a netmap
    from before this host's rotation was announced)."""
    want = me.key_at(now)
    return next((k for k in keys if k.public_key() == want), keys[0])


def plan_host(
    netmap: NetworkMap,
    keys: PrivateKey | Sequence[PrivateKey],
    listen_port: int,
    now: datetime | None = None,
    endpoints: Mapping[PublicKey, str | None] | None = None,
) -> HostConfig:
    """The host configuration `netmap` asks for at `now` (UTC); pure and deterministic (peers,
    routes sorted).

    `keys` are this host's private keys: its current one, then its next one while a key
    rotation is pending. A rotation switches this host to the next key at its `switch_at`
    and each peer's entry to the rotating node's next key PEER_SWITCH_LAG after that node's
    `switch_at` (see PEER_SWITCH_LAG for why this order loses nothing). Without `now`, the
    rotation is taken as not yet switched.

    `endpoints` is the agent's choice among each peer's candidates (`shoal.agent.paths`, by
    the peer's current key); a peer it does not name gets its first advertised endpoint.
    """
    settings = netmap.settings
    me = netmap.self_node
    held = (keys,) if isinstance(keys, PrivateKey) else tuple(keys)
    at = now if now is not None else datetime.min.replace(tzinfo=UTC)
    switches = [me.switches_at()] + [p.switches_at(lag=PEER_SWITCH_LAG) for p in netmap.peers]
    pending = [t for t in switches if t is not None and t > at]
    interface = InterfaceConfig(
        name=INTERFACE,
        private_key=own_key(me, held, at),
        listen_port=listen_port,
        address=settings.mesh_interface(me.mesh_ip),
        mtu=settings.mtu,
    )
    peers = tuple(
        sorted(
            (
                PeerConfig(
                    public_key=peer.key_at(at, lag=PEER_SWITCH_LAG),
                    endpoint=_endpoint(peer, endpoints or {}),
                    allowed_ips=peer.allowed_ips(),
                )
                for peer in netmap.peers
            ),
            key=lambda p: str(p.public_key),
        )
    )
    # Peers' mesh IPs are reached through the connected route of the mesh prefix on shoal0;
    # only their container subnets and approved subnet routes need routes of their own.
    routes = tuple(
        sorted(
            (
                RouteConfig(dst=dst, dev=INTERFACE, src=me.mesh_ip, mtu=settings.mtu)
                for peer in netmap.peers
                for dst in (peer.subnet, *peer.routes)
                if dst is not None
            ),
            key=lambda r: (int(r.dst.network_address), r.dst.prefixlen),
        )
    )
    docker_network = (
        None
        if me.subnet is None
        else DockerNetworkConfig(
            name=DOCKER_NETWORK,
            bridge=BRIDGE,
            subnet=me.subnet,
            gateway=gateway_of(me.subnet),
            mtu=settings.mtu,
        )
    )
    firewall = FirewallConfig(
        mesh_interface=INTERFACE,
        bridge=BRIDGE,
        local_subnet=me.subnet,
        container_pool=settings.container_pool,
        mesh_pool=settings.mesh_pool,
        # No bridge, no containers to redirect.
        dns_address=None if me.subnet is None else me.mesh_ip,
        policy=None if netmap.policy is None else compile_for(netmap.policy, netmap),
        local_containers=tuple(sorted(c.ip for c in netmap.containers if c.node_id == me.id)),
        subnet_routes=me.routes,
        wireguard_port=listen_port,
    )
    return HostConfig(
        tunnel=TunnelConfig(interface=interface, peers=peers),
        routing=RoutingConfig(
            device=INTERFACE, routes=routes, forward=me.subnet is not None or bool(me.routes)
        ),
        docker_network=docker_network,
        # Names a host may not publish (the policy's `publish` claims) are not served.
        dns=DnsConfig(
            address=me.mesh_ip, netmap=publishable(netmap), host_resolver=me.subnet is None
        ),
        firewall=firewall,
        replan_at=min(pending, default=None),
    )


def _endpoint(peer: Node, chosen: Mapping[PublicKey, str | None]) -> str | None:
    if peer.public_key in chosen:
        return chosen[peer.public_key]
    return str(peer.endpoints[0]) if peer.endpoints else None
