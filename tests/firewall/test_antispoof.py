"""Per-container anti-spoofing: bindings of container addresses to bridge ports, the `bridge
shoal` table, and real frames on a real bridge (a host namespace with two container
namespaces behind veths), where a container sending from any address but its own is dropped."""

from __future__ import annotations

from ipaddress import IPv4Address

from shoal import firewall, hostnet
from shoal.firewall import antispoof, nft
from tests.firewall.test_rules import CFG
from tests.hostnet.netns import Netns, NetnsFactory

A, B, C = IPv4Address("10.42.1.2"), IPv4Address("10.42.1.3"), IPv4Address("10.42.1.4")
GATEWAY = IPv4Address("10.42.1.1")


def test_each_local_address_is_bound_to_the_one_port_it_sits_behind() -> None:
    ports = {
        "veth-a": (A, IPv4Address("10.42.1.99")),  # .99 is no container's: not bound
        "veth-b": (B,),
        "veth-x": (IPv4Address("172.17.0.2"),),  # another network's container
    }
    got = antispoof.bindings((A, B, C), ports)
    assert got.bound == ((A, "veth-a"), (B, "veth-b"))
    assert got.ports == ("veth-a", "veth-b")
    assert got.owned == (A, B, C)  # C runs here but its port is not found (yet): owned only
    assert got.contested == ()


def test_an_address_behind_two_ports_is_bound_to_neither() -> None:
    got = antispoof.bindings((A, B), {"veth-a": (A, B), "veth-b": (B,)})
    assert got.bound == ((A, "veth-a"),)
    assert got.contested == (B,) and got.owned == (A, B)


def test_render_binds_addresses_to_ports_and_drops_the_rest() -> None:
    text = antispoof.render(antispoof.bindings((A, B), {"veth-a": (A,), "veth-b": (B,)}))
    assert 'elements = { 10.42.1.2 . "veth-a", 10.42.1.3 . "veth-b" }' in text
    assert "\t\tip saddr . iifname @bound accept\n" in text
    assert "\t\tether type { ip, arp } iifname @bound_ports drop\n" in text
    assert "\t\tip saddr @owned drop\n" in text
    empty = antispoof.render(antispoof.bindings((), {}))
    assert "elements" not in empty  # sets stay, empty


def container(netns: NetnsFactory, host: Netns, name: str, addr: IPv4Address) -> Netns:
    """A namespace behind veth `name` on the host's shoal bridge, with `addr`/24."""
    ns = netns.new(name)
    host.sh("ip", "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
    host.sh("ip", "link", "set", name, "master", CFG.bridge, "up")
    ns.sh("ip", "addr", "add", f"{addr}/24", "dev", "eth0")
    ns.sh("ip", "link", "set", "eth0", "up")
    return ns


def pings(ns: Netns, src: IPv4Address) -> bool:
    """One ping from `ns` to the bridge's gateway, sent from `src`."""
    argv = ["busybox", "ping", "-c", "1", "-W", "1", "-I", str(src), str(GATEWAY)]
    return ns.sh(*argv, check=False).returncode == 0


def test_a_container_may_only_send_from_its_own_address(netns: NetnsFactory) -> None:
    host = netns.new("as-host")
    host.sh("ip", "link", "add", CFG.bridge, "type", "bridge")
    host.sh("ip", "addr", "add", f"{GATEWAY}/24", "dev", CFG.bridge)
    host.sh("ip", "link", "set", CFG.bridge, "up")
    a, b = container(netns, host, "vetha", A), container(netns, host, "vethb", B)
    assert host.run(lambda: hostnet.port_addresses(CFG.bridge)) == {"vetha": (A,), "vethb": (B,)}
    cfg = CFG.model_copy(update={"local_containers": (A, B)})
    assert host.run(lambda: firewall.apply(cfg)) is True
    bound = host.sh("nft", "list", "set", "bridge", "shoal", "bound").stdout
    assert '10.42.1.2 . "vetha"' in nft.canonical(bound)[3]
    assert pings(a, A) and pings(b, B)
    # a gives itself a free address of the subnet: its port sends nothing but its own.
    a.sh("ip", "addr", "add", "10.42.1.99/32", "dev", "eth0")
    assert not pings(a, IPv4Address("10.42.1.99"))
    assert pings(a, A)
    # a claims b's address too: contested, no port may send from it (b loses it as well).
    a.sh("ip", "addr", "add", f"{B}/32", "dev", "eth0")
    assert host.run(lambda: firewall.apply(cfg)) is True
    assert not pings(a, B) and not pings(b, B)
    assert pings(a, A)
    # a gives it back: b's address is b's again.
    a.sh("ip", "addr", "del", f"{B}/32", "dev", "eth0")
    assert host.run(lambda: firewall.apply(cfg)) is True
    assert pings(b, B)
    assert host.run(lambda: firewall.apply(cfg)) is False
    assert host.run(firewall.teardown) is True
    assert host.sh("nft", "list", "table", "bridge", "shoal", check=False).returncode != 0
