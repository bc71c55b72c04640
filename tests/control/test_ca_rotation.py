"""Rotating the server's CA in three steps, with no host joining again (issue 7, item 6)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shoal.cli.server_cmds import _expiry_warnings
from shoal.control.app import RunningServer
from shoal.control.ca import RotationError, rotate_ca
from shoal.controlclient.client import ControlClient
from shoal.controlclient.errors import ControlRejected, FingerprintMismatch
from shoal.controlclient.tls import trust_bundle
from shoal.model.api import CertStatus
from shoal.model.tokens import parse_join_token
from tests.control.servers import admin_client, join, new_token, running_server


async def test_a_ca_rotation_keeps_every_node(tmp_path: Path) -> None:
    data = tmp_path / "server"
    async with running_server(data) as server:
        node = await join(server, "alpha")
        old_ca, old_token = server.ca.ca_pem, await new_token(server, reusable=True)
    with pytest.raises(RotationError, match="start with"):
        rotate_ca(data, "finish")

    assert "introduced" in rotate_ca(data, "introduce")
    with pytest.raises(RotationError, match="already introduced"):
        rotate_ca(data, "introduce")
    async with running_server(data) as server:
        async with ControlClient(server.url, old_ca, node_key=node.key) as client:
            bundle, expiries = trust_bundle(await client.trust_bundle())  # what agents fetch
            assert len(expiries) == 2
            assert (await client.poll(since=0, wait=0)).kind == "full"
        async with admin_client(server) as admin:
            kinds = {c.kind for c in await admin.list_certs()}
        assert kinds == {"ca", "ca-next", "server"}

    rotate_ca(data, "finish")
    async with running_server(data) as server:
        assert server.ca.ca_pem != old_ca
        async with ControlClient(server.url, old_ca, node_key=node.key) as stale:
            with pytest.raises(FingerprintMismatch):
                await stale.poll(since=0, wait=0)
        async with ControlClient(server.url, bundle, node_key=node.key) as client:
            assert (await client.poll(since=0, wait=0)).kind == "full"  # no join again
        fresh = await new_token(server)
        assert parse_join_token(fresh).fingerprint == server.ca.fingerprint
        with pytest.raises(ControlRejected) as err:  # old tokens pin the old CA
            await join(server, "beta", token=old_token)
        assert err.value.code == "token_malformed"
        await join(server, "beta", token=fresh)

    rotate_ca(data, "drop-previous")
    async with running_server(data) as server, admin_client(server) as admin:
        assert {c.kind for c in await admin.list_certs()} == {"ca", "server"}


def test_expiry_warnings_name_what_expires_within_30_days() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    certs = [
        CertStatus(kind="ca", fingerprint="a" * 64, not_after=now + timedelta(days=10)),
        CertStatus(kind="server", fingerprint="b" * 64, not_after=now + timedelta(days=400)),
        CertStatus(kind="ca-previous", fingerprint="c" * 64, not_after=now + timedelta(days=1)),
    ]
    (line,) = _expiry_warnings(certs, now)
    assert "ca certificate aaaaaaaaaaaaaaaa" in line and "2026-01-11" in line
    assert "rotate-ca" in line


async def test_certs_need_an_admin_token(server: RunningServer) -> None:
    async with ControlClient(server.url, server.ca.ca_pem) as anonymous:
        with pytest.raises(ControlRejected):
            await anonymous.list_certs()
