"""Fixtures: a responder on 127.0.0.1 (random port) over the seed mesh, and a tiny upstream."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from shoal.dns.records import RecordTable
from shoal.dns.server import DnsServer
from tests.dns.helpers import SEED
from tests.dns.upstream import Upstream


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    await up.start()
    try:
        yield up
    finally:
        await up.close()


@pytest.fixture
async def server(upstream: Upstream) -> AsyncIterator[DnsServer]:
    table = RecordTable.from_netmap(SEED, rng=random.Random(5))
    srv = DnsServer(lambda: table, [upstream.address], forward_timeout=0.5, tcp_idle_timeout=1.0)
    await srv.start([("127.0.0.1", 0)])
    try:
        yield srv
    finally:
        await srv.close()
