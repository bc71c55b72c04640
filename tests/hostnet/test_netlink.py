"""hostnet against a real kernel, inside throwaway network namespaces."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from shoal import hostnet
from shoal.hostnet.inspect import LinkState, ip_forward_on, link_state, routes_on
from shoal.plan.hostconfig import RouteConfig
from tests.hostnet.netns import Netns, NetnsFactory

SRC = IPv4Address("100.64.0.1")


def routes_dump(ns: Netns, dev: str = "m0") -> list[str]:
    """`ip route` of `dev` as sorted lines: dst, protocol, source, MTU."""
    lines = []
    for r in json.loads(ns.sh("ip", "-j", "-4", "route", "show", "dev", dev).stdout):
        mtu = next((m["mtu"] for m in r.get("metrics", []) if "mtu" in m), None)
        proto = r.get("protocol", "boot")
        lines.append(f"{r['dst']} proto {proto} src {r.get('prefsrc')} mtu {mtu}")
    return sorted(lines)


@pytest.fixture
def ns(netns: NetnsFactory) -> Netns:
    ns = netns.new("hn")
    ns.sh("ip", "link", "add", "m0", "type", "veth", "peer", "name", "m1")
    return ns


def test_address_and_link_converge(ns: Netns) -> None:
    addr = IPv4Interface("100.64.0.1/10")

    async def first() -> tuple[bool, bool]:
        return await hostnet.ensure_address("m0", addr), await hostnet.ensure_link_up("m0", 1420)

    assert ns.run(first) == (True, True)
    assert ns.run(first) == (False, False)
    link = json.loads(ns.sh("ip", "-j", "addr", "show", "m0").stdout)[0]
    assert link["mtu"] == 1420 and "UP" in link["flags"]
    assert [(a["local"], a["prefixlen"]) for a in link["addr_info"]] == [("100.64.0.1", 10)]

    moved = IPv4Interface("100.64.0.7/10")
    assert ns.run(lambda: hostnet.ensure_address("m0", moved)) is True
    link = json.loads(ns.sh("ip", "-j", "addr", "show", "m0").stdout)[0]
    assert [(a["local"], a["prefixlen"]) for a in link["addr_info"]] == [("100.64.0.7", 10)]


def test_link_exists_and_delete(ns: Netns) -> None:
    assert ns.run(lambda: hostnet.link_exists("m0")) is True
    assert ns.run(lambda: hostnet.delete_link("m0")) is True
    assert ns.run(lambda: hostnet.link_exists("m0")) is False
    assert ns.run(lambda: hostnet.delete_link("m0")) is False


def test_missing_link_is_a_typed_error(ns: Netns) -> None:
    with pytest.raises(hostnet.LinkNotFound, match=r"^network interface nope0 does not exist$"):
        ns.run(lambda: hostnet.ensure_link_up("nope0", 1420))


def test_sync_routes_adds_fixes_deletes_only_on_its_device(ns: Netns) -> None:
    ns.sh("ip", "link", "set", "m0", "up")
    ns.sh("ip", "addr", "add", "100.64.0.1/10", "dev", "m0")
    # Not ours: a route on another device.
    ns.sh("ip", "link", "set", "lo", "up")
    ns.sh("ip", "route", "add", "10.42.9.0/24", "dev", "lo")
    # Ours but stale: wrong MTU, and ones no longer wanted.
    ns.sh("ip", "route", "add", "10.42.2.0/24", "dev", "m0", "src", "100.64.0.1", "mtu", "1300")
    ns.sh("ip", "route", "add", "10.42.5.0/24", "dev", "m0", "src", "100.64.0.1", "mtu", "1420")
    ns.sh("ip", "route", "add", "192.0.2.0/24", "dev", "m0")

    want = [
        RouteConfig(dst=IPv4Network("10.42.2.0/24"), dev="m0", src=SRC, mtu=1420),
        RouteConfig(dst=IPv4Network("10.42.3.0/24"), dev="m0", src=SRC, mtu=1420),
    ]
    assert ns.run(lambda: hostnet.sync_routes("m0", want)) is True
    assert routes_dump(ns) == [
        "10.42.2.0/24 proto static src 100.64.0.1 mtu 1420",
        "10.42.3.0/24 proto static src 100.64.0.1 mtu 1420",
        "100.64.0.0/10 proto kernel src 100.64.0.1 mtu None",
    ]
    assert "10.42.9.0/24" in ns.sh("ip", "route", "show", "dev", "lo").stdout
    assert ns.run(lambda: hostnet.sync_routes("m0", want)) is False
    assert ns.run(lambda: hostnet.sync_routes("m0", [])) is True
    assert routes_dump(ns) == ["100.64.0.0/10 proto kernel src 100.64.0.1 mtu None"]


def test_sync_routes_refuses_routes_on_another_device(ns: Netns) -> None:
    elsewhere = [RouteConfig(dst=IPv4Network("10.42.2.0/24"), dev="lo", src=SRC, mtu=1420)]
    with pytest.raises(ValueError, match="is on lo, not m0"):
        ns.run(lambda: hostnet.sync_routes("m0", elsewhere))


def test_host_prefixes(ns: Netns) -> None:
    ns.sh("ip", "link", "set", "m0", "up")
    ns.sh("ip", "addr", "add", "192.0.2.1/24", "dev", "m0")
    ns.sh("ip", "route", "add", "default", "via", "192.0.2.254")
    ns.sh("ip", "route", "add", "10.50.0.0/16", "via", "192.0.2.254")
    ns.sh("ip", "link", "add", "m2", "type", "veth", "peer", "name", "m3")
    ns.sh("ip", "link", "set", "m2", "up")
    ns.sh("ip", "addr", "add", "100.64.0.1/10", "dev", "m2")
    assert ns.run(lambda: hostnet.host_prefixes(["m2"])) == [
        IPv4Network("10.50.0.0/16"),
        IPv4Network("192.0.2.0/24"),
    ]


def test_ensure_ip_forward(ns: Netns) -> None:
    assert ns.run(hostnet.ensure_ip_forward) is True
    assert ns.run(hostnet.ensure_ip_forward) is False
    assert ns.sh("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"


def test_inspect_reads_link_routes_and_forwarding(ns: Netns) -> None:
    route = RouteConfig(dst=IPv4Network("10.42.3.0/24"), dev="m0", src=SRC, mtu=1380)

    async def configure() -> None:
        await hostnet.ensure_address("m0", IPv4Interface("100.64.0.1/10"))
        await hostnet.ensure_link_up("m0", 1420)
        await hostnet.sync_routes("m0", [route])

    ns.run(configure)
    assert ns.run(lambda: link_state("m0")) == LinkState("veth", 1420, True)
    assert ns.run(lambda: link_state("nope")) is None
    # The connected route of the address is the kernel's, not shoal's: not listed.
    assert ns.run(lambda: routes_on("m0")) == {IPv4Network("10.42.3.0/24"): 1380}
    assert ns.run(lambda: routes_on("nope")) == {}
    ns.sh("sysctl", "-qw", "net.ipv4.ip_forward=0")
    assert ns.run(ip_forward_on) is False
    ns.sh("sysctl", "-qw", "net.ipv4.ip_forward=1")
    assert ns.run(ip_forward_on) is True
