"""A corrupt or truncated state file is set aside and rebuilt, never a reason not to start;
one agent per state dir; the settings `shoal up` compares with."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from shoal.agent.config import UpSettings
from shoal.agent.errors import AgentAlreadyRunning
from shoal.agent.statefiles import CachedNetmap, NodeIdentity, StateDir
from shoal.testing.builders import netmap

IDENTITY = NodeIdentity(server_url="https://192.0.2.1:8443", ca_pem="PEM", node_id="n1", name="h1")


def filled(tmp_path: Path) -> StateDir:
    state = StateDir(tmp_path)
    state.ensure()
    state.private_key()
    state.save_identity(IDENTITY)
    state.save_netmap(CachedNetmap(netmap=netmap(1, [2]), received_at=datetime.now(UTC)))
    return StateDir(tmp_path)  # as the next start sees it


def names(state: StateDir) -> list[str]:
    return sorted(
        p.name.split(".corrupt-")[0] + (".corrupt" if ".corrupt-" in p.name else "")
        for p in state.path.iterdir()
    )


def test_a_whole_state_dir_reads_back(tmp_path: Path) -> None:
    state = filled(tmp_path)
    cached = state.cached_netmap()
    assert cached is not None and cached.netmap == netmap(1, [2])
    assert state.identity() == IDENTITY
    assert state.set_aside == []


def test_a_truncated_netmap_is_set_aside(tmp_path: Path) -> None:
    state = filled(tmp_path)
    path = state.path / "netmap.json"
    path.write_text(path.read_text()[:100])  # a crash in the middle of a write by hand
    assert state.cached_netmap() is None
    assert names(state) == ["netmap.json.corrupt", "node.json", "private.key"]
    (note,) = state.set_aside
    assert (
        note.startswith("netmap.json was unreadable (")
        and "set aside as netmap.json.corrupt-" in note
    )
    assert state.identity() == IDENTITY, (
        "the identity is untouched: the netmap comes from the server"
    )


def test_a_netmap_of_the_wrong_shape_is_set_aside(tmp_path: Path) -> None:
    state = filled(tmp_path)
    (state.path / "netmap.json").write_text('{"netmap": {"revision": "x"}}')
    assert state.cached_netmap() is None
    assert len(state.set_aside) == 1


def test_a_corrupt_identity_is_set_aside(tmp_path: Path) -> None:
    state = filled(tmp_path)
    (state.path / "node.json").write_bytes(b"\xff\xfe garbage")
    assert state.identity() is None
    assert names(state) == ["netmap.json", "node.json.corrupt", "private.key"]


def test_a_corrupt_private_key_takes_the_identity_with_it(tmp_path: Path) -> None:
    state = filled(tmp_path)
    (state.path / "private.key").write_text("not base64 at all\n")
    key = state.private_key()  # a new one
    assert state.private_key() == key
    assert names(state) == [
        "netmap.json.corrupt",
        "node.json.corrupt",
        "private.key",
        "private.key.corrupt",
    ]
    assert state.identity() is None and state.cached_netmap() is None


def test_one_agent_per_state_dir_until_it_ends(tmp_path: Path) -> None:
    # A second `shoal up --foreground` on a running agent's state dir once started and, on its
    # way out, deleted the first one's socket and the containers' DNS redirect.
    first = StateDir(tmp_path / "state")
    first.hold_lock()
    with pytest.raises(AgentAlreadyRunning, match="an agent already runs with state dir"):
        StateDir(tmp_path / "state").hold_lock()
    StateDir(tmp_path / "other").hold_lock()  # another state dir is another agent
    # The lock is the process's: a child it starts (wireguard-go) does not inherit it.
    assert first._lock_fd is not None and not os.get_inheritable(first._lock_fd)
    os.close(first._lock_fd)  # what the process's end does
    StateDir(tmp_path / "state").hold_lock()


def test_whether_an_agent_runs_is_asked_without_keeping_the_lock(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    assert not state.agent_running()  # no lock file yet
    state.hold_lock()
    assert StateDir(tmp_path / "state").agent_running()
    assert state._lock_fd is not None
    os.close(state._lock_fd)  # the agent ends
    assert not StateDir(tmp_path / "state").agent_running()
    StateDir(tmp_path / "state").hold_lock()  # asking took nothing


SETTINGS = UpSettings(
    advertise_addr=IPv4Address("192.0.2.7"),
    advertise_routes=(IPv4Network("192.168.5.0/24"),),
    listen_port=51821,
    docker_host="unix:///run/d.sock",
    metrics_listen=("127.0.0.1", 9469),
    key_max_age=None,
)


def test_settings_read_back_and_a_corrupt_file_is_set_aside(tmp_path: Path) -> None:
    state = filled(tmp_path)
    assert state.settings() is None  # never started
    state.save_settings(SETTINGS)
    assert StateDir(tmp_path).settings() == SETTINGS
    (tmp_path / "settings.json").write_text('{"listen_port": 0}')
    again = StateDir(tmp_path)
    assert again.settings() is None
    assert "settings.json.corrupt" in names(again) and again.set_aside


def test_leaving_forgets_the_settings_and_a_pending_join(tmp_path: Path) -> None:
    state = filled(tmp_path)
    state.mark_join_pending()
    state.save_settings(SETTINGS)
    assert state.join_pending()
    state.forget()
    assert not state.join_pending() and state.settings() is None
    assert not state.holds_node()


def test_each_changed_setting_is_one_line_as_the_operator_types_it() -> None:
    assert SETTINGS.changes(SETTINGS) == ()
    assert UpSettings().changes(SETTINGS) == (
        "--advertise-addr 192.0.2.7 => none",
        "--advertise-routes 192.168.5.0/24 => none",
        "--listen-port 51821 => 51820",
        "--docker-host unix:///run/d.sock => none",
        "--metrics-listen 127.0.0.1:9469 => none",
        "--key-max-age never => 90d",
    )
