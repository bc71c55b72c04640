"""Token text: `SHOAL-1-<CA fingerprint>-<secret>` (join) and `SHOAL-ADMIN-1-...` (admin),
parsed before any I/O, with secrets kept out of reprs."""

from __future__ import annotations

import hashlib

import pytest

from shoal.model.tokens import (
    AdminToken,
    JoinToken,
    MalformedToken,
    parse_admin_token,
    parse_join_token,
    secret_hash,
    token_id,
)

FINGERPRINT = "ab" * 32
SECRET = "0123456789abcdef" * 2


def test_a_join_token_round_trips_through_its_text() -> None:
    token = JoinToken(fingerprint=FINGERPRINT, secret=SECRET)
    assert str(token) == f"SHOAL-1-{FINGERPRINT}-{SECRET}"
    assert parse_join_token(f"  {token}\n") == token  # as pasted, or read from a file
    assert token.id == token_id(SECRET) == secret_hash(SECRET)[:12]
    assert secret_hash(SECRET) == hashlib.sha256(SECRET.encode()).hexdigest()


def test_an_admin_token_round_trips_through_its_text() -> None:
    token = AdminToken(fingerprint=FINGERPRINT, secret=SECRET)
    assert str(token) == f"SHOAL-ADMIN-1-{FINGERPRINT}-{SECRET}"
    assert parse_admin_token(str(token)) == token


def test_reprs_never_show_the_secret() -> None:
    for token in (JoinToken(FINGERPRINT, SECRET), AdminToken(FINGERPRINT, SECRET)):
        assert SECRET not in repr(token) and "redacted" in repr(token)
        assert FINGERPRINT in repr(token)


@pytest.mark.parametrize(
    "text",
    [
        "",
        f"SHOAL-2-{FINGERPRINT}-{SECRET}",  # another version
        f"SHOAL-1-{FINGERPRINT.upper()}-{SECRET}",  # hex is lowercase
        f"SHOAL-1-{FINGERPRINT[:-2]}-{SECRET}",  # a short fingerprint
        f"SHOAL-1-{FINGERPRINT}-{SECRET}0",  # a long secret
    ],
)
def test_a_malformed_join_token_says_what_a_token_looks_like(text: str) -> None:
    with pytest.raises(MalformedToken, match="expected SHOAL-1-<64 hex CA fingerprint>"):
        parse_join_token(text)


def test_an_admin_token_given_as_a_join_token_is_named() -> None:
    with pytest.raises(MalformedToken, match="this is an admin token, not a join token"):
        parse_join_token(str(AdminToken(FINGERPRINT, SECRET)))
    with pytest.raises(MalformedToken, match="malformed admin token"):
        parse_admin_token(str(JoinToken(FINGERPRINT, SECRET)))
    assert MalformedToken.code == "token_malformed"
