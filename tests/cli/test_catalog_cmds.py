"""`shoal env` and `shoal services` over a real local API on a unix socket: what a compose file
interpolates, in the formats a shell, a `.env` file and a tool read; errors as one line."""

from __future__ import annotations

import argparse
import asyncio
import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from aiohttp import web

from shoal.agent.errors import AgentNotRunning
from shoal.agent.localapi import serve
from shoal.cli.catalog_cmds import NotOnMesh, cmd_env, cmd_services, render_services
from shoal.cli.main import main
from shoal.model.api import ServiceInfo, ServiceInstance
from shoal.model.netmap import PortSpec
from shoal.model.status import AgentState, AgentStatus, DownReport

RUNNING = AgentStatus(
    state=AgentState.RUNNING,
    name="db-host",
    mesh_ip=IPv4Address("100.64.0.7"),
    subnet=IPv4Network("10.42.7.0/24"),
)
CACHE = ServiceInfo(
    name="cache.shop",
    project="shop",
    service="cache",
    dns="cache.shop.shoal",
    instances=(
        ServiceInstance(
            container="shop_cache_1",
            node="h2",
            ip=IPv4Address("10.42.2.3"),
            health="healthy",
            online=True,
            ports=(PortSpec(port=6379),),
        ),
    ),
)


async def agent(tmp_path: Path, status: AgentStatus) -> web.AppRunner:
    async def get_status() -> AgentStatus:
        return status

    async def down(leave: bool) -> DownReport:
        return DownReport(subsystems=())

    async def services() -> list[ServiceInfo]:
        return [CACHE]

    return await serve(tmp_path / "agent.sock", get_status, down, services)


def env_args(tmp_path: Path, *, export: bool = False, as_json: bool = False) -> argparse.Namespace:
    return argparse.Namespace(state_dir=str(tmp_path), export=export, json=as_json)


async def test_env_prints_what_compose_interpolates_in_three_forms(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = await agent(tmp_path, RUNNING)
    try:
        assert await asyncio.to_thread(cmd_env, env_args(tmp_path)) == 0
        assert capsys.readouterr().out.splitlines() == [
            "SHOAL_NODE=db-host",
            "SHOAL_MESH_IP=100.64.0.7",
            "SHOAL_SUBNET=10.42.7.0/24",
            "SHOAL_NETWORK=shoal",
            f"SHOAL_CATALOG_SOCKET={tmp_path / 'catalog.sock'}",
        ]
        await asyncio.to_thread(cmd_env, env_args(tmp_path, export=True))
        assert capsys.readouterr().out.startswith("export SHOAL_NODE=db-host\n")
        await asyncio.to_thread(cmd_env, env_args(tmp_path, as_json=True))
        assert json.loads(capsys.readouterr().out)["SHOAL_MESH_IP"] == "100.64.0.7"
    finally:
        await runner.cleanup()


async def test_env_of_an_agent_not_on_the_mesh_yet_says_so(tmp_path: Path) -> None:
    runner = await agent(tmp_path, AgentStatus(state=AgentState.STARTING))
    try:
        with pytest.raises(NotOnMesh, match="no mesh address yet"):
            await asyncio.to_thread(cmd_env, env_args(tmp_path))
    finally:
        await runner.cleanup()


def test_env_without_an_agent_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(AgentNotRunning):
        cmd_env(env_args(tmp_path))
    assert main(["env", "--state-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("shoal: no agent running")


async def test_services_shows_ports_and_json_carries_every_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = await agent(tmp_path, RUNNING)
    args = argparse.Namespace(
        state_dir=str(tmp_path), data_dir=None, server=None, watch=False, json=True
    )
    try:
        await asyncio.to_thread(cmd_services, args)
    finally:
        await runner.cleanup()
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["dns"] == "cache.shop.shoal"
    assert entry["instances"][0]["ports"] == [{"port": 6379, "protocol": "tcp"}]
    assert render_services([CACHE]).splitlines() == [
        "SERVICE     INSTANCE      HOST  IP         PORTS     HEALTH",
        "cache.shop  shop_cache_1  h2    10.42.2.3  6379/tcp  healthy",
    ]


def test_watch_follows_this_hosts_agent_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["services", "--watch", "--server", "https://192.0.2.1:8443"]) == 1
    assert "--watch follows this host's agent" in capsys.readouterr().err
