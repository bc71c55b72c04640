"""WireGuard keys as typed values: parsed from base64 at the edge, a redacted private key, the
base64 text on the wire."""

from __future__ import annotations

import base64

import pytest
from pydantic import BaseModel, ValidationError

from shoal.model.keys import InvalidKey, PrivateKey, PublicKey


class Peer(BaseModel):
    key: PublicKey


def test_a_key_round_trips_through_its_base64_text() -> None:
    private = PrivateKey.generate()
    assert PrivateKey.parse(private.to_base64()) == private
    public = private.public_key()
    assert PublicKey.parse(str(public)) == public and len(public.raw) == 32
    assert public.hex() == public.raw.hex() and public.short() == str(public)[:8]
    assert PublicKey.parse(f" {public}\n") == public  # as read from a file


def test_the_public_key_is_x25519s() -> None:
    # RFC 7748 section 6.1: Alice's private and public key.
    alice = PrivateKey(
        bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    expected = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    assert alice.public_key().hex() == expected


def test_a_private_key_never_prints_its_material() -> None:
    key = PrivateKey.generate()
    for text in (repr(key), str(key), f"{key}", repr([key])):
        assert key.to_base64() not in text and "redacted" in text


@pytest.mark.parametrize(
    ("text", "reason"),
    [("not base64!", "not base64"), (base64.b64encode(b"x" * 31).decode(), "got 31")],
)
def test_text_that_is_no_key_is_refused(text: str, reason: str) -> None:
    with pytest.raises(InvalidKey, match=reason):
        PublicKey.parse(text)
    with pytest.raises(InvalidKey, match=reason):
        PrivateKey.parse(text)


def test_on_the_wire_a_public_key_is_its_base64_text() -> None:
    key = PrivateKey.generate().public_key()
    wire = Peer(key=key).model_dump_json()
    assert wire == f'{{"key":"{key}"}}'
    assert Peer.model_validate_json(wire).key == key
    assert Peer.model_validate({"key": key}).key == key  # in Python, the value itself
    with pytest.raises(ValidationError, match="invalid WireGuard public key: not base64"):
        Peer.model_validate_json('{"key": "not base64!"}')
