"""The policy through the real API: set (validated, inline tests), get, revisions, the delta
every node receives, `policy test` verdicts, and publish claims in the server log."""

from __future__ import annotations

import logging
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from shoal.control.app import RunningServer
from shoal.controlclient.errors import ControlRejected
from shoal.model.api import ContainerReport, ContainersReport, PolicySetRequest
from tests.control.servers import admin_client, join, new_token, node_client, running_server
from tests.policy.conftest import EXAMPLE

WEB_DB = """\
rules:
  - from: service:web
    to: service:db
    ports: 5432
publish:
  - {tags: [db], names: [db]}
tests:
  - {from: service:web, to: service:db, port: 5432, expect: allow}
"""


async def set_policy(server: RunningServer, source: str, file: str = "p.yaml") -> int:
    async with admin_client(server) as admin:
        return (await admin.set_policy(PolicySetRequest(file=file, source=source))).revision


async def test_set_get_and_revisions(server: RunningServer) -> None:
    async with admin_client(server) as admin:
        with pytest.raises(ControlRejected) as none:
            await admin.get_policy()
        assert none.value.code == "not_found"
    assert await set_policy(server, EXAMPLE.read_text(), "example.yaml") == 1
    assert await set_policy(server, WEB_DB) == 2
    async with admin_client(server) as admin:
        info = await admin.get_policy()
    assert (info.revision, info.file, info.source, info.rules) == (2, "p.yaml", WEB_DB, 1)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (WEB_DB.replace("expect: allow", "expect: deny"), "p.yaml:8: test expects deny"),
        ("rules:\n  - from: web\n", "p.yaml:2: bad selector 'web'"),
    ],
)
async def test_set_refuses_a_broken_policy_and_keeps_the_old_one(
    server: RunningServer, source: str, message: str
) -> None:
    assert await set_policy(server, WEB_DB) == 1
    with pytest.raises(ControlRejected) as refused:
        await set_policy(server, source)
    assert refused.value.code == "policy_invalid" and message in str(refused.value)
    async with admin_client(server) as admin:
        assert (await admin.get_policy()).revision == 1


async def test_read_only_admin_tokens_cannot_set(server: RunningServer) -> None:
    from shoal.controlclient.client import ControlClient
    from shoal.model.api import AdminTokenCreateRequest

    async with admin_client(server) as admin:
        reader = (await admin.create_admin_token(AdminTokenCreateRequest(scope="read"))).token
    async with ControlClient(server.url, server.ca.ca_pem, credential=reader) as client:
        with pytest.raises(ControlRejected) as refused:
            await client.set_policy(PolicySetRequest(file="p.yaml", source=WEB_DB))
    assert refused.value.code == "admin_scope"


async def test_a_policy_reaches_every_node_in_the_next_delta(server: RunningServer) -> None:
    a = await join(server, "alpha", token=await new_token(server, tags=("db",)))
    assert a.netmap.policy is None and a.netmap.self_node.tags == ("db",)
    await set_policy(server, WEB_DB)
    async with node_client(server, a.key) as client:
        update = await client.poll(since=a.netmap.revision, wait=0)
    assert update.kind == "delta" and update.policy is not None
    assert update.policy.revision == 1 and update.peers_changed == ()
    newer = a.netmap.apply(update)
    assert newer.policy == update.policy
    async with node_client(server, a.key) as client:  # nothing else changed since
        assert (await client.poll(since=newer.revision, wait=0)).kind == "none"


async def test_the_policy_survives_a_restart(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        a = await join(server, "alpha")
        await set_policy(server, WEB_DB)
    async with running_server(tmp_path) as server:
        async with admin_client(server) as admin:
            assert (await admin.get_policy()).revision == 1
        async with node_client(server, a.key) as client:
            update = await client.poll(since=a.netmap.revision, wait=0)
        assert update.policy is not None and update.policy.rules[0].line == 2


async def test_clear_brings_every_node_back_to_the_defaults_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    async with running_server(tmp_path) as server:
        a = await join(server, "alpha")
        async with admin_client(server) as admin:
            assert (await admin.clear_policy()).revision is None  # nothing to clear: no-op
        await set_policy(server, WEB_DB)
        async with node_client(server, a.key) as client:
            held = a.netmap.apply(await client.poll(since=a.netmap.revision, wait=0))
        assert held.policy is not None
        async with admin_client(server) as admin:
            assert (await admin.clear_policy()).revision == 2
            with pytest.raises(ControlRejected) as none:
                await admin.get_policy()
            assert none.value.code == "not_found"
            (verdict,) = await admin.test_policy("alpha", "alpha", "icmp", None)
            assert verdict.policy_revision is None
        async with node_client(server, a.key) as client:
            update = await client.poll(since=held.revision, wait=0)
        assert update.kind == "delta" and update.policy_cleared and update.policy is None
        assert held.apply(update).policy is None
    async with running_server(tmp_path) as server:
        async with node_client(server, a.key) as client:
            full = await client.poll(since=0, wait=0)
        assert full.full is not None and full.full.policy is None
        assert await set_policy(server, WEB_DB) == 3  # the numbers go on after a removal


def report(n: int, name: str, ip: str, service: str) -> ContainerReport:
    return ContainerReport(
        id=f"{n:064x}", name=name, ip=IPv4Address(ip), project="app", service=service
    )


async def test_policy_test_explains_with_the_destination_hosts_compiled_form(
    server: RunningServer,
) -> None:
    h1 = await join(server, "h1")
    h2 = await join(server, "h2", token=await new_token(server, tags=("db",)))
    web = report(1, "app-web-1", "10.42.0.2", "web")
    db = report(2, "app-db-1", "10.42.1.2", "db")
    async with node_client(server, h1.key) as client:
        await client.report_containers(ContainersReport(containers=(web,)))
    async with node_client(server, h2.key) as client:
        await client.report_containers(ContainersReport(containers=(db,)))
    async with admin_client(server) as admin:
        (before,) = await admin.test_policy("web", "db", "tcp", 5432)
        assert before.allow and before.reason == "no policy: containers reach containers"
        await admin.set_policy(PolicySetRequest(file="p.yaml", source=WEB_DB))
        (ok,) = await admin.test_policy("app-web-1", "db.app", "tcp", 5432)
        (no,) = await admin.test_policy("web", "db", "tcp", 5433)
        (host,) = await admin.test_policy("web", "h2", "tcp", 22)
        (ping,) = await admin.test_policy("web", "h2", "icmp", None)
        (local,) = await admin.test_policy("web", "h1", "tcp", 22)
        with pytest.raises(ControlRejected) as unknown:
            await admin.test_policy("web", "nothing", "tcp", 1)
    assert (ok.allow, ok.reason) == (True, "allowed by p.yaml:2")
    assert ok.src == "app-web-1 (10.42.0.2 on h1)" and ok.dst == "app-db-1 (10.42.1.2 on h2)"
    assert (no.allow, no.reason, no.policy_revision) == (False, "no rule of p.yaml r1 allows it", 1)
    assert not host.allow and ping.allow
    assert local.allow and local.reason.startswith("same host")
    assert unknown.value.code == "not_found"


async def test_a_host_publishing_a_claimed_name_is_logged(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    await set_policy(server, WEB_DB)
    h1 = await join(server, "h1")  # no db tag
    with caplog.at_level(logging.WARNING, logger="shoal.control"):
        async with node_client(server, h1.key) as client:
            await client.report_containers(
                ContainersReport(containers=(report(3, "app-db-1", "10.42.0.2", "db"),))
            )
    assert "node h1 may not publish db (policy p.yaml r1 publish claims)" in caplog.text
