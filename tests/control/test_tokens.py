"""Token texts, hashing, lifetimes and validity."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from shoal.control.errors import TokenExpired, TokenRevoked, TokenUsed
from shoal.control.tokens import (
    check_usable,
    new_admin_token,
    new_join_token,
    parse_duration,
    secret_hash,
    token_id,
)
from shoal.model.tokens import MalformedToken, parse_admin_token, parse_join_token

FP = "ab" * 32
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_join_token_roundtrip_and_only_the_hash_is_kept() -> None:
    token, record = new_join_token(FP, max_uses=1, tags=("b", "a", "a"), expires_in=None, now=T0)
    text = str(token)
    assert text.startswith(f"SHOAL-1-{FP}-") and len(token.secret) == 32
    assert parse_join_token(f"  {text}\n") == token
    assert record.id == token_id(token.secret) == secret_hash(token.secret)[:12]
    assert record.secret_hash == secret_hash(token.secret) != token.secret
    assert token.secret not in repr(token) and token.secret not in repr(record)
    assert record.tags == ("a", "b")


def test_admin_token_roundtrip() -> None:
    token = new_admin_token(FP)
    assert parse_admin_token(str(token)) == token
    assert str(token).startswith(f"SHOAL-ADMIN-1-{FP}-")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SHOAL-1-abc-def",
        f"SHOAL-2-{FP}-{'0' * 32}",
        f"SHOAL-1-{FP}-{'0' * 31}",
        f"SHOAL-1-{FP.upper()}-{'0' * 32}",
    ],
)
def test_malformed_join_tokens_are_rejected_clearly(text: str) -> None:
    with pytest.raises(MalformedToken, match="malformed join token: expected SHOAL-1-"):
        parse_join_token(text)


def test_an_admin_token_is_not_a_join_token() -> None:
    with pytest.raises(MalformedToken, match="admin token"):
        parse_join_token(str(new_admin_token(FP)))


@pytest.mark.parametrize(
    ("text", "seconds"), [("30m", 1800), ("1h", 3600), ("7d", 604800), ("45s", 45), ("2w", 1209600)]
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "1", "h", "0m", "-1h", "1y", "1.5h", "99999d"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_check_usable() -> None:
    _, rec = new_join_token(FP, max_uses=1, tags=(), expires_in=timedelta(hours=1), now=T0)
    check_usable(rec, T0)
    with pytest.raises(TokenExpired):
        check_usable(rec, T0 + timedelta(hours=1))
    with pytest.raises(TokenUsed, match="single-use"):
        check_usable(replace(rec, uses=1, used_at=T0, used_by="n1"), T0)
    with pytest.raises(TokenRevoked):
        check_usable(replace(rec, revoked_at=T0), T0)
    limited = replace(rec, reusable=True, max_uses=3, uses=2)
    check_usable(limited, T0)
    with pytest.raises(TokenUsed, match="limited to 3 uses"):
        check_usable(replace(limited, uses=3), T0)
    check_usable(replace(rec, reusable=True, max_uses=None, uses=500), T0)
