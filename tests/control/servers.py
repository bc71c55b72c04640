"""Test helpers: a real control server on 127.0.0.1 (TLS, SQLite in tmp_path), a fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from shoal.control.app import RunningServer, start_server
from shoal.control.config import load_config
from shoal.control.limits import RateLimits
from shoal.control.listener import ConnectionLimits
from shoal.controlclient.client import ControlClient
from shoal.model.api import RegisterRequest, RegisterResponse, TokenCreateRequest
from shoal.model.keys import PrivateKey
from shoal.model.netmap import NetworkMap
from shoal.store.base import NodeRecord


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@asynccontextmanager
async def running_server(
    data_dir: Path,
    clock: FakeClock | None = None,
    heartbeat_timeout: float | None = None,
    connections: ConnectionLimits | None = None,
    rates: RateLimits | None = None,
) -> AsyncIterator[RunningServer]:
    """A started server; `connections` and `rates` replace the defaults (short timeouts)."""
    config = load_config(
        listen="127.0.0.1:0", data_dir=data_dir, heartbeat_timeout=heartbeat_timeout
    )
    config = replace(
        config,
        connections=connections or config.connections,
        rates=rates or config.rates,
    )
    server = await start_server(config, clock=clock or FakeClock())
    try:
        yield server
    finally:
        await server.close()


def admin_client(server: RunningServer) -> ControlClient:
    return ControlClient(server.url, server.ca.ca_pem, credential=server.admin_token)


def node_client(server: RunningServer, key: PrivateKey | None = None) -> ControlClient:
    """A client signing with `key` (a fresh key that is no node's, if None)."""
    return ControlClient(server.url, server.ca.ca_pem, node_key=key or PrivateKey.generate())


@dataclass(frozen=True)
class Joined:
    node_id: str
    netmap: NetworkMap
    key: PrivateKey


async def new_token(server: RunningServer, **kw: object) -> str:
    async with admin_client(server) as admin:
        return (await admin.create_token(TokenCreateRequest(**kw))).token  # type: ignore[arg-type]


async def join(
    server: RunningServer,
    name: str,
    token: str | None = None,
    key: PrivateKey | None = None,
    *,
    with_token: bool = True,
) -> Joined:
    """Register `name` signed with `key`; with a new single-use token unless one is given
    (or none at all: `with_token=False`, a node joining again)."""
    if with_token:
        token = token or await new_token(server)
    key = key or PrivateKey.generate()
    async with node_client(server, key) as client:
        reply: RegisterResponse = await client.register(
            RegisterRequest(token=token, name=name, public_key=key.public_key())
        )
    return Joined(node_id=reply.node_id, netmap=reply.netmap, key=key)


def rec(i: int, created_at: datetime = datetime(2026, 1, 1, tzinfo=UTC)) -> NodeRecord:
    """Node record number `i` (h{i}, 100.64.0.{i}, 10.42.{i}.0/24) as the store holds it."""
    return NodeRecord(
        id=f"n{i}",
        name=f"h{i}",
        public_key=PrivateKey(bytes([i]) * 32).public_key(),
        mesh_ip=IPv4Address(f"100.64.0.{i}"),
        subnet=IPv4Network(f"10.42.{i}.0/24"),
        endpoints=(),
        created_at=created_at,
    )
