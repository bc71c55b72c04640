"""`shoal lab status|exec|down` as an operator runs them, from separate processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from shoal.lab import Lab

pytestmark = pytest.mark.e2e

SHOAL = [sys.executable, "-m", "shoal.cli.main"]


def shoal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SHOAL, *args], capture_output=True, text=True, timeout=120)


def test_status_exec_and_down_from_other_processes() -> None:
    name = f"c{os.getpid()}"
    lab = Lab.create(name, hosts=2, persistent=True)
    try:
        status = json.loads(shoal("lab", "status", "--name", name, "--json").stdout)
        assert [(h["name"], h["underlay_ip"]) for h in status["hosts"]] == [
            ("h1", "192.0.2.11"),
            ("h2", "192.0.2.12"),
        ]
        assert all(h["dockerd_running"] for h in status["hosts"])
        out = shoal("lab", "exec", "--name", name, "h2", "--", "sh", "-c", "echo $DOCKER_HOST")
        assert out.stdout.strip() == lab.host("h2").docker_host
        assert (
            shoal("lab", "exec", "--name", name, "h1", "--", "sh", "-c", "exit 7").returncode == 7
        )
        missing = shoal("lab", "exec", "--name", name, "h9", "--", "true")
        assert missing.returncode == 1 and "no host 'h9'" in missing.stderr
        assert shoal("lab", "down", "--name", name).returncode == 0
        assert not Lab.exists(name)
        again = shoal("lab", "down", "--name", name)
        assert again.returncode == 0 and f"no lab named {name}" in again.stderr
    finally:
        if Lab.exists(name):
            lab.destroy()
