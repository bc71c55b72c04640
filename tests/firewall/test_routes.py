"""The firewall's subnet-route part: a host forwarding the mesh into its approved networks
(nft forward accept, iptables FORWARD exemption and masquerade), and a host without Docker
(no bridge, its own services open), rendered and loaded into real nft and iptables in a
throwaway namespace."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from shoal import firewall
from shoal.firewall import nft, rules
from tests.firewall.test_nft import listing
from tests.firewall.test_rules import CFG
from tests.hostnet.netns import NetnsFactory

LAN = IPv4Network("192.168.77.0/24")
VPC = IPv4Network("172.20.0.0/16")


def test_no_routes_no_route_rules() -> None:
    assert nft.route_forwarding(CFG) == []
    assert rules.route_forward_rules(CFG) == () and rules.route_nat_rules(CFG) == ()


def test_routes_are_forwarded_from_the_mesh_and_masqueraded() -> None:
    cfg = CFG.model_copy(update={"subnet_routes": (VPC, LAN)})
    assert nft.route_forwarding(cfg) == [
        '\t\tiifname "shoal0" ip daddr { 172.20.0.0/16, 192.168.77.0/24 } accept'
    ]
    text = nft.render(cfg)
    # Before the drop of whatever else leaves shoal0 for somewhere but the bridge.
    assert text.index("ip daddr { 172.20") < text.index('oifname != "shoal-br0" drop')
    want = rules.desired(cfg)
    assert want[rules.FORWARD_CHAIN][2:] == (
        "-A SHOAL-FORWARD -d 172.20.0.0/16 -i shoal0 -j ACCEPT",
        "-A SHOAL-FORWARD -s 172.20.0.0/16 -o shoal0 -j ACCEPT",
        "-A SHOAL-FORWARD -d 192.168.77.0/24 -i shoal0 -j ACCEPT",
        "-A SHOAL-FORWARD -s 192.168.77.0/24 -o shoal0 -j ACCEPT",
    )
    assert (
        "-A SHOAL-POSTROUTING -s 100.64.0.0/10 -d 192.168.77.0/24 -j MASQUERADE"
        in (want[rules.NAT_CHAIN])
    )


@pytest.mark.parametrize("routes", [(LAN,), (VPC, LAN)], ids=["one", "two"])
def test_the_kernel_lists_route_rules_back_as_rendered(
    netns: NetnsFactory, routes: tuple[IPv4Network, ...]
) -> None:
    """Loaded once, the next apply changes nothing (no reload every resync), and the routes
    going away take their rules with them."""
    ns = netns.new("fw-routes")
    cfg = CFG.model_copy(update={"subnet_routes": routes})
    assert ns.run(lambda: firewall.apply(cfg)) is True
    assert nft.canonical(listing(ns)) == nft.canonical(nft.render(cfg))
    assert ns.run(lambda: firewall.apply(cfg)) is False
    assert str(LAN) in ns.sh("iptables-save").stdout
    assert ns.run(lambda: firewall.apply(CFG)) is True
    assert str(LAN) not in listing(ns) and str(LAN) not in ns.sh("iptables-save").stdout


NO_DOCKER = CFG.model_copy(update={"local_subnet": None, "dns_address": None})


def test_a_host_without_docker_has_no_bridge_rules_and_serves_the_mesh() -> None:
    text = nft.render(NO_DOCKER)
    assert "from_containers" not in text and 'shoal-br0" :' not in text
    assert nft.host_services_verdict(NO_DOCKER) == "accept"
    assert nft.host_services_verdict(CFG) == "drop"
    assert rules.desired(NO_DOCKER)[rules.NAT_CHAIN] == ()
    assert rules.desired(NO_DOCKER)[rules.DNS_CHAIN] == ()


def test_the_kernel_lists_a_host_without_docker_back_as_rendered(netns: NetnsFactory) -> None:
    ns = netns.new("fw-nodocker")
    assert ns.run(lambda: firewall.apply(NO_DOCKER)) is True
    assert nft.canonical(listing(ns)) == nft.canonical(nft.render(NO_DOCKER))
    assert ns.run(lambda: firewall.apply(NO_DOCKER)) is False
