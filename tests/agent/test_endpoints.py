"""Endpoint discovery's pure parts: the hand-built UDP datagram, reading a raw socket's
packet, and what a round of probes says about the NAT and the endpoints to report."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

from shoal.agent.endpoints import Discovery, parse_ipv4_udp, udp_datagram
from shoal.model.netmap import Endpoint

LOCAL = Endpoint(host=IPv4Address("192.168.2.2"), port=51820)


def test_the_datagram_comes_from_wireguards_port() -> None:
    data = udp_datagram(51820, 3478, b"hello")
    assert struct.unpack("!HHHH", data[:8]) == (51820, 3478, 13, 0)
    assert data[8:] == b"hello"


def test_a_raw_packet_is_read_back() -> None:
    ip = bytes([0x45, 0, 0, 33, 0, 0, 0, 0, 64, 17, 0, 0]) + bytes([192, 0, 2, 2, 192, 0, 2, 12])
    packet = ip + udp_datagram(3478, 51820, b"hello")
    assert parse_ipv4_udp(packet) == (IPv4Address("192.0.2.2"), 3478, 51820, b"hello")
    assert parse_ipv4_udp(packet[:20]) is None
    assert parse_ipv4_udp(b"\x60" + packet[1:]) is None  # IPv6
    tcp = ip[:9] + bytes([6]) + ip[10:]
    assert parse_ipv4_udp(tcp + packet[20:]) is None


def at(text: str) -> tuple[IPv4Address, int]:
    host, port = text.split(":")
    return IPv4Address(host), int(port)


def test_the_nat_kind_and_the_endpoints_to_report() -> None:
    public = Discovery(LOCAL, (at("192.168.2.2:51820"), at("192.168.2.2:51820")))
    assert public.nat == "none"
    assert public.endpoints() == (LOCAL.model_copy(update={"kind": "public"}),)

    easy = Discovery(LOCAL, (at("192.0.2.12:51820"), at("192.0.2.12:51820")))
    assert easy.nat == "easy"
    assert [(str(e), e.kind) for e in easy.endpoints()] == [
        ("192.168.2.2:51820", "lan"),
        ("192.0.2.12:51820", "public"),
    ]

    hard = Discovery(LOCAL, (at("192.0.2.12:40001"), at("192.0.2.12:40002")))
    assert hard.nat == "hard"
    assert [e.kind for e in hard.endpoints()] == ["lan", "symmetric"]

    blocked = Discovery(LOCAL, (None, None))
    assert blocked.nat == "udp-blocked"
    assert blocked.endpoints() == (LOCAL,)  # unverified, as advertised

    assert Discovery(None, (None, None)).endpoints() == ()
