from ipaddress import IPv4Interface, IPv4Network

from shoal.model.keys import PrivateKey
from shoal.plan.hostconfig import INTERFACE, plan_host
from shoal.testing.builders import netmap

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
