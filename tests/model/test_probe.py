"""The endpoint probe's wire format: MACed both ways, bound to the nonce, fixed sizes."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address

import pytest

from shoal.model.keys import PrivateKey
from shoal.model.nodeauth import shared_key
from shoal.model.probe import (
    REPLY_SIZE,
    REQUEST_SIZE,
    BadProbe,
    encode_reply,
    encode_request,
    parse_reply,
    parse_request,
)

NODE, SERVER = PrivateKey.generate(), PrivateKey.generate()
KEY = shared_key(NODE, SERVER.public_key(), NODE.public_key(), SERVER.public_key())
NONCE = bytes(range(16))


def test_both_sides_derive_the_same_key() -> None:
    assert shared_key(SERVER, NODE.public_key(), NODE.public_key(), SERVER.public_key()) == KEY


def test_a_request_round_trips_and_verifies() -> None:
    data = encode_request(KEY, NODE.public_key(), 1_000_000, NONCE)
    assert len(data) == REQUEST_SIZE
    req = parse_request(data)
    assert (req.public_key, req.timestamp, req.nonce) == (NODE.public_key(), 1_000_000, NONCE)
    req.verify(KEY, now=1_000_100)


@pytest.mark.parametrize(
    ("mutate", "now", "message"),
    [
        (lambda d: d[:-1] + bytes([d[-1] ^ 1]), 1_000_000, "MAC does not match"),
        (lambda d: d, 1_000_000 + 301, "off the server's clock"),
    ],
)
def test_a_forged_or_stale_request_is_refused(
    mutate: Callable[[bytes], bytes], now: int, message: str
) -> None:
    req = parse_request(mutate(encode_request(KEY, NODE.public_key(), 1_000_000, NONCE)))
    with pytest.raises(BadProbe, match=message):
        req.verify(KEY, now)


def test_a_request_under_another_key_is_refused() -> None:
    other = PrivateKey.generate()
    forged = encode_request(KEY, other.public_key(), 1_000_000, NONCE)  # MACed with NODE's key
    req = parse_request(forged)
    other_key = shared_key(SERVER, other.public_key(), other.public_key(), SERVER.public_key())
    with pytest.raises(BadProbe):
        req.verify(other_key, 1_000_000)


@pytest.mark.parametrize("data", [b"", b"SHP1", b"XXXX" + bytes(REQUEST_SIZE - 4)])
def test_garbage_is_no_request(data: bytes) -> None:
    with pytest.raises(BadProbe):
        parse_request(data)


def test_a_reply_names_the_observed_address_for_that_nonce_only() -> None:
    reply = encode_reply(KEY, NONCE, IPv4Address("192.0.2.12"), 40001)
    assert len(reply) == REPLY_SIZE
    assert parse_reply(reply, KEY, NONCE) == (IPv4Address("192.0.2.12"), 40001)
    with pytest.raises(BadProbe, match="another request"):
        parse_reply(reply, KEY, bytes(16))
    tampered = reply[:20] + IPv4Address("203.0.113.9").packed + reply[24:]
    with pytest.raises(BadProbe, match="MAC"):
        parse_reply(tampered, KEY, NONCE)
    with pytest.raises(BadProbe, match="not a shoal probe reply"):
        parse_reply(reply[:-1], KEY, NONCE)
