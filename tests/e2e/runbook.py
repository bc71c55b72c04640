"""Operator steps for the end-to-end tests: join a host, start a container, wait for a state.

The tests read like a runbook: `join(lab, h1)`, `web = start_web(h1, "web1")`,
`assert ping(h1, "web1", ip_of_web2)`. Everything runs through the real `shoal` CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from shoal.lab import Lab, LabHost

SHOAL = str(Path(sys.executable).with_name("shoal"))
IMAGE = "shoal-lab/busybox:latest"

# A CGI that answers with the TCP peer's address: proves source IPs survive the mesh.
_WHOAMI_CGI = '#!/bin/sh\\necho "Content-Type: text/plain"\\necho\\necho "$REMOTE_ADDR"\\n'


def shoal(host: LabHost, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return host.exec([SHOAL, *args], check=check, timeout=120)


def up(
    lab: Lab, host: LabHost, token: str | None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`shoal up` on `host`; without a token it resumes from the host's state dir."""
    join = ["--server", str(lab.server_url), "--token", token] if token else []
    return shoal(
        host,
        "up",
        *join,
        "--name",
        host.name,
        "--advertise-addr",
        str(host.underlay_ip),
        "--state-dir",
        str(host.state_dir),
        check=check,
    )


def admin(lab: Lab, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """An admin command on the server host (credentials from its data dir)."""
    argv = ["ip", "netns", "exec", lab.server_netns, SHOAL, *args]
    argv += ["--data-dir", str(lab.server_data_dir)]
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60)


def status(host: LabHost) -> dict[str, Any]:
    out = shoal(host, "status", "--json", "--state-dir", str(host.state_dir), check=False)
    parsed: dict[str, Any] = json.loads(out.stdout)
    return parsed


def wait_until(what: str, probe: Callable[[], bool], timeout: float = 30.0) -> float:
    """Poll `probe` until true; return the seconds it took. Fails the test with `what`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if probe():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def start_web(host: LabHost, name: str) -> IPv4Address:
    """A container on the `shoal` network serving /cgi-bin/whoami on port 8080."""
    host.run_container(name, network="shoal", image=IMAGE, cmd=("sleep", "infinity"))
    host.container_exec(
        name,
        [
            "sh",
            "-c",
            f"mkdir -p /www/cgi-bin && printf '{_WHOAMI_CGI}' > /www/cgi-bin/whoami"
            " && chmod +x /www/cgi-bin/whoami && httpd -p 8080 -h /www",
        ],
    )
    return host.container_ip(name, network="shoal")


def ping(host: LabHost, container: str, dst: IPv4Address, count: int = 1) -> bool:
    result = host.container_exec(
        container, ["ping", "-c", str(count), "-W", "1", str(dst)], check=False
    )
    return result.returncode == 0


def host_ping(host: LabHost, dst: str) -> bool:
    """One ICMP echo from the host itself (the machine has busybox, not iputils)."""
    result = host.exec(["busybox", "ping", "-c", "1", "-W", "1", dst], check=False)
    return result.returncode == 0


def whoami(host: LabHost, container: str, dst: IPv4Address) -> str:
    """TCP from `container` to the web server at `dst`; returns the source IP the server saw."""
    # busybox wget's -T crashes this build (exit 139): the exec timeout bounds it instead.
    result = host.container_exec(
        container, ["wget", "-q", "-O", "-", f"http://{dst}:8080/cgi-bin/whoami"], timeout=15
    )
    # httpd listens dual-stack and reports IPv4 peers as [::ffff:a.b.c.d].
    return result.stdout.strip().removeprefix("[::ffff:").removesuffix("]")
