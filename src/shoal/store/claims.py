"""Signed requests already used, kept in this process (see `Store.claim_signature`).

A store that only one server uses (SQLite, memory) keeps its claims here, in memory: the
process is the only place a request can be replayed to. PostgreSQL keeps them in the database
and this ledger as well, so that a replica still refuses replays to itself while the database
is unreachable.
"""

from __future__ import annotations

# Seconds between sweeps of expired claims: a sweep walks every claim, so not on each call.
PRUNE_INTERVAL = 30


class ClaimLedger:
    """MACs with the unix time until which they stay claimed."""

    def __init__(self) -> None:
        self._until: dict[bytes, int] = {}
        self._pruned_at = 0

    def claim(self, mac: bytes, expires_at: int, now: int) -> bool:
        """True the first time `mac` is claimed (and until `expires_at`), False after."""
        if now - self._pruned_at > PRUNE_INTERVAL:
            self._until = {m: until for m, until in self._until.items() if until >= now}
            self._pruned_at = now
        held = self._until.get(mac)
        if held is not None and held >= now:
            return False
        self._until[mac] = expires_at
        return True

    def __len__(self) -> int:
        return len(self._until)
