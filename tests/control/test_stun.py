"""The probe responder: answers a node of the mesh with where its probe came from, over a
real UDP socket on loopback; says nothing to anyone else."""

from __future__ import annotations

import asyncio
import socket
import time
from ipaddress import IPv4Address

from shoal.control.stun import ProbeResponder
from shoal.model.keys import PrivateKey
from shoal.model.nodeauth import shared_key
from shoal.model.probe import encode_request, parse_reply

NODE, SERVER, STRANGER = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
NOW = 1_700_000_000


def key_of(node: PrivateKey) -> bytes:
    return shared_key(node, SERVER.public_key(), node.public_key(), SERVER.public_key())


def responder() -> ProbeResponder:
    return ProbeResponder(SERVER, lambda k: k == NODE.public_key(), now=lambda: NOW)


def test_a_node_learns_its_observed_address() -> None:
    nonce = bytes(16)
    data = encode_request(key_of(NODE), NODE.public_key(), NOW, nonce)
    reply = responder().answer(data, IPv4Address("198.51.100.7"), 40123)
    assert reply is not None
    assert parse_reply(reply, key_of(NODE), nonce) == (IPv4Address("198.51.100.7"), 40123)
    assert len(reply) < len(data)  # no amplification


def test_strangers_garbage_and_stale_probes_get_nothing() -> None:
    r = responder()
    stranger = encode_request(key_of(STRANGER), STRANGER.public_key(), NOW, bytes(16))
    stale = encode_request(key_of(NODE), NODE.public_key(), NOW - 3600, bytes(16))
    forged = encode_request(key_of(STRANGER), NODE.public_key(), NOW, bytes(16))
    for data in (stranger, stale, forged, b"", b"\x00" * 92):
        assert r.answer(data, IPv4Address("198.51.100.7"), 1) is None


async def test_it_answers_over_udp() -> None:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: ProbeResponder(SERVER, lambda k: True), local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.setblocking(False)
    try:
        nonce = b"n" * 16
        data = encode_request(key_of(NODE), NODE.public_key(), int(time.time()), nonce)
        client.sendto(data, ("127.0.0.1", port))
        reply = await asyncio.wait_for(loop.sock_recv(client, 100), 5)
        assert parse_reply(reply, key_of(NODE), nonce) == (
            IPv4Address("127.0.0.1"),
            client.getsockname()[1],
        )
        assert proto.answered == 1
    finally:
        client.close()
        transport.close()
