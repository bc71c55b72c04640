"""`shoal up`'s token sources: one of --token, --token -, --token-file, $SHOAL_TOKEN, never
more, and the token kept out of the agent's argv and environment."""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import pytest

from shoal.cli.agent_cmds import BadArgument, _token_in_sight, _without_token, read_token
from shoal.model.tokens import MalformedToken

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
    assert _token_in_sight(args(token=TOKEN))
    assert not _token_in_sight(args(token="-"))
    assert not _token_in_sight(args(token_file="f"))
    monkeypatch.setenv("SHOAL_TOKEN", TOKEN)
    assert _token_in_sight(args())
    assert not _token_in_sight(args(token_fd=3))
    argv = ["up", "--token", TOKEN, "--server", "u", f"--token={TOKEN}", "--foreground"]
    assert _without_token(argv) == ["up", "--server", "u", "--foreground"]
