"""The addresses behind a bridge's ports: a hand-built netlink dump parsed, and the kernel asked
for real about veths whose peers live in other namespaces."""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address

import pytest

from shoal import hostnet
from shoal.hostnet import HostNetError
from shoal.hostnet.bridgeports import (
    IFA_LOCAL,
    NLMSG_DONE,
    NLMSG_ERROR,
    RTM_NEWADDR,
    parse_addresses,
)
from tests.hostnet.netns import Netns, NetnsFactory


def message(kind: int, body: bytes) -> bytes:
    length = 16 + len(body)
    padded = body + b"\0" * (-length % 4)
    return struct.pack("=IHHII", length, kind, 0, 1, 0) + padded


def address(index: int, family: int, raw: bytes) -> bytes:
    attr = struct.pack("=HH", 4 + len(raw), IFA_LOCAL) + raw
    return message(RTM_NEWADDR, struct.pack("=BBBBi", family, 24, 0, 0, index) + attr)


def test_a_dump_parses_into_indexes_and_ipv4_addresses() -> None:
    data = address(2, socket.AF_INET, bytes([10, 42, 1, 2]))
    data += address(1, socket.AF_INET, bytes([127, 0, 0, 1]))
    data += address(2, socket.AF_INET6, bytes(16))  # not IPv4: left out
    assert parse_addresses(data) == (
        [(2, IPv4Address("10.42.1.2")), (1, IPv4Address("127.0.0.1"))],
        False,
    )
    assert parse_addresses(message(NLMSG_DONE, struct.pack("=i", 0))) == ([], True)
    with pytest.raises(HostNetError, match="Invalid argument"):
        parse_addresses(message(NLMSG_ERROR, struct.pack("=i", -22)))


def peer(netns: NetnsFactory, host: Netns, port: str, *addresses: str) -> Netns:
    ns = netns.new(port)
    host.sh("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
    host.sh("ip", "link", "set", port, "master", "br-test", "up")
    for addr in addresses:
        ns.sh("ip", "addr", "add", addr, "dev", "eth0")
    return ns


def test_each_port_lists_the_addresses_of_its_peer_in_its_namespace(netns: NetnsFactory) -> None:
    host = netns.new("bp-host")
    assert host.run(lambda: hostnet.port_addresses("br-test")) == {}  # no bridge: nothing
    host.sh("ip", "link", "add", "br-test", "type", "bridge")
    peer(netns, host, "vethp1", "10.42.1.2/24")
    peer(netns, host, "vethp2", "10.42.1.3/24", "10.42.1.9/32")
    # A veth with both ends here (no other namespace) and an address of the host: not a port
    # of any container.
    host.sh("ip", "link", "add", "vethl0", "type", "veth", "peer", "name", "vethl1")
    host.sh("ip", "link", "set", "vethl0", "master", "br-test")
    host.sh("ip", "addr", "add", "10.42.1.1/24", "dev", "br-test")
    assert host.run(lambda: hostnet.port_addresses("br-test")) == {
        "vethp1": (IPv4Address("10.42.1.2"),),
        "vethp2": (IPv4Address("10.42.1.3"), IPv4Address("10.42.1.9")),
    }
