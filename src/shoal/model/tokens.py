"""Join and admin tokens as text: `SHOAL-1-<CA fingerprint>-<secret>`, like Swarm's SWMTKN.

Pure, shared by the server (which stores only `secret_hash`) and every client, and cheap to
import: `shoal up` checks a token's shape before it starts anything.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from shoal.model.errors import ShoalError


class MalformedToken(ShoalError):
    """The token text itself is wrong (checked before any I/O)."""

    code = "token_malformed"


JOIN_PREFIX = "SHOAL-1-"
ADMIN_PREFIX = "SHOAL-ADMIN-1-"
_HEX64 = "[0-9a-f]{64}"
_HEX32 = "[0-9a-f]{32}"
_JOIN = re.compile(rf"^SHOAL-1-({_HEX64})-({_HEX32})$")
_ADMIN = re.compile(rf"^SHOAL-ADMIN-1-({_HEX64})-({_HEX32})$")


@dataclass(frozen=True, slots=True)
class JoinToken:
    fingerprint: str  # lowercase hex sha256 of the CA certificate (DER)
    secret: str

    def __str__(self) -> str:
        return f"{JOIN_PREFIX}{self.fingerprint}-{self.secret}"

    def __repr__(self) -> str:
        return f"JoinToken(fingerprint={self.fingerprint!r}, secret=<redacted>)"

    @property
    def id(self) -> str:
        return token_id(self.secret)


@dataclass(frozen=True, slots=True)
class AdminToken:
    fingerprint: str
    secret: str

    def __str__(self) -> str:
        return f"{ADMIN_PREFIX}{self.fingerprint}-{self.secret}"

    def __repr__(self) -> str:
        return f"AdminToken(fingerprint={self.fingerprint!r}, secret=<redacted>)"


def secret_hash(secret: str) -> str:
    """What the server stores for a secret: sha256 hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def token_id(secret: str) -> str:
    """A join token's public id: the first 12 hex of sha256(secret)."""
    return secret_hash(secret)[:12]


def parse_join_token(text: str) -> JoinToken:
    """Parse `SHOAL-1-<fingerprint>-<secret>`; `MalformedToken` says what is wrong."""
    text = text.strip()
    match = _JOIN.match(text)
    if match is None:
        if text.startswith(ADMIN_PREFIX):
            raise MalformedToken("this is an admin token, not a join token (shoal token create)")
        raise MalformedToken(
            "malformed join token: expected SHOAL-1-<64 hex CA fingerprint>-<32 hex secret> "
            "as printed by `shoal token create`"
        )
    return JoinToken(fingerprint=match.group(1), secret=match.group(2))


def parse_admin_token(text: str) -> AdminToken:
    """Parse `SHOAL-ADMIN-1-<fingerprint>-<secret>`."""
    match = _ADMIN.match(text.strip())
    if match is None:
        raise MalformedToken(
            "malformed admin token: expected SHOAL-ADMIN-1-<64 hex CA fingerprint>-<32 hex "
            "secret> (the server writes it to admin.token in its data dir)"
        )
    return AdminToken(fingerprint=match.group(1), secret=match.group(2))
