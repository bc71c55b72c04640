"""The server on PostgreSQL: `shoal server migrate` moves a running mesh off SQLite and its
hosts keep working against the new server without joining again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shoal.cli.main import main
from shoal.control.app import RunningServer, start_server
from shoal.control.config import load_config
from shoal.control.errors import ServerConfigError
from shoal.model.api import ContainerReport, ContainersReport
from tests.control.servers import FakeClock, Joined, admin_client, join, node_client


async def _start(data_dir: Path, store: str | None) -> RunningServer:
    config = load_config(listen="127.0.0.1:0", data_dir=data_dir, store=store)
    return await start_server(config, clock=FakeClock())


def test_migrate_moves_a_mesh_from_sqlite_and_hosts_need_not_join_again(
    tmp_path: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "server"

    async def populate() -> tuple[Joined, int]:
        server = await _start(data_dir, None)
        try:
            alpha = await join(server, "alpha")
            beta = await join(server, "beta")
            gone = await join(server, "gone")
            async with node_client(server, beta.key) as client:
                web = ContainerReport(
                    id=f"{1:064x}", name="web", ip=beta.netmap.self_node.subnet[2]
                )
                await client.report_containers(ContainersReport(containers=(web,)))
            async with admin_client(server) as admin:
                await admin.remove_node("gone")
            async with node_client(server, alpha.key) as client:
                seen = await client.poll(since=0, wait=0)
            assert seen.full is not None
            assert gone.node_id not in {p.id for p in seen.full.peers}
            return alpha, seen.revision
        finally:
            await server.close()

    alpha, revision = asyncio.run(populate())
    db = data_dir / "shoal.db"
    assert main(["server", "migrate", "--from", f"sqlite:{db}", "--to", postgres_url]) == 0
    out = capsys.readouterr().out
    assert f"moved revision {revision}: 2 nodes" in out and ":shoal_test@" not in out  # no password
    # A second migration into the now populated database is refused, changing nothing.
    assert main(["server", "migrate", "--from", f"sqlite:{db}", "--to", postgres_url]) == 1
    assert "already holds a mesh" in capsys.readouterr().err

    async def resume() -> None:
        server = await _start(data_dir, postgres_url)
        try:
            async with node_client(server, alpha.key) as client:
                # Alpha's own credential and revision still hold: nothing new, no full map.
                assert (await client.poll(since=revision, wait=0)).kind == "none"
            gamma = await join(server, "gamma")  # a new host, on the new store
            async with node_client(server, alpha.key) as client:
                update = await client.poll(since=revision, wait=0)
            assert update.kind == "delta"
            assert [p.name for p in update.peers_changed] == ["gamma"]
            assert gamma.netmap.self_node.mesh_ip not in {p.mesh_ip for p in gamma.netmap.peers}
            assert sorted(p.name for p in gamma.netmap.peers) == ["alpha", "beta"]
            assert [c.name for c in gamma.netmap.containers] == ["web"]
            async with admin_client(server) as admin:  # the admin token moved too
                assert {t.id for t in await admin.list_tokens()}
        finally:
            await server.close()

    asyncio.run(resume())


def test_migrate_without_source_applies_the_schema(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["server", "migrate", "--to", postgres_url]) == 0
    assert "migrations applied: 1" in capsys.readouterr().out
    assert main(["server", "migrate", "--to", postgres_url]) == 0
    assert "none (up to date)" in capsys.readouterr().out
    assert main(["server", "migrate", "--to", "sqlite:x.db"]) == 1
    assert "expected postgresql://" in capsys.readouterr().err


async def test_a_replica_with_another_data_dir_does_not_start(
    tmp_path: Path, postgres_url: str
) -> None:
    """Replicas share the first server's key material; one with a data dir of its own would
    refuse every node the others registered, so it refuses to start instead."""
    first = await _start(tmp_path / "a", postgres_url)
    await first.close()
    with pytest.raises(ServerConfigError, match="needs a copy of the first server's data dir"):
        await _start(tmp_path / "b", postgres_url)
