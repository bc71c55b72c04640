"""`load_config`: the server command's flags become one validated `ServerConfig`, or a
`ServerConfigError` naming the flag."""

from __future__ import annotations

from datetime import timedelta
from ipaddress import IPv4Network, ip_network
from pathlib import Path

import pytest

from shoal.control.config import MAX_MTU, MIN_MTU, load_config
from shoal.control.errors import ServerConfigError
from shoal.control.liveness import DEFAULT_HEARTBEAT_TIMEOUT
from shoal.control.registry import DEFAULT_QUARANTINE


def test_flags_not_given_leave_the_stored_values_or_the_defaults(tmp_path: Path) -> None:
    config = load_config(listen=":8443", data_dir=str(tmp_path))
    assert (config.listen_host, config.listen_port, config.data_dir) == ("0.0.0.0", 8443, tmp_path)
    # None: what the mesh was created with (read from the store at start), else a default.
    assert config.mesh_pool is config.container_pool is config.mtu is None
    assert config.heartbeat_timeout == DEFAULT_HEARTBEAT_TIMEOUT
    assert config.address_quarantine == DEFAULT_QUARANTINE
    assert config.connections.exempt == ()


def test_flags_given_are_parsed_into_typed_values(tmp_path: Path) -> None:
    config = load_config(
        listen="[::1]:9000",
        data_dir=tmp_path,
        store="sqlite:///x.db",
        mesh_pool="100.80.0.0/12",
        container_pool="10.50.0.0/16",
        heartbeat_timeout=2.5,
        mtu=MIN_MTU,
        address_quarantine=timedelta(0),
        no_limits_from="127.0.0.0/8, 2001:db8::/32",
    )
    assert (config.listen_host, config.listen_port) == ("::1", 9000)
    assert config.store_url == "sqlite:///x.db"
    assert config.mesh_pool == IPv4Network("100.80.0.0/12")
    assert config.container_pool == IPv4Network("10.50.0.0/16")
    assert config.heartbeat_timeout == timedelta(seconds=2.5) and config.mtu == MIN_MTU
    assert config.address_quarantine == timedelta(0)
    assert config.connections.exempt == (ip_network("127.0.0.0/8"), ip_network("2001:db8::/32"))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"listen": "8443"}, r"--listen '8443': expected ADDR:PORT"),
        ({"listen": "0.0.0.0:http"}, r"--listen '0\.0\.0\.0:http'"),
        ({"listen": "0.0.0.0:70000"}, r"--listen '0\.0\.0\.0:70000'"),
        ({"mesh_pool": "100.64.0.1/10"}, r"--mesh-pool '100\.64\.0\.1/10': .*host bits"),
        ({"container_pool": "fd00::/64"}, r"--container-pool 'fd00::/64'"),
        ({"heartbeat_timeout": 0.5}, r"--heartbeat-timeout 0\.5: expected 1 to 3600 seconds"),
        ({"mtu": MAX_MTU + 1}, rf"--mtu {MAX_MTU + 1}: expected {MIN_MTU} to {MAX_MTU}"),
        ({"no_limits_from": "10.0.0.1/8"}, r"--no-limits-from '10\.0\.0\.1/8'"),
    ],
)
def test_a_bad_flag_is_a_config_error_naming_it(
    tmp_path: Path, flags: dict[str, object], message: str
) -> None:
    given: dict[str, object] = {"listen": "127.0.0.1:0", **flags}
    with pytest.raises(ServerConfigError, match=message):
        load_config(data_dir=tmp_path, **given)  # type: ignore[arg-type]
