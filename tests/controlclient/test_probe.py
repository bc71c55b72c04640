"""`probe_server` (shoal doctor's look at the server) against a real server on loopback."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shoal.control.app import RunningServer
from shoal.controlclient.probe import probe_server
from tests.control.servers import running_server


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with running_server(tmp_path / "server") as running:
        yield running


@pytest.fixture
async def other_server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with running_server(tmp_path / "other") as running:
        yield running


async def test_a_server_gives_its_certificate_expiry_and_its_clock(server: RunningServer) -> None:
    probe = await probe_server(server.url, server.ca.ca_pem)
    now = datetime.now(UTC)
    assert probe.error is None and probe.rtt_ms is not None
    assert probe.server_time is not None and probe.local_time is not None
    assert abs(probe.local_time - probe.server_time) < timedelta(seconds=2)
    # The CA lives 10 years, the server certificate 825 days.
    assert probe.cert_not_after is not None
    assert timedelta(days=820) < probe.cert_not_after - now <= timedelta(days=826)
    assert probe.ca_not_after is not None
    assert timedelta(days=3640) < probe.ca_not_after - now <= timedelta(days=3660)


async def test_another_ca_and_a_closed_port_come_back_as_errors(
    server: RunningServer, other_server: RunningServer
) -> None:
    probe = await probe_server(other_server.url, server.ca.ca_pem)
    assert probe.error is not None and probe.error.startswith(
        "certificate not valid for the pinned CA"
    )
    assert probe.ca_not_after is not None  # the pinned CA is still read
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    probe = await probe_server(f"https://127.0.0.1:{port}", server.ca.ca_pem)
    assert probe.error is not None and probe.error.startswith(f"cannot reach 127.0.0.1:{port}:")
