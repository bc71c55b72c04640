"""A resumed agent's names from the cached netmap, before the rest of its start-up."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shoal.agent.meshdns import answer_from_cache
from shoal.agent.statefiles import CachedNetmap, NodeIdentity, StateDir
from shoal.testing.builders import netmap

IDENTITY = NodeIdentity(server_url="https://192.0.2.1:8443", ca_pem="PEM", node_id="n1", name="h1")


async def test_a_state_dir_with_nothing_to_resume_from_gives_no_resolver(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.ensure()
    assert await answer_from_cache(state, 51820) is None
    state.save_identity(IDENTITY)  # joined, but the netmap was lost: the server has it
    assert await answer_from_cache(state, 51820) is None
    assert not (tmp_path / "private.key").exists(), "no key is made for nothing"


async def test_an_address_not_on_this_host_waits_for_the_first_apply(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = StateDir(tmp_path)
    state.ensure()
    state.private_key()
    state.save_identity(IDENTITY)
    state.save_netmap(CachedNetmap(netmap=netmap(1, [2]), received_at=datetime.now(UTC)))
    with caplog.at_level(logging.INFO):
        # After a reboot the mesh IP (100.64.0.1) comes with the interface, in the first apply.
        assert await answer_from_cache(state, 51820) is None
    assert "wait for the first apply" in caplog.text
