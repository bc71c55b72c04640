"""`shoal`'s dispatch: errors as one line, and a reader that goes away is no traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

SHOAL = str(Path(sys.executable).with_name("shoal"))


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    # `shoal services --json | head` ended in a BrokenPipeError traceback.
    policy = tmp_path / "policy.yaml"
    policy.write_text('rules: [{from: "*", to: "*"}]\n')
    read, write = os.pipe()
    os.close(read)  # the reader is gone before shoal writes
    try:
        result = subprocess.run(
            [SHOAL, "policy", "check", str(policy)],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write)
    assert result.stderr == ""
    assert result.returncode == 128 + signal.SIGPIPE


def test_exit_at_once_runs_the_exit_handlers_and_flushes_the_streams() -> None:
    code = (
        "import atexit, sys\n"
        "from shoal.cli.main import _exit_at_once\n"
        "atexit.register(lambda: print('handler ran'))\n"
        "print('buffered', end=' ')\n"
        "sys.stderr.write('err')\n"
        "_exit_at_once(3)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (3, "buffered handler ran\n", "err")
