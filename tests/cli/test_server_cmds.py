"""`shoal server`'s process set-up."""

from __future__ import annotations

import asyncio.sslproto
import gc
from collections.abc import Iterator

import pytest

from shoal.cli.server_cmds import SERVER_GC_FULL_EVERY, TLS_READ_BUFFER, tune_server_process


@pytest.fixture
def restored() -> Iterator[None]:
    """The tuning is process-wide: put the interpreter's settings back for the other tests."""
    buffer, thresholds = asyncio.sslproto.SSLProtocol.max_size, gc.get_threshold()
    yield
    asyncio.sslproto.SSLProtocol.max_size = buffer
    gc.set_threshold(*thresholds)


def test_tuning_sets_tls_buffer_and_gc_thresholds(restored: None) -> None:
    tune_server_process()
    assert asyncio.sslproto.SSLProtocol.max_size == TLS_READ_BUFFER
    assert gc.get_threshold()[2] == SERVER_GC_FULL_EVERY
