"""The mesh MTU: chosen at the server, carried in every full map, fixed once hosts joined."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.control.app import start_server
from shoal.control.config import load_config
from shoal.control.errors import ServerConfigError
from tests.control.servers import FakeClock, join


async def test_mtu_flag_reaches_hosts_and_cannot_change_under_them(tmp_path: Path) -> None:
    data = tmp_path / "server"
    server = await start_server(
        load_config(listen="127.0.0.1:0", data_dir=data, mtu=8920), clock=FakeClock()
    )
    try:
        joined = await join(server, "h1")
        assert joined.netmap.settings.mtu == 8920
    finally:
        await server.close()

    with pytest.raises(ServerConfigError, match="this mesh uses --mtu 8920 and has 1 nodes"):
        await start_server(
            load_config(listen="127.0.0.1:0", data_dir=data, mtu=1420), clock=FakeClock()
        )
    # Without the flag the mesh keeps its MTU.
    server = await start_server(load_config(listen="127.0.0.1:0", data_dir=data), clock=FakeClock())
    try:
        assert (await join(server, "h2")).netmap.settings.mtu == 8920
    finally:
        await server.close()


def test_mtu_out_of_range_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ServerConfigError, match="--mtu 576"):
        load_config(listen="127.0.0.1:0", data_dir=tmp_path, mtu=576)
