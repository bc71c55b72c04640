"""A throwaway dockerd inside a throwaway network namespace (see LAB.md)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.hostnet.conftest import netns
from tests.hostnet.netns import Netns, NetnsFactory

__all__ = ["Dockerd", "dockerd", "netns"]


@dataclass
class Dockerd:
    ns: Netns
    url: str
    state: Path

    def cli(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "-H", self.url, *argv], capture_output=True, text=True, check=check
        )

    def image(self) -> str:
        """A busybox image made from the host's busybox-static (there is no registry)."""
        root = self.state / "rootfs"
        (root / "bin").mkdir(parents=True, exist_ok=True)
        shutil.copy(shutil.which("busybox") or "/bin/busybox", root / "bin" / "busybox")
        (root / "bin" / "sleep").symlink_to("busybox")
        tar = subprocess.run(["tar", "-C", str(root), "-c", "."], capture_output=True, check=True)
        subprocess.run(
            ["docker", "-H", self.url, "import", "-", "shoaltest:busybox"],
            input=tar.stdout,
            capture_output=True,
            check=True,
        )
        return "shoaltest:busybox"


def _umount_under(path: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(str(path))), reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True)


@pytest.fixture
def dockerd(netns: NetnsFactory) -> Iterator[Dockerd]:
    if shutil.which("dockerd") is None:
        pytest.skip("no dockerd")
    ns = netns.new("dk")
    state = Path(f"/tmp/shoaltest-{os.getpid()}")
    _umount_under(state)
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    (state / "daemon.json").write_text("{}")
    sock = state / "docker.sock"
    log = (state / "dockerd.log").open("wb")
    flags = {
        "--config-file": state / "daemon.json",  # empty: /etc/docker/daemon.json stays out
        "--data-root": state / "data",
        "--exec-root": state / "exec",
        "--pidfile": state / "dockerd.pid",
        "-H": f"unix://{sock}",
        "--bip": "172.31.250.1/24",
        "--dns": "192.0.2.53",  # nothing leaks to the machine's resolver
    }
    argv = ["nsenter", f"--net={ns.path}", "dockerd"]
    for flag, value in flags.items():
        argv += [flag, str(value)]
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    daemon = Dockerd(ns, f"unix://{sock}", state)
    try:
        deadline = time.monotonic() + 30
        while daemon.cli("version", check=False).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dockerd did not start: {(state / 'dockerd.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield daemon
    finally:
        ids = daemon.cli("ps", "-aq", check=False).stdout.split()
        if ids:
            daemon.cli("rm", "-f", *ids, check=False)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        ns.wait_empty(5)
        _umount_under(state)
        with contextlib.suppress(OSError):
            shutil.rmtree(state)
