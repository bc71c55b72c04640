from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.hostnet.netns import NetnsFactory, netns_factory


@pytest.fixture
def netns() -> Iterator[NetnsFactory]:
    if os.geteuid() != 0:
        pytest.fail("needs root to create network namespaces")
    with netns_factory() as factory:
        yield factory
