"""`shoal sidecar`: the `up` it runs, and a container without NET_ADMIN refused in one line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from shoal.cli.main import build_parser
from shoal.cli.sidecar_cmds import up_args
from tests.control.test_cli import SHOAL


def test_flags_win_over_the_environment_and_the_host_has_no_docker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SHOAL_SERVER", "https://192.0.2.1:8443")
    monkeypatch.setenv("SHOAL_NAME", "from-env")
    monkeypatch.setenv("SHOAL_ADVERTISE_ADDR", "192.0.2.7")
    args = build_parser().parse_args(["sidecar", "--name", "web-sidecar"])
    up = up_args(args)
    assert (up.server, up.name, up.advertise_addr) == (
        "https://192.0.2.1:8443",
        "web-sidecar",
        "192.0.2.7",
    )
    assert up.no_docker and up.foreground and up.docker_host is None
    assert up.advertise_routes is None and up.state_dir == "/var/lib/shoal/agent"


def test_a_container_without_net_admin_is_told_the_option_in_one_line(tmp_path: Path) -> None:
    # setpriv drops NET_ADMIN from the bounding set: what a container without --cap-add gets.
    done = subprocess.run(
        ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", "--", *SHOAL,
         "sidecar", "--server", "https://192.0.2.1:8443", "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        "shoal: the sidecar needs CAP_NET_ADMIN in its container: docker run --cap-add "
        "NET_ADMIN (compose: cap_add: [NET_ADMIN])"
    ]
