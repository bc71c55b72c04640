"""A throwaway dockerd inside a throwaway network namespace (see LAB.md)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.hostnet.conftest import netns
from tests.hostnet.netns import Netns, NetnsFactory

__all__ = ["Dockerd", "dockerd", "netns"]

IMAGE = "shoaltest:busybox"


@dataclass
class Dockerd:
    ns: Netns
    url: str
    state: Path
    argv: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    def cli(
        self, *argv: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """The docker CLI against this dockerd; TimeoutExpired past `timeout` (a wedged dockerd
        once left a `docker rm -f` waiting for good)."""
        return subprocess.run(
            ["docker", "-H", self.url, *argv],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def start(self) -> None:
        """Start dockerd (again) and wait until it answers."""
        with (self.state / "dockerd.log").open("ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while self.cli("version", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.state / "dockerd.log").read_text()[-2000:]
                pytest.fail(f"dockerd did not start: {tail}")
            time.sleep(0.1)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM dockerd by PID (SIGKILL after `timeout`) and wait for it to exit."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def image(self) -> str:
        """A busybox image made from the host's busybox-static (there is no registry)."""
        if self.cli("image", "inspect", IMAGE, check=False).returncode == 0:
            return IMAGE
        root = self.state / "rootfs"
        (root / "bin").mkdir(parents=True, exist_ok=True)
        shutil.copy(shutil.which("busybox") or "/bin/busybox", root / "bin" / "busybox")
        for applet in ("sh", "sleep"):  # sh: health checks run `/bin/sh -c CMD`
            (root / "bin" / applet).symlink_to("busybox")
        tar = subprocess.run(["tar", "-C", str(root), "-c", "."], capture_output=True, check=True)
        subprocess.run(
            ["docker", "-H", self.url, "import", "-", IMAGE],
            input=tar.stdout,
            capture_output=True,
            check=True,
        )
        return IMAGE


def _umount_under(path: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(str(path))), reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True)


@pytest.fixture
def dockerd(netns: NetnsFactory) -> Iterator[Dockerd]:
    if shutil.which("dockerd") is None:
        pytest.fail("dockerd not found: run scripts/install-deps.sh")
    ns = netns.new("dk")
    state = Path(f"/tmp/shoaltest-{os.getpid()}")
    _umount_under(state)
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    (state / "daemon.json").write_text("{}")
    sock = state / "docker.sock"
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
    daemon = Dockerd(ns, f"unix://{sock}", state, argv)
    try:
        daemon.start()
        yield daemon
    finally:
        if daemon.proc is not None:
            # A dockerd that no longer answers is stopped all the same (SIGKILL in `stop`).
            with contextlib.suppress(subprocess.TimeoutExpired):
                ids = daemon.cli("ps", "-aq", check=False, timeout=30).stdout.split()
                if ids:
                    daemon.cli("rm", "-f", *ids, check=False, timeout=60)
        daemon.stop()
        ns.wait_empty(5)
        _umount_under(state)
        with contextlib.suppress(OSError):
            shutil.rmtree(state)
