"""Bad input to `shoal up`: one clear line, a non-zero exit, nothing left on the host and no
change on the server. Every case runs on a spare lab host that never joins."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.lab import Lab, LabHost
from tests.e2e.runbook import SHOAL, admin

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def spare(lab: Lab) -> LabHost:
    return lab.add_host()


def token_ids(lab: Lab) -> set[str]:
    return {t["id"] for t in json.loads(admin(lab, "token", "list", "--json").stdout)}


def server_state(lab: Lab) -> tuple[list[str], list[str]]:
    """The nodes and the used tokens: what a failed join must not change."""
    nodes = json.loads(admin(lab, "nodes", "--json").stdout)
    tokens = json.loads(admin(lab, "token", "list", "--json").stdout)
    return sorted(n["name"] for n in nodes), sorted(t["id"] for t in tokens if t["used_at"])


def fingerprint(token: str) -> str:
    return token.split("-")[2]


def attempt_join(
    lab: Lab,
    host: LabHost,
    token: str,
    *extra: str,
    server: str | None = None,
    runner: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    argv = [
        *runner,
        SHOAL,
        "up",
        "--server",
        server or str(lab.server_url),
        "--token",
        token,
        "--name",
        host.name,
        "--advertise-addr",
        str(host.underlay_ip),
        "--state-dir",
        str(host.state_dir),
        *extra,
    ]
    return host.exec(argv, check=False, timeout=120)


def assert_untouched(host: LabHost) -> None:
    assert host.exec(["ip", "link", "show", "shoal0"], check=False).returncode != 0
    assert host.docker("network", "ls", "-q", "--filter", "name=^shoal$").stdout.strip() == ""
    assert "SHOAL" not in host.exec(["iptables-save"]).stdout
    assert not (host.state_dir / "agent.sock").exists()
    assert not (host.state_dir / "node.json").exists()


def assert_one_clear_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("shoal: "), result.stderr
    for word in words:
        assert word in last.lower(), last


@pytest.fixture
def unchanged(lab: Lab, spare: LabHost) -> Iterator[None]:
    before = server_state(lab)
    yield
    assert server_state(lab) == before
    assert_untouched(spare)


def test_wrong_secret(lab: Lab, spare: LabHost, join_token: str, unchanged: None) -> None:
    wrong = f"SHOAL-1-{fingerprint(join_token)}-{secrets.token_hex(16)}"
    assert_one_clear_line(attempt_join(lab, spare, wrong), "token")


def test_malformed_token(lab: Lab, spare: LabHost, unchanged: None) -> None:
    assert_one_clear_line(attempt_join(lab, spare, "not-a-token"), "token")


def test_revoked_token(lab: Lab, spare: LabHost, unchanged: None) -> None:
    before = token_ids(lab)
    token = admin(lab, "token", "create").stdout.strip()
    (token_id,) = token_ids(lab) - before
    admin(lab, "token", "revoke", token_id)
    assert_one_clear_line(attempt_join(lab, spare, token), "revoked")


def test_expired_token(lab: Lab, spare: LabHost, join_token: str, unchanged: None) -> None:
    token = admin(lab, "token", "create", "--expires", "1s").stdout.strip()
    subprocess.run(["sleep", "1.5"], check=True)
    assert_one_clear_line(attempt_join(lab, spare, token), "expired")


def test_ca_fingerprint_mismatch(
    lab: Lab, spare: LabHost, join_token: str, unchanged: None
) -> None:
    forged = f"SHOAL-1-{'0' * 64}-{join_token.split('-')[3]}"
    assert_one_clear_line(attempt_join(lab, spare, forged), "fingerprint")


def test_unreachable_server(lab: Lab, spare: LabHost, join_token: str, unchanged: None) -> None:
    result = attempt_join(lab, spare, join_token, server="https://192.0.2.2:9")
    assert_one_clear_line(result, "192.0.2.2:9")


def test_dockerd_not_running(lab: Lab, spare: LabHost, join_token: str, unchanged: None) -> None:
    result = attempt_join(
        lab, spare, join_token, "--docker-host", "unix:///nonexistent/docker.sock"
    )
    assert_one_clear_line(result, "docker")


def test_not_root(lab: Lab, spare: LabHost, join_token: str, unchanged: None) -> None:
    nobody = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    assert_one_clear_line(attempt_join(lab, spare, join_token, runner=nobody), "root")


def test_no_wireguard(lab: Lab, spare: LabHost, join_token: str, unchanged: None) -> None:
    # wireguard-go lives in /usr/bin; a PATH without it is a host without WireGuard.
    venv_bin = str(Path(sys.executable).parent)
    env_runner = ("env", f"PATH={venv_bin}:/usr/sbin:/sbin")
    assert_one_clear_line(attempt_join(lab, spare, join_token, runner=env_runner), "wireguard")


def test_container_pool_overlaps_a_route(
    lab: Lab, spare: LabHost, join_token: str, unchanged: None
) -> None:
    dev = spare.exec(["ip", "-j", "route", "show", "192.0.2.0/24"]).stdout
    dev_name = json.loads(dev)[0]["dev"]
    spare.exec(["ip", "route", "add", "10.42.200.0/24", "dev", dev_name])
    try:
        result = attempt_join(lab, spare, join_token)
    finally:
        spare.exec(["ip", "route", "del", "10.42.200.0/24", "dev", dev_name])
    assert_one_clear_line(result, "10.42.200.0/24")


@pytest.mark.parametrize(
    ("extra", "server", "words"),
    [
        # Each once started an agent that died on a traceback in agent.log ("agent exited
        # (1)"), or failed as "cannot reach server" for a URL that was never one.
        (("--name", "db_primary"), None, ("--name", "dns label")),
        (("--advertise-addr", "0.0.0.0"), None, ("--advertise-addr", "unicast")),
        (("--listen-port", "70000"), None, ("--listen-port",)),
        ((), "http://192.0.2.2:8443", ("https only",)),
        ((), "notaurl", ("--server", "https://host")),
    ],
)
def test_a_bad_flag_is_named_before_an_agent_starts(
    lab: Lab,
    spare: LabHost,
    join_token: str,
    unchanged: None,
    extra: tuple[str, ...],
    server: str | None,
    words: tuple[str, ...],
) -> None:
    result = attempt_join(lab, spare, join_token, *extra, server=server)
    assert_one_clear_line(result, *words)
    assert "starting agent" not in result.stderr
