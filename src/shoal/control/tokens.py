"""Join tokens and the admin token: generation, hashing, validity.

Only hashes are stored. A join token's id (first 12 hex of sha256(secret)) is what admins see
and revoke; the text (`SHOAL-1-<CA fingerprint>-<secret>`) is shown once at creation.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timedelta

from shoal.control.errors import TokenExpired, TokenRevoked, TokenUsed
from shoal.model.tokens import AdminToken, JoinToken, secret_hash, token_id
from shoal.store.base import TokenRecord

__all__ = [
    "check_usable",
    "new_admin_token",
    "new_join_token",
    "new_scoped_admin_token",
    "parse_duration",
    "secret_hash",
    "token_id",
]

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_LIFETIME = timedelta(days=3650)


def parse_duration(text: str) -> timedelta:
    """`30m`, `1h`, `7d` (also `s` and `w`) → a positive timedelta; ValueError otherwise."""
    match = _DURATION.match(text.lower())
    if match is None:
        raise ValueError(f"invalid duration {text!r}: use a number and a unit, e.g. 30m, 1h, 7d")
    value = int(match.group(1)) * _UNITS[match.group(2)]
    if value <= 0:
        raise ValueError(f"invalid duration {text!r}: must be positive")
    if value > MAX_LIFETIME.total_seconds():
        raise ValueError(f"invalid duration {text!r}: at most 10 years")
    return timedelta(seconds=value)


def new_join_token(
    fingerprint: str,
    *,
    max_uses: int | None,
    ephemeral: bool = False,
    tags: tuple[str, ...],
    expires_in: timedelta | None,
    now: datetime,
) -> tuple[JoinToken, TokenRecord]:
    token = JoinToken(fingerprint=fingerprint, secret=secrets.token_hex(16))
    record = TokenRecord(
        id=token_id(token.secret),
        secret_hash=secret_hash(token.secret),
        reusable=max_uses != 1,
        max_uses=max_uses,
        ephemeral=ephemeral,
        tags=tuple(sorted(set(tags))),
        created_at=now,
        expires_at=None if expires_in is None else now + expires_in,
    )
    return token, record


def new_admin_token(fingerprint: str) -> AdminToken:
    return AdminToken(fingerprint=fingerprint, secret=secrets.token_hex(16))


def new_scoped_admin_token(
    fingerprint: str, scope: str, expires_in: timedelta | None, now: datetime
) -> tuple[AdminToken, TokenRecord]:
    """An admin token besides the server host's own: scoped, expiring, revocable, stored
    hashed beside the join tokens (told apart by `scope`)."""
    token = new_admin_token(fingerprint)
    record = TokenRecord(
        id=token_id(token.secret),
        secret_hash=secret_hash(token.secret),
        reusable=True,
        max_uses=None,
        tags=(),
        created_at=now,
        expires_at=None if expires_in is None else now + expires_in,
        scope=scope,
    )
    return token, record


def check_usable(record: TokenRecord, now: datetime) -> None:
    """Raise why `record` cannot authorise a new node now."""
    if record.revoked_at is not None:
        raise TokenRevoked(f"join token {record.id} was revoked; ask for a new one")
    if record.expires_at is not None and record.expires_at <= now:
        raise TokenExpired(
            f"join token {record.id} expired at {record.expires_at:%Y-%m-%d %H:%M:%S} UTC; "
            "ask for a new one"
        )
    if record.max_uses is not None and record.uses >= record.max_uses:
        what = "single-use" if record.max_uses == 1 else f"limited to {record.max_uses} uses"
        raise TokenUsed(
            f"join token {record.id} is {what} and was used up; create another "
            "(shoal token create [--reusable] [--uses N])"
        )
