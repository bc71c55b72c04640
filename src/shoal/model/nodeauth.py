"""Node request signatures: every node call proves possession of the node's private key.

A node signs each request with a MAC keyed by X25519(node private key, server auth key):

    key  = HMAC-SHA256("shoal-node-auth-1", X25519(a, B) || node public || server public)
    mac  = HMAC-SHA256(key, "shoal-node-1\\n" METHOD "\\n" PATH?QUERY "\\n" TS "\\n" NONCE
                             "\\n" sha256(BODY) hex)
    Authorization: Shoal-Node <node public key>.<ts>.<nonce>.<mac>

Only the holder of the node's private key (or of the server's) can compute `key`: a public
key, a join token, or a copy of the node's records without `private.key` gets nothing. The
timestamp bounds a captured request's life to the server's window and the nonce makes it
single-use within it (the server remembers the MACs it accepted). The same WireGuard key that
carries the node's traffic authenticates its control calls, so there is no second secret to
leak, renew or revoke: removing the node's key is the revocation.

Pure (no I/O), shared by the server (`control.nodeauth`) and the client.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from shoal.model.errors import ShoalError
from shoal.model.keys import InvalidKey, PrivateKey, PublicKey

SCHEME = "Shoal-Node"
_KDF_LABEL = b"shoal-node-auth-1"
_MAC_LABEL = b"shoal-node-1"
# <44 base64 key>.<unix seconds>.<32 hex nonce>.<43 base64url mac, unpadded>
_HEADER = re.compile(
    r"^Shoal-Node ([A-Za-z0-9+/]{43}=)\.([0-9]{1,12})\.([0-9a-f]{32})\.([A-Za-z0-9_-]{43})$"
)
MAX_HEADER = 200  # characters; a valid header is about 145


class MalformedSignature(ShoalError):
    """The Authorization header is not a node signature at all."""

    code = "signature_malformed"


@dataclass(frozen=True, slots=True)
class Signature:
    public_key: PublicKey
    timestamp: int  # unix seconds, the signer's clock (corrected by the server's Date)
    nonce: str
    mac: bytes

    def header(self) -> str:
        mac = base64.urlsafe_b64encode(self.mac).decode().rstrip("=")
        return f"{SCHEME} {self.public_key}.{self.timestamp}.{self.nonce}.{mac}"


def parse_header(text: str) -> Signature:
    """An `Authorization` value → `Signature`; `MalformedSignature` if it is not one."""
    if len(text) > MAX_HEADER:
        raise MalformedSignature("node signature header too long")
    match = _HEADER.match(text.strip())
    if match is None:
        raise MalformedSignature(
            "expected Authorization: Shoal-Node <public key>.<unix time>.<nonce>.<mac>"
        )
    key_text, ts, nonce, mac = match.groups()
    try:
        key = PublicKey.parse(key_text)
        raw_mac = base64.urlsafe_b64decode(mac + "=")
    except (InvalidKey, binascii.Error, ValueError) as exc:
        raise MalformedSignature("node signature header does not decode") from exc
    return Signature(public_key=key, timestamp=int(ts), nonce=nonce, mac=raw_mac)


def shared_key(own: PrivateKey, other: PublicKey, node: PublicKey, server: PublicKey) -> bytes:
    """The MAC key of one node and one server; either side computes it with its private key."""
    priv = X25519PrivateKey.from_private_bytes(own.raw)
    try:
        secret = priv.exchange(X25519PublicKey.from_public_bytes(other.raw))
    except ValueError as exc:  # a low-order public key gives all zeros: it proves nothing
        raise InvalidKey("degenerate key exchange (low-order public key)") from exc
    return hmac.new(_KDF_LABEL, secret + node.raw + server.raw, hashlib.sha256).digest()


def _canonical(method: str, target: str, timestamp: int, nonce: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return b"\n".join(
        (_MAC_LABEL, method.upper().encode(), target.encode(), str(timestamp).encode(),
         nonce.encode(), digest.encode())
    )  # fmt: skip


def compute_mac(
    key: bytes, method: str, target: str, timestamp: int, nonce: str, body: bytes
) -> bytes:
    """`target` is the request's path with its query string, exactly as sent."""
    message = _canonical(method, target, timestamp, nonce, body)
    # One-shot: the HMAC object's Python-level setup cost the server more than the MAC itself.
    return hmac.digest(key, message, "sha256")


def sign(
    key: bytes, node: PublicKey, method: str, target: str, body: bytes, timestamp: int
) -> Signature:
    nonce = secrets.token_hex(16)
    mac = compute_mac(key, method, target, timestamp, nonce, body)
    return Signature(public_key=node, timestamp=timestamp, nonce=nonce, mac=mac)


def mac_matches(sig: Signature, key: bytes, method: str, target: str, body: bytes) -> bool:
    expected = compute_mac(key, method, target, sig.timestamp, sig.nonce, body)
    return hmac.compare_digest(expected, sig.mac)
