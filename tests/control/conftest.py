from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.control.app import RunningServer
from tests.control.servers import FakeClock, running_server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def server(tmp_path: Path, clock: FakeClock) -> AsyncIterator[RunningServer]:
    async with running_server(tmp_path / "server", clock) as running:
        yield running
