"""`shoal up`'s token sources (one of --token, --token -, --token-file, $SHOAL_TOKEN, never
more, kept out of the agent's argv and environment), and what `shoal status` and `shoal down`
print from the agent's typed answers."""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from shoal.agent.config import AgentConfig, UpSettings
from shoal.agent.errors import AgentNotRunning, AgentStartFailed
from shoal.agent.statefiles import CachedNetmap, NodeIdentity, StateDir
from shoal.agent.systemd import AgentUnit, unit_name
from shoal.cli.agent_cmds import (
    BadArgument,
    NeedsRejoin,
    UpPlan,
    _plan_up,
    _resolve_target,
    _start_background,
    _stop_agent,
    cmd_down,
    cmd_status,
    collect_again,
    no_ca_bundle_at_import,
    read_token,
    render_down,
    render_status,
)
from shoal.cli.main import build_parser
from shoal.cli.tokenpass import _in_sight, _without_token, hide_token
from shoal.control.ca import _make_ca
from shoal.controlclient.tls import ca_fingerprint
from shoal.model.api import ServiceInfo, ServiceInstance
from shoal.model.keys import PrivateKey
from shoal.model.status import (
    AgentState,
    AgentStatus,
    DownReport,
    HealthWarning,
    PeerStatus,
    RelayUse,
    SubsystemDown,
)
from shoal.model.tokens import MalformedToken
from shoal.testing import builders
from shoal.testing.systemctl import fake_systemd

TOKEN = "SHOAL-1-" + "ab" * 32 + "-" + "cd" * 16


def args(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = {"token": None, "token_file": None, "token_fd": None}
    return argparse.Namespace(**(base | kw))


def test_every_source_gives_the_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    read, write = os.pipe()
    os.write(write, TOKEN.encode())
    os.close(write)
    monkeypatch.setattr("sys.stdin", io.StringIO(f"  {TOKEN}\n"))
    assert read_token(args(token=TOKEN)) == TOKEN
    assert read_token(args(token="-")) == TOKEN
    assert read_token(args(token_file=str(path))) == TOKEN
    assert read_token(args(token_fd=read)) == TOKEN
    monkeypatch.setenv("SHOAL_TOKEN", TOKEN)
    assert read_token(args()) == TOKEN
    monkeypatch.delenv("SHOAL_TOKEN")
    assert read_token(args()) is None


def test_bad_sources_fail_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(BadArgument, match="give the join token once"):
        read_token(args(token=TOKEN, token_file="x"))
    with pytest.raises(BadArgument, match="cannot read the join token"):
        read_token(args(token_file=str(tmp_path / "missing")))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(BadArgument, match="empty"):
        read_token(args(token_file=str(tmp_path / "empty")))
    (tmp_path / "junk").write_text("x" * 100_000)
    with pytest.raises(MalformedToken):
        read_token(args(token_file=str(tmp_path / "junk")))


def test_tokens_in_argv_or_env_are_moved_out_of_sight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOAL_TOKEN", raising=False)
    assert _in_sight(args(token=TOKEN)) == (TOKEN, [TOKEN])
    assert _in_sight(args(token="-")) == ("", [])
    assert _in_sight(args(token_file="f")) == ("", [])
    monkeypatch.setenv("SHOAL_TOKEN", TOKEN)
    assert _in_sight(args()) == (TOKEN, [TOKEN])
    # Not used beside another source, but /proc shows it all the same.
    assert _in_sight(args(token_fd=3)) == ("", [TOKEN])
    assert _in_sight(args(token="other")) == ("other", ["other", TOKEN])
    argv = ["up", "--token", TOKEN, "--server", "u", f"--token={TOKEN}", "--foreground"]
    assert _without_token(argv) == ["up", "--server", "u", "--foreground"]


def test_status_shows_each_warning_with_its_code_and_age() -> None:
    recently = datetime.now(UTC) - timedelta(seconds=30.5)
    status = AgentStatus(
        state=AgentState.NEEDS_JOIN,
        health=(
            HealthWarning(
                code="needs-join",
                message="the server rejected this node (node removed); join again: shoal up ...",
                since=recently,
            ),
        ),
    )
    assert render_status(status) == (
        "NEEDS_JOIN\n"
        "  ! needs-join: the server rejected this node (node removed); join again: shoal up ..."
        " (since 30s ago)"
    )
    (warning,) = json.loads(status.model_dump_json())["health"]
    assert set(warning) == {"code", "message", "since"}


def test_status_shows_this_hosts_nat_and_each_peers_path_and_nat() -> None:
    key = PrivateKey(b"\x02" * 32).public_key()
    relayed = PeerStatus(
        name="h7",
        public_key=key,
        mesh_ip=IPv4Address("100.64.0.7"),
        subnet=IPv4Network("10.42.7.0/24"),
        endpoint="192.0.2.2:443",
        path="relayed via tcp 192.0.2.2:443 (UDP blocked at h7)",
        via="relayed",
        relay=RelayUse(
            transport="tcp", address="192.0.2.2:443", on_server=True, local="127.0.0.1:40100"
        ),
        why="UDP blocked at h7",
        nat="udp-blocked",
    )
    status = RUNNING.model_copy(update={"nat": "hard", "peers": (relayed,)})
    lines = render_status(status).splitlines()
    assert "  nat hard (this host; `shoal netcheck` for details)" in lines
    header = next(line for line in lines if line.startswith("PEER"))
    (row,) = [line for line in lines if line.startswith("h7 ")]
    assert row[header.index("ENDPOINT") :].startswith("192.0.2.2:443 ")
    assert row[header.index("NAT") :].startswith("udp-blocked ")
    assert "127.0.0.1" not in row


def test_down_says_what_was_kept_and_what_failed() -> None:
    report = DownReport(
        subsystems=(
            SubsystemDown(subsystem="firewall", removed=False, error="iptables-restore failed"),
            SubsystemDown(subsystem="docker-network", removed=False, kept_for=("web-1", "web-2")),
            SubsystemDown(subsystem="tunnel", removed=True),
        ),
        left=False,
    )
    assert render_down(report).splitlines() == [
        "shoal: could not remove firewall: iptables-restore failed",
        "shoal: kept Docker network 'shoal': containers still attached: web-1, web-2",
        "shoal: could not reach the server to leave; `shoal node remove` there",
    ]
    alone = DownReport(subsystems=(SubsystemDown(subsystem="docker-network", removed=True),))
    assert render_down(alone).splitlines() == [
        "shoal: removed interface, routes and firewall rules",
        "shoal: removed Docker network 'shoal'",
    ]


RUNNING = AgentStatus(state=AgentState.RUNNING, name="h1")


def test_up_hands_the_agent_to_systemd_where_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = fake_systemd(tmp_path / "systemd")
    joined: list[str | None] = []

    async def join(config: AgentConfig) -> None:  # the real one registers with a server
        joined.append(config.token)

    answers: list[AgentStatus | None] = [None, RUNNING]  # not yet running; then up

    def fetch_status(socket: Path, timeout: float = 5.0) -> AgentStatus:
        answer = answers.pop(0)
        if answer is None:
            raise AgentNotRunning("no agent")
        return answer

    monkeypatch.setattr("shoal.agent.daemon.join", join)
    monkeypatch.setattr("shoal.cli.agent_cmds.fetch_status", fetch_status)
    config = AgentConfig(state_dir=tmp_path / "state", server_url="https://s", token=TOKEN)
    assert _start_background(config, fake.systemd) == 0
    assert joined == [TOKEN]  # joined in `shoal up`'s process ...
    unit = fake.dir / "units" / unit_name(config.state_dir)
    assert TOKEN not in unit.read_text()  # ... so the unit never sees the token
    assert fake.state()["active"] == [unit.name]
    assert "h1 is up" in capsys.readouterr().out


def test_down_stops_and_removes_the_unit_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = fake_systemd(tmp_path / "systemd")
    state_dir = tmp_path / "state"
    fake.systemd.install(AgentUnit(state_dir))
    monkeypatch.setattr("shoal.cli.agent_cmds.Systemd", lambda: fake.systemd)
    monkeypatch.setattr("os.geteuid", lambda: 0)
    reports = iter([DownReport(subsystems=(SubsystemDown(subsystem="tunnel", removed=True),))])
    monkeypatch.setattr("shoal.cli.agent_cmds.request_down", lambda *_: next(reports))
    assert cmd_down(argparse.Namespace(state_dir=str(state_dir), leave=False)) == 0
    assert fake.state()["active"] == [] and list((fake.dir / "units").iterdir()) == []
    assert capsys.readouterr().out.startswith(
        f"shoal: stopped and removed systemd unit {unit_name(state_dir)}\n"
    )


def test_a_forked_agent_that_fails_to_start_is_reported_in_one_line(tmp_path: Path) -> None:
    no_systemd = fake_systemd(tmp_path / "systemd", pid1="sh").systemd
    config = AgentConfig(state_dir=tmp_path / "state", docker_host="unix:///nonexistent.sock")
    with pytest.raises(AgentStartFailed) as failed:
        _start_background(config, no_systemd)  # forks the agent; it cannot reach Docker
    assert "\n" not in str(failed.value) and "nonexistent.sock" in str(failed.value)
    assert list((tmp_path / "systemd" / "units").iterdir()) == []


def test_a_token_in_argv_is_moved_to_a_pipe_where_it_cannot_be_overwritten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("shoal.cli.tokenpass._scrub", lambda _token: False)
    monkeypatch.setenv("SHOAL_TOKEN", "stale")
    monkeypatch.setattr("sys.argv", ["shoal", "up", "--server", "https://s", "--token", TOKEN])
    started: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr("os.execve", lambda _path, argv, env: started.append((argv, env)))
    hide_token(args(token=TOKEN))
    [(argv, env)] = started
    assert argv[-4:] == ["--server", "https://s", "--token-fd", argv[-1]]
    assert TOKEN not in " ".join(argv) and "SHOAL_TOKEN" not in env
    with os.fdopen(int(argv[-1]), "rb") as pipe:
        assert pipe.read().decode() == TOKEN
    monkeypatch.setattr("sys.argv", ["shoal", "up", "--server", "https://s", "--token", "-"])
    hide_token(args(token="-"))  # stdin: never in sight, but the stale $SHOAL_TOKEN is
    (argv, env) = started[1]
    assert argv[-2:] == ["--token", "-"] and "SHOAL_TOKEN" not in env
    monkeypatch.delenv("SHOAL_TOKEN")
    hide_token(args(token="-"))  # nothing in sight: nothing to do
    assert len(started) == 2


# The child's view of itself after `hide_token`, and what a command it runs inherits.
_HIDE_IN_CHILD = """
import argparse, os, subprocess, sys
from shoal.cli.tokenpass import hide_token
args = argparse.Namespace(token=sys.argv[2] if sys.argv[1] != "env" else None,
                          token_file=None, token_fd=None)
hide_token(args)  # a re-exec would fail the test: the child's output would be another's
inherited = subprocess.run(["sh", "-c", 'echo "$OTHER|$SHOAL_TOKEN"'], capture_output=True,
                           text=True).stdout.strip()
print(args.token == os.environ["EXPECTED"], inherited, flush=True)
sys.stdin.read()  # alive until the test has read its /proc files
"""


@pytest.mark.parametrize("source", ["argv", "env", "both"])
def test_a_token_in_sight_is_overwritten_in_place(source: str) -> None:
    """`both`: --token given and another token in $SHOAL_TOKEN, unused but shown by /proc."""
    env = {**os.environ, "OTHER": "kept " + TOKEN[:20], "EXPECTED": TOKEN}
    argv = [sys.executable, "-c", _HIDE_IN_CHILD, source]
    unused = TOKEN.replace("ab", "ef")
    if source != "env":
        argv.append(TOKEN)
        env.pop("SHOAL_TOKEN", None)
    if source != "argv":
        env["SHOAL_TOKEN"] = TOKEN if source == "env" else unused
    with subprocess.Popen(
        argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None and child.stdin is not None
        line = child.stdout.readline().split()
        shown = {
            what: Path(f"/proc/{child.pid}/{what}").read_bytes() for what in ("cmdline", "environ")
        }
        child.stdin.close()
    assert child.returncode == 0
    # The token reached the command, no child inherits it, other variables are intact.
    assert line == ["True", "kept", TOKEN[:20] + "|"]
    for text in shown.values():
        assert TOKEN.encode() not in text and unused.encode() not in text
    assert (b"*" * len(TOKEN)) in shown["cmdline" if source == "argv" else "environ"]


def test_collection_comes_back_on_frozen_after_a_start_with_it_off() -> None:
    gc.disable()  # as `main` does for `shoal up`
    try:
        collect_again()
        assert gc.isenabled() and gc.get_freeze_count() > 0
        frozen = gc.get_freeze_count()
        collect_again()  # on already: nothing more is frozen
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
        gc.enable()


def test_no_ca_bundle_at_import_restores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with no_ca_bundle_at_import():
        assert os.environ["SSL_CERT_FILE"] == os.devnull
    assert "SSL_CERT_FILE" not in os.environ
    monkeypatch.setenv("SSL_CERT_FILE", "/etc/mine.pem")
    with no_ca_bundle_at_import():
        pass
    assert os.environ["SSL_CERT_FILE"] == "/etc/mine.pem"


def test_aiohttp_imported_under_no_ca_bundle_parses_no_ca(tmp_path: Path) -> None:
    # A CA file of one certificate stands for the system's bundle. In a fresh interpreter
    # (this one imported aiohttp long ago): a default context made meanwhile holds no CA, one
    # made afterwards holds that one again.
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(_make_ca(datetime.now(UTC))[0].public_bytes(Encoding.PEM))
    probe = (
        "import ssl\n"
        "from shoal.cli.agent_cmds import no_ca_bundle_at_import\n"
        "with no_ca_bundle_at_import():\n"
        "    import aiohttp\n"
        "    inside = ssl.create_default_context().cert_store_stats()['x509_ca']\n"
        "print(inside, ssl.create_default_context().cert_store_stats()['x509_ca'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "SSL_CERT_FILE": str(bundle)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["0", "1"]


def up_config(*flags: str) -> AgentConfig:
    parsed = build_parser().parse_args(["up", "--server", "https://10.0.0.1:8443", *flags])
    return _plan_up(parsed).config


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (("--name", "web_01"), "--name 'web_01': a node name is a DNS label"),
        (("--name", "x" * 64), "a node name is a DNS label"),
        (("--listen-port", "0"), "--listen-port '0': expected 1 to 65535"),
        (("--listen-port", "70000"), "--listen-port '70000': expected 1 to 65535"),
        (("--advertise-addr", "0.0.0.0"), "--advertise-addr 0.0.0.0: 0.0.0.0:51820 is not a"),
        (("--advertise-addr", "127.0.0.1"), "127.0.0.1:51820 is not a unicast address"),
        (("--advertise-addr", "255.255.255.255"), "reserved or broadcast"),
    ],
)
def test_up_refuses_what_the_server_would_before_an_agent_starts(
    flags: tuple[str, ...], error: str
) -> None:
    # These once started an agent that died on a validation traceback in agent.log, and
    # `shoal up` said only "agent exited (1)".
    with pytest.raises(BadArgument, match=re.escape(error)):
        up_config("--token", TOKEN, *flags)


def test_up_names_a_host_name_that_cannot_be_a_node_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shoal.cli.agent_cmds.default_node_name", lambda: "db_primary")
    with pytest.raises(BadArgument, match=r"host's name 'db_primary' .* pass --name NAME"):
        up_config("--token", TOKEN)
    assert up_config("--token", TOKEN, "--name", "db-1").name == "db-1"
    assert up_config().name is None  # resuming: no name is sent


@pytest.mark.parametrize(
    ("state", "code"),
    [
        (AgentState.RUNNING, 0),
        (AgentState.DEGRADED, 1),
        (AgentState.NEEDS_JOIN, 1),
        (AgentState.STARTING, 1),
        (AgentState.STOPPED, 1),
    ],
)
def test_status_exits_non_zero_unless_running(
    state: AgentState, code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DEGRADED (the server away, a subsystem failing) once exited 0: a health check passed.
    answer = AgentStatus(state=state, name="h1")
    monkeypatch.setattr("shoal.cli.agent_cmds.fetch_status", lambda *_: answer)
    parsed = argparse.Namespace(state_dir=str(tmp_path), json=True)
    assert cmd_status(parsed) == code


def test_ping_takes_this_node_a_peer_an_ip_or_a_container_name() -> None:
    # The contract says `shoal ping NODE|IP|NAME`; a container's name was "unknown node".
    status = AgentStatus(
        state=AgentState.RUNNING, name="h1", mesh_ip=IPv4Address("100.64.0.1"), peers=()
    )
    web = ServiceInstance(
        container="web-1", node="h2", ip=IPv4Address("10.42.1.2"), health="none", online=True
    )
    catalog = [ServiceInfo(name="web-1", instances=(web,))]
    asked: list[str] = []

    def services() -> list[ServiceInfo]:
        asked.append("services")
        return catalog

    assert _resolve_target(status, "h1", services) == IPv4Address("100.64.0.1")
    assert _resolve_target(status, "10.42.7.9", services) == IPv4Address("10.42.7.9")
    assert asked == []  # the catalog is asked only for a name that is no node
    assert _resolve_target(status, "web-1", services) == IPv4Address("10.42.1.2")
    with pytest.raises(BadArgument, match="no node or container named 'nosuch'"):
        _resolve_target(status, "nosuch", services)


def joined_state(tmp_path: Path, settings: UpSettings | None = None) -> tuple[StateDir, str]:
    """A state dir joined to https://10.0.0.1:8443 as h1 (subnet 10.42.1.0/24); the token
    of that mesh."""
    ca_pem = _make_ca(datetime.now(UTC))[0].public_bytes(Encoding.PEM)
    state = StateDir(tmp_path / "state")
    state.ensure()
    state.save_identity(
        NodeIdentity(
            server_url="https://10.0.0.1:8443", ca_pem=ca_pem.decode(), node_id="n1", name="h1"
        )
    )
    state.save_netmap(CachedNetmap(netmap=builders.netmap(1, []), received_at=datetime.now(UTC)))
    if settings is not None:
        state.save_settings(settings)
    token = f"SHOAL-1-{ca_fingerprint(ca_pem)}-{'cd' * 16}"
    return state, token


def plan(state: StateDir, *flags: str) -> UpPlan:
    return _plan_up(build_parser().parse_args(["up", "--state-dir", str(state.path), *flags]))


SETTINGS = UpSettings(advertise_addr=IPv4Address("192.0.2.1"), listen_port=51821)


def test_up_on_a_joined_host_changes_only_the_flags_given(tmp_path: Path) -> None:
    state, token = joined_state(tmp_path, SETTINGS)
    # The same settings (omitted flags keep theirs; the server, name and token of this mesh).
    same = plan(state, "--server", "https://10.0.0.1:8443", "--token", token, "--name", "h1")
    assert same.changes == ()
    assert same.config.advertise_addr == IPv4Address("192.0.2.1")
    assert same.config.listen_port == 51821
    changed = plan(state, "--advertise-routes", "192.168.5.0/24", "--advertise-addr", "192.0.2.9")
    assert changed.changes == (
        "--advertise-addr 192.0.2.1 => 192.0.2.9",
        "--advertise-routes none => 192.168.5.0/24",
    )
    assert changed.config.advertise_routes == (IPv4Network("192.168.5.0/24"),)
    assert (
        changed.previous is not None and changed.previous.advertise_addr == SETTINGS.advertise_addr
    )
    # Once the agent started with them, the same routes are not registered again.
    state.save_settings(UpSettings.of(changed.config, SETTINGS))
    again = plan(state, "--advertise-routes", "192.168.5.0/24")
    assert again.changes == () and again.config.advertise_routes is None
    withdrawn = plan(state, "--advertise-routes", "", "--key-max-age", "30d")
    assert withdrawn.changes == (
        "--advertise-routes 192.168.5.0/24 => none",
        "--key-max-age 90d => 30d",
    )
    assert withdrawn.config.advertise_routes == ()
    # An empty value sets a setting back to its default.
    reset = plan(state, "--advertise-addr", "", "--metrics-listen", "", "--docker-host", "")
    assert reset.changes == ("--advertise-addr 192.0.2.9 => none",)
    assert reset.config.advertise_addr is None and reset.config.metrics_listen is None
    state.save_settings(UpSettings.of(withdrawn.config, SETTINGS))
    defaults = plan(state, "--listen-port", "", "--key-max-age", "")
    assert defaults.changes == ("--listen-port 51821 => 51820", "--key-max-age 30d => 90d")


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (("--server", "https://10.0.0.2:8443"), "--server https://10.0.0.2:8443: this host is"),
        (("--name", "h9"), "--name 'h9': this host is joined to https://10.0.0.1:8443 as h1"),
        (("--token", TOKEN), "--token: the token is for another mesh (CA abababababababab…)"),
        (("--no-docker",), "--no-docker: this host is joined to https://10.0.0.1:8443 as h1 with"),
    ],
)
def test_up_refuses_what_a_joined_node_cannot_change_in_place(
    tmp_path: Path, flags: tuple[str, ...], error: str
) -> None:
    state, _ = joined_state(tmp_path, SETTINGS)
    with pytest.raises(NeedsRejoin) as refused:
        plan(state, *flags)
    message = str(refused.value)
    assert message.startswith(error) and "\n" not in message
    assert message.endswith(
        f"leave first: `shoal down --leave --state-dir {state.path}`, then `shoal up` with a join"
        " token"
    )


def test_up_with_new_settings_restarts_the_units_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = fake_systemd(tmp_path / "systemd")
    state, _ = joined_state(tmp_path, SETTINGS)
    fake.systemd.install(AgentUnit(state.path, listen_port=51821))
    monkeypatch.setattr("shoal.agent.daemon.join", _no_join)
    monkeypatch.setattr("shoal.cli.agent_cmds.fetch_status", lambda *_a, **_k: RUNNING)
    unchanged = plan(state)
    assert _start_background(unchanged.config, fake.systemd, changes=unchanged.changes) == 0
    assert "agent already running here" in capsys.readouterr().out
    assert "restarted" not in fake.state()

    new = plan(state, "--listen-port", "51822", "--advertise-addr", "192.0.2.9")
    assert _start_background(new.config, fake.systemd, changes=new.changes) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "shoal: changing --advertise-addr 192.0.2.1 => 192.0.2.9",
        "shoal: changing --listen-port 51821 => 51822",
        "shoal: restarting the agent with the new settings (the tunnel keeps forwarding)",
        "shoal: h1 is up: mesh IP None, containers none (no Docker), 0 peer(s), RUNNING",
    ]
    assert fake.state()["restarted"] == [unit_name(state.path)]
    unit = (fake.dir / "units" / unit_name(state.path)).read_text()
    assert "--listen-port 51822" in unit
    # The unit's agent takes what its flags do not carry from the state dir.
    assert state.settings() == UpSettings(
        advertise_addr=IPv4Address("192.0.2.9"), listen_port=51822
    )


async def _no_join(config: AgentConfig) -> None:
    """`daemon.join` on a joined host registers only new routes (none in these tests)."""
    assert config.advertise_routes is None


def test_a_join_that_failed_after_registering_says_how_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, _ = joined_state(tmp_path)
    state.mark_join_pending()

    def failing_start(*_args: object, **_kw: object) -> int:
        raise AgentStartFailed("iptables-restore: line 3 failed")

    monkeypatch.setattr("shoal.cli.agent_cmds._start", failing_start)
    with pytest.raises(AgentStartFailed) as failed:
        _start_background(AgentConfig(state_dir=state.path), fake_systemd(tmp_path / "sd").systemd)
    assert str(failed.value) == (
        "iptables-restore: line 3 failed; the node stays registered (its token is spent): "
        f"`shoal up --state-dir {state.path}` again resumes it, `shoal down --leave --state-dir"
        f" {state.path}` withdraws it"
    )


def test_new_settings_that_fail_to_start_restart_the_previous_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state, _ = joined_state(tmp_path, SETTINGS)
    new = plan(state, "--listen-port", "53")
    started: list[int] = []

    def start(config: AgentConfig, *_args: object, **_kw: object) -> int:
        started.append(config.listen_port)
        if config.listen_port == 53:
            raise AgentStartFailed("listen udp :53: address already in use")
        return 0

    stopped: list[Path] = []
    monkeypatch.setattr("shoal.cli.agent_cmds._start", start)
    monkeypatch.setattr("shoal.cli.agent_cmds._stop_agent", lambda s: stopped.append(s.path))
    monkeypatch.setattr("shoal.cli.agent_cmds.fetch_status", lambda *_a, **_k: RUNNING)
    no_systemd = fake_systemd(tmp_path / "sd", pid1="sh").systemd
    with pytest.raises(AgentStartFailed) as failed:
        _start_background(new.config, no_systemd, changes=new.changes, previous=new.previous)
    assert str(failed.value) == (
        "listen udp :53: address already in use; the agent runs again with its previous settings"
    )
    assert stopped == [state.path] and started == [53, 51821]
    assert "shoal: changing --listen-port 51821 => 53" in capsys.readouterr().out


def test_a_restart_stops_the_running_agent_and_waits_for_its_state_dir(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.ensure()
    with pytest.raises(AgentStartFailed, match=r"cannot stop the running agent .*agent.pid"):
        _stop_agent(state)  # no pid file: says so, in one line
    # An agent as `_stop_agent` sees one: the state dir's lock, its pid file, SIGTERM ends it.
    holder = (
        "import fcntl, os, sys\n"
        f"fd = os.open({str(state.path / 'agent.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        f"open({str(state.pidfile)!r}, 'w').write(str(os.getpid()))\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    agent = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert agent.stdout is not None and agent.stdout.readline() == "locked\n"
        assert state.agent_running()
        _stop_agent(state)
        assert not state.agent_running()
        assert agent.wait(timeout=10) == -signal.SIGTERM
    finally:
        agent.kill()
        agent.wait()
