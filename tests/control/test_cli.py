"""The admin CLI against a `shoal server` subprocess on 127.0.0.1 with a tmp data dir."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.cli.server_cmds import cmd_services_admin
from shoal.controlclient.client import ControlClient
from shoal.controlclient.tls import fetch_pinned_ca
from shoal.model.api import ContainerReport, ContainersReport, RegisterRequest
from shoal.model.keys import PrivateKey
from shoal.model.tokens import parse_join_token

SHOAL = [sys.executable, "-m", "shoal.cli.main"]


def shoal(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SHOAL, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.fixture
def server_dir(tmp_path: Path) -> Iterator[Path]:
    data = tmp_path / "server"
    proc = subprocess.Popen(
        [*SHOAL, "server", "--listen", "127.0.0.1:0", "--data-dir", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not (data / "server.json").exists():  # written once the port is open
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not start: {proc.communicate()[0]}")
        time.sleep(0.05)
    try:
        yield data
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "server stopped" in out
        assert not (data / "server.json").exists()


def register(data: Path, token: str, name: str) -> None:
    url = json.loads((data / "server.json").read_text())["url"]

    async def run() -> None:
        ca = await fetch_pinned_ca(url, parse_join_token(token).fingerprint)
        key = PrivateKey.generate()
        async with ControlClient(url, ca, node_key=key) as client:
            await client.register(
                RegisterRequest(token=token, name=name, public_key=key.public_key())
            )

    asyncio.run(run())


def test_tokens_and_nodes_on_the_server_host(server_dir: Path) -> None:
    d = ("--data-dir", str(server_dir))
    created = shoal("token", "create", "--expires", "1h", "--tag", "web", *d)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert created.stdout == token + "\n" and token.startswith("SHOAL-1-")
    tid = parse_join_token(token).id

    listed = json.loads(shoal("token", "list", "--json", *d).stdout)
    assert [(t["id"], t["tags"], t["revoked"]) for t in listed] == [(tid, ["web"], False)]
    table = shoal("token", "list", *d).stdout
    assert tid in table and "active" in table

    register(server_dir, token, "alpha")
    nodes = json.loads(shoal("nodes", "--json", *d).stdout)
    assert [(n["name"], n["mesh_ip"], n["subnet"]) for n in nodes] == [
        ("alpha", "100.64.0.1", "10.42.0.0/24")
    ]
    assert "alpha" in shoal("nodes", *d).stdout

    second = shoal("token", "create", "--reusable", *d).stdout.strip()
    revoked = shoal("token", "revoke", parse_join_token(second).id, *d)
    assert revoked.returncode == 0, revoked.stderr
    states = {
        t["id"]: t["revoked"] for t in json.loads(shoal("token", "list", "--json", *d).stdout)
    }
    assert states == {tid: False, parse_join_token(second).id: True}

    assert shoal("node", "remove", "alpha", *d).returncode == 0
    assert json.loads(shoal("nodes", "--json", *d).stdout) == []
    missing = shoal("node", "remove", "alpha", *d)
    assert (
        missing.returncode == 1
        and missing.stderr == "shoal: no node named 'alpha' (see shoal nodes)\n"
    )


def test_remote_admin_with_server_and_env_token(server_dir: Path) -> None:
    url = json.loads((server_dir / "server.json").read_text())["url"]
    admin = (server_dir / "admin.token").read_text().strip()
    assert (server_dir / "admin.token").stat().st_mode & 0o777 == 0o600
    no_token = shoal("nodes", "--server", url, env={"SHOAL_ADMIN_TOKEN": ""})
    assert no_token.returncode == 1 and "SHOAL_ADMIN_TOKEN" in no_token.stderr
    ok = shoal("nodes", "--json", "--server", url, env={"SHOAL_ADMIN_TOKEN": admin})
    assert ok.returncode == 0 and json.loads(ok.stdout) == []
    wrong = "SHOAL-ADMIN-1-" + admin.split("-")[3] + "-" + "0" * 32
    refused = shoal("nodes", "--server", url, env={"SHOAL_ADMIN_TOKEN": wrong})
    assert refused.returncode == 1
    assert refused.stderr == "shoal: admin token not accepted by this server\n"


def test_admin_without_server_data(tmp_path: Path) -> None:
    result = shoal("token", "list", "--data-dir", str(tmp_path), env={"SHOAL_ADMIN_TOKEN": ""})
    assert result.returncode == 1
    assert result.stderr == (
        f"shoal: no server data in {tmp_path}; run on the server host or pass --server URL "
        "with SHOAL_ADMIN_TOKEN\n"
    )


def test_unreachable_server_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"https://127.0.0.1:{port}"
    token = "SHOAL-ADMIN-1-" + "0" * 64 + "-" + "0" * 32
    result = shoal("nodes", "--server", url, env={"SHOAL_ADMIN_TOKEN": token})
    assert result.returncode == 1
    assert result.stderr.startswith(f"shoal: cannot reach server at {url}: ")
    assert result.stderr.count("\n") == 1


def test_bad_expiry_is_a_usage_error(tmp_path: Path) -> None:
    result = shoal("token", "create", "--expires", "soon", "--data-dir", str(tmp_path))
    assert result.returncode == 1 and "--expires: invalid duration 'soon'" in result.stderr


def test_services_on_the_server_host(server_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = json.loads((server_dir / "server.json").read_text())["url"]
    token = shoal("token", "create", "--reusable", "--data-dir", str(server_dir)).stdout.strip()

    async def run() -> None:
        ca = await fetch_pinned_ca(url, parse_join_token(token).fingerprint)
        for i, name in enumerate(("alpha", "beta")):
            key = PrivateKey.generate()
            async with ControlClient(url, ca, node_key=key) as client:
                joined = await client.register(
                    RegisterRequest(token=token, name=name, public_key=key.public_key())
                )
                subnet = joined.netmap.self_node.subnet
                health = "healthy" if i == 0 else "unhealthy"
                await client.report_containers(
                    ContainersReport(
                        containers=(
                            ContainerReport(
                                id=f"{i + 1:064x}",
                                name=f"shop-web-{i + 1}",
                                ip=subnet.network_address + 2,
                                project="shop",
                                service="web",
                                health=health,
                            ),
                        )
                    )
                )

    asyncio.run(run())
    args = argparse.Namespace(json=False, data_dir=str(server_dir), server=None)
    assert cmd_services_admin(args) == 0
    assert capsys.readouterr().out.splitlines() == [
        "SERVICE   INSTANCES  HOSTS",
        "web.shop  1/2        alpha,beta",
    ]
    assert cmd_services_admin(argparse.Namespace(**{**vars(args), "json": True})) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(s["name"], len(s["instances"])) for s in listed] == [("web.shop", 2)]


def test_a_read_only_admin_token_from_anywhere(server_dir: Path) -> None:
    d = ("--data-dir", str(server_dir))
    created = shoal("admin", "token", "create", "--scope", "read", "--expires", "7d", *d)
    assert created.returncode == 0, created.stderr
    read = created.stdout.strip()
    assert read.startswith("SHOAL-ADMIN-1-")
    url = json.loads((server_dir / "server.json").read_text())["url"]
    env = {"SHOAL_ADMIN_TOKEN": read}
    assert shoal("nodes", "--server", url, env=env).returncode == 0
    refused = shoal("token", "create", "--server", url, env=env)
    assert refused.returncode != 0
    assert refused.stderr.strip().count("\n") == 0 and "read-only" in refused.stderr
    listed = shoal("admin", "token", "list", *d).stdout
    assert "read" in listed and "active" in listed


def test_rotate_ca_steps_on_the_command_line(server_dir: Path) -> None:
    wrong = shoal("server", "rotate-ca", "--finish", "--data-dir", str(server_dir))
    assert wrong.returncode != 0 and wrong.stderr.count("\n") == 1
    assert "shoal server rotate-ca" in wrong.stderr
    step1 = shoal("server", "--data-dir", str(server_dir), "rotate-ca")
    assert step1.returncode == 0, step1.stderr
    assert "introduced CA" in step1.stdout and "--finish" in step1.stdout
    assert (server_dir / "ca.next.pem").exists()
