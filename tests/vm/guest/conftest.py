"""Fixtures of the guest suite (runs inside the VM only: the files are named `guest_*.py`, which
the host's collection does not match). One lab of 2 hosts on kernel WireGuard per session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from shoal.lab import Lab


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """2 hosts (netns + dockerd each) and a started `shoal server`; removed at the end."""
    # Emulation: a Python daemon needs 15-20 s to import, more on a busy machine.
    lab = Lab.create(f"k{os.getpid()}", hosts=2, patience=4)
    try:
        lab.start_server(timeout=120)
        yield lab
    finally:
        lab.destroy()


@pytest.fixture(scope="session")
def join_token(lab: Lab) -> str:
    return lab.create_token(reusable=True)
