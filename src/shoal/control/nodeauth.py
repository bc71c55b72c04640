"""The server's side of node signatures (see `shoal.model.nodeauth` for the scheme).

`NodeVerifier.verify` checks that a request was signed by the holder of the private key of
the public key it names, within the time window, and not before: it never looks the key up
among the nodes (the caller decides what that key may do). It keeps the derived MAC key per
public key (one X25519 per node per server start instead of one per request); the MACs it
accepted are claimed in the store (`Store.claim_signature`) for the window, so that a captured
request cannot be replayed, to this server or to another replica sharing its store.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from shoal.control.ca import write_private
from shoal.control.errors import ServerConfigError, SignatureInvalid
from shoal.model.keys import InvalidKey, PrivateKey, PublicKey
from shoal.model.nodeauth import (
    MalformedSignature,
    Signature,
    mac_matches,
    parse_header,
    shared_key,
)
from shoal.store import Store
from shoal.store.claims import ClaimLedger

AUTH_KEY_FILE = "node-auth.key"
# Seconds a signed request stays valid either side of the server's clock. The client corrects
# its clock from the server's Date header, so this only has to cover one request's flight.
WINDOW_SECONDS = 300
MAX_KEYS = 100_000  # derived MAC keys cached; beyond, the cache starts over (a bound, not a goal)


def load_or_create_auth_key(data_dir: Path) -> PrivateKey:
    """The server's static X25519 key for node signatures (0600 in the data dir)."""
    path = data_dir / AUTH_KEY_FILE
    if path.exists():
        return PrivateKey.parse(path.read_text())
    key = PrivateKey.generate()
    write_private(path, f"{key.to_base64()}\n".encode())
    return key


AUTH_KEY_SETTING = "node_auth_public_key"


async def ensure_shared_auth_key(store: Store, key: PublicKey) -> None:
    """Check that this server's node-auth key is the mesh's: replicas sharing one store must
    share the data dir's key material (ca.*, node-auth.key, admin.token), or nodes would be
    refused by every replica but the one that made their credentials. The first server to
    start records its public key in the store; a replica with another key does not start."""
    recorded = await store.get_setting(AUTH_KEY_SETTING)
    if recorded is None:
        await store.put_setting(AUTH_KEY_SETTING, str(key))
    elif recorded != str(key):
        raise ServerConfigError(
            f"this data dir's {AUTH_KEY_FILE} is not the one of the mesh in the store: every "
            "server replica needs a copy of the first server's data dir (ca.pem, ca.key, "
            f"{AUTH_KEY_FILE}, admin.token)"
        )


class SignatureClaims(Protocol):
    """Where used signatures are recorded (a `Store` is one)."""

    async def claim_signature(self, mac: bytes, expires_at: int, now: int) -> bool: ...


class LocalClaims:
    """Used signatures kept in this process only: for a verifier without a store (the
    standalone relay, which is the only place its hellos can be replayed to)."""

    def __init__(self) -> None:
        self._ledger = ClaimLedger()

    async def claim_signature(self, mac: bytes, expires_at: int, now: int) -> bool:
        return self._ledger.claim(mac, expires_at, now)


class NodeVerifier:
    def __init__(
        self, key: PrivateKey, claims: SignatureClaims, *, now: Callable[[], float] = time.time
    ) -> None:
        self.public_key = key.public_key()
        self._key = key
        self._claims = claims
        self._now = now
        self._keys: dict[PublicKey, bytes] = {}

    async def verify(self, header: str | None, method: str, target: str, body: bytes) -> PublicKey:
        """The public key whose private key signed this request; `SignatureInvalid` otherwise.

        Each signature is good once: its MAC is claimed in the store, so a request replayed
        to this server or to another replica on the same store within the window is refused.
        """
        if header is None:
            raise SignatureInvalid(
                "missing node signature (Authorization: Shoal-Node ...); this call needs the "
                "node's key"
            )
        try:
            sig = parse_header(header)
        except MalformedSignature as exc:
            raise SignatureInvalid(str(exc)) from exc
        now = int(self._now())
        if abs(now - sig.timestamp) > WINDOW_SECONDS:
            raise SignatureInvalid(
                f"signed request is {now - sig.timestamp:+d}s off the server's clock (window "
                f"±{WINDOW_SECONDS}s); check this host's clock"
            )
        if not mac_matches(sig, self._mac_key(sig), method, target, body):
            raise SignatureInvalid("node signature does not match (not signed with this key)")
        # Claimed only once the MAC matched: a forged header costs no store write.
        if not await self._claims.claim_signature(sig.mac, sig.timestamp + WINDOW_SECONDS, now):
            raise SignatureInvalid("replayed request (this signature was already used)")
        return sig.public_key

    def _mac_key(self, sig: Signature) -> bytes:
        key = self._keys.get(sig.public_key)
        if key is None:
            try:
                key = shared_key(self._key, sig.public_key, sig.public_key, self.public_key)
            except InvalidKey as exc:
                raise SignatureInvalid(f"unusable node key: {exc}") from exc
            if len(self._keys) >= MAX_KEYS:
                self._keys.clear()
            self._keys[sig.public_key] = key
        return key

    def forget(self, key: PublicKey) -> None:
        """Drop the cached MAC key of a removed node's key."""
        self._keys.pop(key, None)
