"""Keeping the join token out of `ps`: `shoal up` given the token in its argv or in
$SHOAL_TOKEN starts again at once with the token in an inherited pipe (`--token-fd`) and an
environment without it. The agent runs for months (forked from this process, or this process
itself with --foreground), and a process's argv and initial environment are readable in
/proc all along.

Stdlib only: `main` calls this before any heavy import, so the second start costs an
interpreter start and no more.
"""

from __future__ import annotations

import argparse
import os
import sys

TOKEN_ENV = "SHOAL_TOKEN"
_TOKEN_FLAGS = ("--token", "--token-file", "--token-fd")


def hide_token(args: argparse.Namespace) -> None:
    """Start `shoal up` again with the token in a pipe when it is in sight; else return.

    Several sources at once are left to `read_token`, which refuses them."""
    given = [args.token is not None, args.token_file is not None, args.token_fd is not None]
    if sum(given) > 1 or not _token_in_sight(args):
        return
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV, "")
    read = _token_pipe(token.strip())
    argv = [sys.executable, "-m", "shoal.cli.main", *_without_token(sys.argv[1:])]
    os.execve(sys.executable, [*argv, "--token-fd", str(read)], _clean_env())


def _token_in_sight(args: argparse.Namespace) -> bool:
    """The token came in argv or the environment, where `ps` and /proc show it for the life
    of the process."""
    return (args.token not in (None, "-")) or (
        args.token is None and args.token_file is None and args.token_fd is None
        and bool(os.environ.get(TOKEN_ENV, "").strip())
    )  # fmt: skip


def _token_pipe(token: str) -> int:
    """A pipe holding the token, its read end inheritable: how the token reaches the agent
    process without appearing in its argv or environment."""
    read, write = os.pipe()
    os.write(write, token.encode())
    os.close(write)
    os.set_inheritable(read, True)
    return read


def _without_token(argv: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _TOKEN_FLAGS:
            skip = True
        elif not arg.startswith(tuple(f"{flag}=" for flag in _TOKEN_FLAGS)):
            out.append(arg)
    return out


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
