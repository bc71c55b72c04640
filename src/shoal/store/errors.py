"""Errors of the store; sqlite3's (and later psycopg's) exceptions never leave the backend.

ShoalError
└── StoreError              the database failed or holds something unexpected
    ├── TokenUnavailable    a token could not be consumed: used, revoked or expired meanwhile
    └── StoreConflict       a unique field (name, public key, mesh IP, subnet) is taken
"""

from __future__ import annotations

from shoal.model.errors import ShoalError


class StoreError(ShoalError):
    """The store failed; the operation had no effect."""


class TokenUnavailable(StoreError):
    def __init__(self, token_id: str) -> None:
        super().__init__(f"token {token_id} is no longer usable")
        self.token_id = token_id


class StoreConflict(StoreError):
    def __init__(self, field: str) -> None:
        super().__init__(f"another node already has this {field}")
        self.field = field
