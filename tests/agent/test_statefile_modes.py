"""The agent's state dir is 0700 and its files 0600, even when they were looser before
(issue 7, finding 9: pre-created state directories stayed 0755)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from shoal.agent.statefiles import StateDir


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_ensure_tightens_a_pre_made_dir_and_its_files(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)
    for name in ("node.json", "netmap.json", "private.key", "agent.log"):
        (path / name).write_text("{}")
        os.chmod(path / name, 0o644)
    state = StateDir(path)
    state.ensure()
    assert mode(path) == 0o700
    assert {p.name: mode(p) for p in path.iterdir()} == {
        "node.json": 0o600,
        "netmap.json": 0o600,
        "private.key": 0o600,
        "agent.log": 0o600,
    }


def test_new_state_files_are_private(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "fresh")
    state.ensure()
    state.private_key()
    assert mode(tmp_path / "fresh") == 0o700 and mode(tmp_path / "fresh" / "private.key") == 0o600
