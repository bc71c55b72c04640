"""Which addresses sit behind each port of a bridge, read from the kernel: for every veth
enslaved to the bridge, the IPv4 addresses of its peer interface, in the peer's own network
namespace (a container's).

The peer namespace is reached by its id as this namespace knows it (the veth's
IFLA_LINK_NETNSID): an RTM_GETADDR dump with IFA_TARGET_NETNSID lists that namespace's
addresses without entering it (no setns, no container PID, no Docker API). The kernel honours
the target id only on sockets with NETLINK_GET_STRICT_CHK (Linux 4.20+); pyroute2 types the
attribute as a string, so the dump is built by hand here (20 lines of struct).
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Iterator
from ipaddress import IPv4Address

from shoal.hostnet.errors import HostNetError
from shoal.hostnet.netlink import _dump, _index, _netlink

RTM_NEWADDR, RTM_GETADDR = 20, 22
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFA_ADDRESS, IFA_LOCAL, IFA_TARGET_NETNSID = 1, 2, 10
SOL_NETLINK, NETLINK_GET_STRICT_CHK = 270, 12
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
_IFADDR = struct.Struct("=BBBBi")  # ifaddrmsg: family, prefixlen, flags, scope, index
_ATTR = struct.Struct("=HH")  # rtattr: length, type


def _attrs(data: bytes, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    while start + _ATTR.size <= end:
        length, kind = _ATTR.unpack_from(data, start)
        if length < _ATTR.size:
            return
        yield kind, data[start + _ATTR.size : start + length]
        start += (length + 3) & ~3


def parse_addresses(data: bytes) -> tuple[list[tuple[int, IPv4Address]], bool]:
    """(interface index, IPv4 address) of each RTM_NEWADDR in one recv of a dump, and whether
    the dump ended; raises HostNetError for a netlink error message."""
    out: list[tuple[int, IPv4Address]] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, _seq, _pid = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            break
        if kind == NLMSG_DONE:
            return out, True
        if kind == NLMSG_ERROR:
            (errno,) = struct.unpack_from("=i", data, offset + _HEADER.size)
            raise HostNetError(f"address dump of a peer namespace: {os.strerror(-errno)} (netlink)")
        if kind == RTM_NEWADDR:
            body = offset + _HEADER.size
            family, _plen, _fl, _scope, index = _IFADDR.unpack_from(data, body)
            attrs = dict(_attrs(data, body + _IFADDR.size, offset + length))
            raw = attrs.get(IFA_LOCAL, attrs.get(IFA_ADDRESS))
            if family == socket.AF_INET and raw is not None and len(raw) == 4:
                out.append((index, IPv4Address(raw)))
        offset += (length + 3) & ~3
    return out, False


def _addresses_in(nsid: int) -> list[tuple[int, IPv4Address]]:
    """Every IPv4 address of the namespace this one knows as `nsid` (blocking, quick)."""
    request = _IFADDR.pack(socket.AF_INET, 0, 0, 0, 0) + _ATTR.pack(8, IFA_TARGET_NETNSID)
    request += struct.pack("=i", nsid)
    header = _HEADER.pack(
        _HEADER.size + len(request), RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, 1, 0
    )
    found: list[tuple[int, IPv4Address]] = []
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
            sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
            sock.bind((0, 0))
            sock.send(header + request)
            done = False
            while not done:
                batch, done = parse_addresses(sock.recv(65536))
                found += batch
    except OSError as exc:
        raise HostNetError(f"address dump of peer namespace {nsid}: {exc}") from exc
    return found


async def port_addresses(bridge: str) -> dict[str, tuple[IPv4Address, ...]]:
    """Port name -> the IPv4 addresses of its peer interface (sorted), for every veth port of
    `bridge` whose peer lives in another namespace; empty when `bridge` does not exist."""
    async with _netlink(f"list the ports of {bridge}") as ipr:
        if not await ipr.link_lookup(ifname=bridge):
            return {}
        ports = await _dump(ipr, "link", master=await _index(ipr, bridge))
    peers: dict[str, tuple[int, int]] = {}  # port -> (peer namespace id, peer index)
    for link in ports:
        nsid, peer = link.get("IFLA_LINK_NETNSID"), link.get("IFLA_LINK")
        if nsid is not None and peer is not None:
            peers[str(link.get("IFLA_IFNAME"))] = (int(nsid), int(peer))
    by_ns: dict[int, list[tuple[int, IPv4Address]]] = {}
    for nsid in sorted({ns for ns, _ in peers.values()}):
        by_ns[nsid] = await asyncio.to_thread(_addresses_in, nsid)
    return {
        port: tuple(sorted(addr for index, addr in by_ns[nsid] if index == peer))
        for port, (nsid, peer) in sorted(peers.items())
    }
