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
