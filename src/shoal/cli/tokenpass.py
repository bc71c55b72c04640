"""Keeping the join token out of `ps`: `shoal up` given the token in its argv or in
$SHOAL_TOKEN overwrites it where /proc shows a process's argv and initial environment (the
agent runs for months, forked from this process or this process itself with --foreground,
and both stay readable all along). The token goes on in memory only.

Where that memory cannot be rewritten, `shoal up` starts again at once with the token in an
inherited pipe (`--token-fd`) and an environment without it: an interpreter start and the
CLI's imports again (30-60 ms of a join), which is why it is only the fallback.

Stdlib only: `main` calls this before any heavy import.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

TOKEN_ENV = "SHOAL_TOKEN"
_TOKEN_FLAGS = ("--token", "--token-file", "--token-fd")


def hide_token(args: argparse.Namespace) -> None:
    """When a token is in sight, overwrite it there, or else start `shoal up` again with the
    token in a pipe (and without $SHOAL_TOKEN); return when it is out of sight.

    Several sources at once are left to `read_token`, which refuses them."""
    given = [args.token is not None, args.token_file is not None, args.token_fd is not None]
    if sum(given) > 1 or os.geteuid() != 0:
        return  # not root: `up` refuses at once, no long-lived process holds the token
    token, seen = _in_sight(args)
    if not seen:
        return
    if all(_scrub(secret) for secret in seen):
        if token:
            args.token = token  # from the environment too: read_token finds it here
        os.environ.pop(TOKEN_ENV, None)  # and no command this process runs inherits it
        return
    if not token:  # only an unused $SHOAL_TOKEN: the clean environment is enough
        _start_again([sys.executable, "-m", "shoal.cli.main", *sys.argv[1:]])
        return
    argv = [sys.executable, "-m", "shoal.cli.main", *_without_token(sys.argv[1:])]
    read = _token_pipe(token.strip())
    if not _start_again([*argv, "--token-fd", str(read)]):
        os.close(read)


def _start_again(argv: list[str]) -> bool:
    """Exec `argv` without $SHOAL_TOKEN; False when this process cannot (no exec right): it
    goes on, the command still works."""
    try:
        os.execve(sys.executable, argv, _clean_env())
    except OSError:
        return False
    return True  # only where execve is not the real one (tests)


def _in_sight(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The token in use when it came in argv or the environment (else ""), and every token
    `ps` and /proc show for the life of the process: a $SHOAL_TOKEN beside another source is
    not used, but is shown all the same."""
    env = os.environ.get(TOKEN_ENV, "")
    if args.token not in (None, "-"):
        token = args.token
    elif args.token is None and args.token_file is None and args.token_fd is None:
        token = env
    else:
        token = ""
    return token, [t for t in dict.fromkeys((token, env)) if t.strip()]


def _scrub(token: str) -> bool:
    """Overwrite `token` in this process's argv and initial environment, the memory that
    /proc/PID/cmdline and /proc/PID/environ read (and a fork inherits); True when both no
    longer show it. Lengths stay: `ps` shows the same words, the token as asterisks."""
    secret = token.encode()
    if not secret:
        return False
    proc = Path("/proc/self")
    try:
        # Fields 48-51 of stat: where argv and the environment start and end (Linux >= 3.5);
        # the name in field 2 may hold spaces, ")" ends it.
        fields = (proc / "stat").read_text().rpartition(")")[2].split()
        regions = ((int(fields[45]), int(fields[46])), (int(fields[47]), int(fields[48])))
        with open(proc / "mem", "r+b", buffering=0) as mem:
            for start, end in regions:
                mem.seek(start)
                at = start
                for entry in mem.read(end - start).split(b"\0"):
                    # Whole entries only (`T`, `--token=T`, `SHOAL_TOKEN=T`): the other
                    # variables' values are still read from this memory.
                    if entry == secret or entry.endswith(b"=" + secret):
                        mem.seek(at + len(entry) - len(secret))
                        mem.write(b"*" * len(secret))
                    at += len(entry) + 1
        shown = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
    except (OSError, ValueError, IndexError):
        return False  # no /proc, or a kernel that refuses: the caller starts again instead
    return secret not in shown


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
