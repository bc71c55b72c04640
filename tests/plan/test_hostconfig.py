from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Interface, IPv4Network

from shoal.model.keys import PrivateKey
from shoal.model.netmap import PEER_SWITCH_LAG, NetworkMap, Node
from shoal.plan.hostconfig import INTERFACE, HostConfig, plan_host
from shoal.testing.builders import netmap, node

KEY = PrivateKey(b"\x07" * 32)


def test_peers_are_allowed_their_mesh_ip_and_container_subnet() -> None:
    cfg = plan_host(netmap(1, [2, 3]), KEY, 51820)
    by_endpoint = {p.endpoint: p for p in cfg.tunnel.peers}
    assert by_endpoint["192.0.2.12:51820"].allowed_ips == (
        IPv4Network("100.64.0.2/32"),
        IPv4Network("10.42.2.0/24"),
    )


def test_routes_cover_peer_subnets_only_sourced_from_the_mesh_ip() -> None:
    cfg = plan_host(netmap(1, [3, 2]), KEY, 51820)
    assert [r.dst for r in cfg.routing.routes] == [
        IPv4Network("10.42.2.0/24"),
        IPv4Network("10.42.3.0/24"),
    ]
    assert {(r.dev, str(r.src)) for r in cfg.routing.routes} == {(INTERFACE, "100.64.0.1")}


LAN = IPv4Network("192.168.77.0/24")


def with_routes(nm: NetworkMap, node_id: str, *routes: IPv4Network) -> NetworkMap:
    """`nm` with `node_id`'s approved subnet routes set to `routes`."""
    if nm.self_node.id == node_id:
        return nm.model_copy(
            update={"self_node": nm.self_node.model_copy(update={"routes": routes})}
        )
    peers = tuple(
        p.model_copy(update={"routes": routes}) if p.id == node_id else p for p in nm.peers
    )
    return nm.model_copy(update={"peers": peers})


def test_a_peers_approved_routes_go_through_it_and_this_hosts_own_are_forwarded() -> None:
    nm = with_routes(netmap(1, [2, 3]), netmap(1, [2]).peers[0].id, LAN)
    cfg = plan_host(nm, KEY, 51820)
    by_endpoint = {p.endpoint: p for p in cfg.tunnel.peers}
    assert by_endpoint["192.0.2.12:51820"].allowed_ips[-1] == LAN
    assert LAN not in by_endpoint["192.0.2.13:51820"].allowed_ips
    assert [r.dst for r in cfg.routing.routes] == [
        IPv4Network("10.42.2.0/24"),
        IPv4Network("10.42.3.0/24"),
        LAN,
    ]
    assert cfg.firewall.subnet_routes == ()
    # On the advertising host: no route of its own over the mesh, forwarding in the firewall.
    router = plan_host(with_routes(netmap(2, [1, 3]), netmap(2, [1]).self_node.id, LAN), KEY, 1)
    assert LAN not in [r.dst for r in router.routing.routes]
    assert router.firewall.subnet_routes == (LAN,)


def without_docker(nm: NetworkMap, node_id: str) -> NetworkMap:
    """`nm` with `node_id` a host without Docker (no container subnet)."""
    if nm.self_node.id == node_id:
        return nm.model_copy(update={"self_node": nm.self_node.model_copy(update={"subnet": None})})
    peers = tuple(p.model_copy(update={"subnet": None}) if p.id == node_id else p for p in nm.peers)
    return nm.model_copy(update={"peers": peers})


def test_a_host_without_docker_plans_no_network_and_points_its_resolver_at_the_mesh() -> None:
    me = netmap(1, [2]).self_node.id
    cfg = plan_host(without_docker(netmap(1, [2, 3]), me), KEY, 51820)
    assert cfg.docker_network is None
    assert cfg.firewall.local_subnet is None and cfg.firewall.dns_address is None
    assert cfg.dns.host_resolver is True
    assert [r.dst for r in cfg.routing.routes] == [
        IPv4Network("10.42.2.0/24"),
        IPv4Network("10.42.3.0/24"),
    ]
    # Its peers route nothing but its mesh IP to it.
    peer = plan_host(without_docker(netmap(2, [1, 3]), me), KEY, 51820)
    assert [r.dst for r in peer.routing.routes] == [IPv4Network("10.42.3.0/24")]
    assert IPv4Network("100.64.0.1/32") in {ip for p in peer.tunnel.peers for ip in p.allowed_ips}
    assert plan_host(netmap(1, [2]), KEY, 51820).dns.host_resolver is False


def test_interface_network_and_firewall_follow_this_node() -> None:
    cfg = plan_host(netmap(1, [2]), KEY, 51999)
    assert cfg.tunnel.interface.address == IPv4Interface("100.64.0.1/10")
    assert cfg.tunnel.interface.listen_port == 51999
    assert cfg.docker_network.subnet == IPv4Network("10.42.1.0/24")
    assert str(cfg.docker_network.gateway) == "10.42.1.1"
    assert cfg.firewall.local_subnet == cfg.docker_network.subnet
    # The same MTU on every hop: WireGuard, routes and the Docker bridge.
    assert {
        cfg.tunnel.interface.mtu,
        cfg.docker_network.mtu,
        *(r.mtu for r in cfg.routing.routes),
    } == {1420}


def test_plan_is_deterministic_whatever_the_peer_order() -> None:
    a = plan_host(netmap(1, [2, 3, 4]), KEY, 51820)
    b = plan_host(netmap(1, [4, 3, 2]), KEY, 51820)
    assert a == b


# Key rotation: the rotating host switches at switch_at, its peers PEER_SWITCH_LAG later.

T = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
NEW = PrivateKey(b"\x63" * 32)


def rotating(nm: NetworkMap, node_id: str) -> NetworkMap:
    """`nm` with node `node_id` announced to switch to NEW at T."""

    def rotate(n: Node) -> Node:
        if n.id != node_id:
            return n
        return n.model_copy(update={"next_key": NEW.public_key(), "switch_at": T})

    return nm.model_copy(
        update={"self_node": rotate(nm.self_node), "peers": tuple(map(rotate, nm.peers))}
    )


def peer_keys(cfg: HostConfig) -> dict[str, tuple[str, ...]]:
    return {p.public_key.short(): tuple(map(str, p.allowed_ips)) for p in cfg.tunnel.peers}


def test_a_rotating_peer_keeps_its_old_key_until_the_lag_after_its_switch() -> None:
    nm = rotating(netmap(1, [2, 3]), "n2")
    old = node(2).public_key.short()
    for now in (T - timedelta(seconds=3), T, T + PEER_SWITCH_LAG - timedelta(microseconds=1)):
        cfg = plan_host(nm, KEY, 51820, now)
        # No entry for the new key yet: a handshake from it must wait for this host's switch,
        # so the rotating host's packets stay queued instead of arriving at the wrong peer.
        assert old in peer_keys(cfg) and NEW.public_key().short() not in peer_keys(cfg)
        assert cfg.replan_at == T + PEER_SWITCH_LAG
    after = plan_host(nm, KEY, 51820, T + PEER_SWITCH_LAG)
    assert peer_keys(after)[NEW.public_key().short()] == ("100.64.0.2/32", "10.42.2.0/24")
    assert old not in peer_keys(after)
    assert after.replan_at is None
    # Nothing else about the host changes.
    before = plan_host(nm, KEY, 51820, T)
    assert (after.routing, after.firewall) == (before.routing, before.firewall)


def test_the_rotating_host_takes_its_next_key_at_the_switch() -> None:
    nm = rotating(netmap(1, [2]), "n1")
    keys = (KEY, NEW)
    before = plan_host(nm, keys, 51820, T - timedelta(milliseconds=1))
    assert before.tunnel.interface.private_key == KEY
    assert before.replan_at == T
    at = plan_host(nm, keys, 51820, T)
    assert at.tunnel.interface.private_key == NEW
    assert at.replan_at is None
    # After the agent promoted private.key.next it holds only the new key: same plan.
    assert plan_host(nm, NEW, 51820, T) == at
    # A netmap from before the announcement with only the old key at hand: the old key.
    assert plan_host(netmap(1, [2]), keys, 51820, T).tunnel.interface.private_key == KEY


def test_a_final_record_needs_no_time() -> None:
    nm = netmap(1, [2])
    final = nm.model_copy(
        update={"peers": (node(2).model_copy(update={"public_key": NEW.public_key()}),)}
    )
    assert list(peer_keys(plan_host(final, KEY, 51820))) == [NEW.public_key().short()]


def test_only_a_host_that_routes_for_others_asks_for_ip_forwarding() -> None:
    me = netmap(1, [2]).self_node.id
    assert plan_host(netmap(1, [2]), KEY, 51820).routing.forward
    # A sidecar or a laptop ends its traffic: it needs no forwarding (and a container's
    # /proc/sys is read-only), unless it routes an approved subnet.
    endpoint_only = without_docker(netmap(1, [2]), me)
    assert not plan_host(endpoint_only, KEY, 51820).routing.forward
    assert plan_host(with_routes(endpoint_only, me, LAN), KEY, 51820).routing.forward
