"""Fixtures for the end-to-end tests: one real lab (3 hosts + a running server) per session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from shoal.lab import Lab, sweep


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """3 hosts (netns + dockerd each) and a started `shoal server`; removed at the end, even
    when a test fails. Labs left by earlier aborted runs are swept first."""
    sweep()
    lab = Lab.create(f"e{os.getpid()}", hosts=3)
    try:
        lab.start_server()
        yield lab
    finally:
        lab.destroy()


@pytest.fixture(scope="session")
def server_url(lab: Lab) -> str:
    assert lab.server_url is not None
    return lab.server_url


@pytest.fixture(scope="session")
def join_token(lab: Lab) -> str:
    """A reusable join token of the lab's server."""
    return lab.create_token(reusable=True)
