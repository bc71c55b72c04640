"""Node signatures, pure: both sides derive one key; any change to the request breaks it."""

from __future__ import annotations

import pytest

from shoal.model.keys import InvalidKey, PrivateKey, PublicKey
from shoal.model.nodeauth import (
    MalformedSignature,
    mac_matches,
    parse_header,
    shared_key,
    sign,
)

NODE, SERVER = PrivateKey.generate(), PrivateKey.generate()
N, S = NODE.public_key(), SERVER.public_key()


def test_node_and_server_derive_the_same_key_and_nobody_else_does() -> None:
    node_side = shared_key(NODE, S, N, S)
    assert shared_key(SERVER, N, N, S) == node_side
    assert shared_key(PrivateKey.generate(), S, N, S) != node_side  # a key it does not hold


def test_a_signature_covers_method_target_time_nonce_and_body() -> None:
    key = shared_key(NODE, S, N, S)
    sig = parse_header(sign(key, N, "POST", "/v1/containers", b'{"a":1}', 1_000).header())
    assert sig.public_key == N and sig.timestamp == 1_000
    assert mac_matches(sig, key, "POST", "/v1/containers", b'{"a":1}')
    assert not mac_matches(sig, key, "POST", "/v1/containers", b'{"a":2}')
    assert not mac_matches(sig, key, "POST", "/v1/leave", b'{"a":1}')
    assert not mac_matches(sig, key, "GET", "/v1/containers", b'{"a":1}')
    forged = type(sig)(sig.public_key, sig.timestamp + 1, sig.nonce, sig.mac)
    assert not mac_matches(forged, key, "POST", "/v1/containers", b'{"a":1}')


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Bearer SHOAL-NODE-1-abc",
        "Shoal-Node " + "A" * 44 + ".1.00.x",
        "Shoal-Node " + "x" * 500,
    ],
)
def test_malformed_headers_are_refused(header: str) -> None:
    with pytest.raises(MalformedSignature):
        parse_header(header)


def test_a_low_order_public_key_proves_nothing() -> None:
    with pytest.raises(InvalidKey, match="low-order"):
        shared_key(SERVER, PublicKey(bytes(32)), N, S)
