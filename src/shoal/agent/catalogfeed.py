"""The catalog the agent serves to tools, and the long-poll that streams its changes.

One value and one wake-up: `update(netmap)` replaces the catalog when its services changed
(see `next_catalog`), and every `wait(index, timeout)` blocked on an older index returns the new
one. Latest wins: a watcher that was slow sees the newest catalog, never a queue of old ones.
"""

from __future__ import annotations

import asyncio
import contextlib

from shoal.model.catalog import Catalog, next_catalog
from shoal.model.netmap import NetworkMap

MAX_WAIT = 300.0  # seconds one long-poll may block; the watcher then asks again


class CatalogFeed:
    def __init__(self, netmap: NetworkMap) -> None:
        self._catalog = next_catalog(Catalog(index=0), netmap)
        self._changed = asyncio.Event()  # set and replaced on every change

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    def update(self, netmap: NetworkMap) -> bool:
        """Fold in a newer netmap; True when the catalog changed (and watchers were woken)."""
        catalog = next_catalog(self._catalog, netmap)
        if catalog is self._catalog:
            return False
        self._catalog = catalog
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return True

    async def wait(self, index: int, timeout: float) -> Catalog:
        """The catalog once its index exceeds `index`, or the current one after `timeout`
        seconds (capped at MAX_WAIT) without a change: the caller compares the indexes."""
        if self._catalog.index > index or timeout <= 0:
            return self._catalog
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), min(timeout, MAX_WAIT))
        return self._catalog
