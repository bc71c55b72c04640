"""The sidecar (issue 11 item 6), as an operator runs it: a container given only NET_ADMIN
and /dev/net/tun runs `shoal sidecar` and joins the mesh as its own node, with no agent of
the host involved; an app container sharing its network namespace (`--network
container:sidecar`, compose's `network_mode: service:shoal`) reaches a container on another
host by name, is seen there under the sidecar's mesh IP (no NAT), and serves the mesh.

The lab has no image with Python and wireguard-go: the sidecar process runs from this
checkout, entered into the sidecar container's network namespace, with a private
/var/run/wireguard, the container's own /etc/resolv.conf, and its capability bounding set cut
to NET_ADMIN (what `docker run --cap-add NET_ADMIN` gives a root process, less the default
set it does not need).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from shoal.lab import Lab, LabHost
from tests.e2e.runbook import IMAGE, SHOAL, start_web, up, wait_until, whoami

pytestmark = pytest.mark.e2e

PORT = 51821  # the host's own agent may hold 51820
APP_PORT = 8081
# Enter the sidecar container's network namespace with a private wireguard-go socket dir and
# the container's resolv.conf (what the container itself would see).
_ENTER = (
    'mount --bind "$1" /var/run/wireguard && mount --bind "$2" /etc/resolv.conf && shift 2 && '
    'exec nsenter --net="$0" -- setpriv --bounding-set=-all,+net_admin -- "$@"'
)


@dataclass(frozen=True)
class Sidecar:
    host: LabHost
    other: LabHost  # runs sc-web
    state_dir: Path
    web: IPv4Address  # sc-web on the other host

    def status(self) -> dict[str, Any]:
        out = subprocess.run(
            [SHOAL, "status", "--json", "--state-dir", str(self.state_dir)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        return json.loads(out.stdout) if out.returncode == 0 else {}


@pytest.fixture(scope="module")
def sidecar(lab: Lab, join_token: str) -> Iterator[Sidecar]:
    host, other = lab.hosts[0], lab.hosts[1]
    up(lab, other, join_token)  # "already running" when another module joined it
    web = start_web(other, "sc-web")
    host.docker(
        "run", "-d", "--name", "sc-sidecar", "--cap-add", "NET_ADMIN",
        "--device", "/dev/net/tun", "-p", f"{PORT}:{PORT}/udp", IMAGE, "sleep", "infinity",
    )  # fmt: skip
    pid = host.container_pid("sc-sidecar")
    resolv = host.docker("inspect", "-f", "{{.ResolvConfPath}}", "sc-sidecar").stdout.strip()
    base = host.dir / "sidecar"
    (base / "wireguard").mkdir(parents=True, exist_ok=True)
    (base / "token").write_text(join_token)
    (base / "token").chmod(0o600)
    state = base / "agent"
    argv = [
        "sh", "-c", _ENTER, f"/proc/{pid}/ns/net", str(base / "wireguard"), resolv,
        SHOAL, "sidecar", "--server", str(lab.server_url), "--token-file", str(base / "token"),
        "--name", "sc-sidecar", "--advertise-addr", str(host.underlay_ip),
        "--listen-port", str(PORT), "--state-dir", str(state),
    ]  # fmt: skip
    proc = host.popen(argv, log=base / "sidecar.log")
    try:
        yield Sidecar(host, other, state, web)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        # The container's namespace goes with it, and wireguard-go with its interface.
        for h, name in ((host, "sc-app"), (host, "sc-sidecar"), (other, "sc-web")):
            h.docker("rm", "-f", name, check=False)


def test_the_sidecar_joins_as_its_own_node_without_docker(sidecar: Sidecar) -> None:
    took = wait_until(
        "the sidecar RUNNING", lambda: sidecar.status().get("state") == "RUNNING", timeout=60
    )
    print(f"sidecar RUNNING {took:.2f}s after its start")
    me = sidecar.status()
    assert me["subnet"] is None and me["dataplane"] == "wireguard-go"
    assert IPv4Address(me["mesh_ip"]) in IPv4Network("100.64.0.0/10")


def test_an_app_sharing_its_namespace_is_on_the_mesh(sidecar: Sidecar) -> None:
    wait_until("the sidecar RUNNING", lambda: sidecar.status().get("state") == "RUNNING", 60)
    mesh_ip = sidecar.status()["mesh_ip"]
    host = sidecar.host
    host.docker(
        "run", "-d", "--name", "sc-app", "--network", "container:sc-sidecar", IMAGE,
        "sh", "-c", f"mkdir /www && cd /www && echo app > index.html && httpd -f -p {APP_PORT}",
    )  # fmt: skip

    def app_gets(url: str) -> str:
        got = host.container_exec("sc-app", ["wget", "-q", "-O", "-", url], check=False, timeout=15)
        return got.stdout.strip() if got.returncode == 0 else ""

    # By name (the sidecar's resolver answers .shoal), seen there as the sidecar's mesh IP.
    url = "http://sc-web.shoal:8080/cgi-bin/whoami"
    took = wait_until("the app reaches sc-web.shoal", lambda: bool(app_gets(url)), timeout=60)
    print(f"app -> sc-web.shoal answered after {took:.2f}s")
    assert app_gets(url).removeprefix("[::ffff:").removesuffix("]") == mesh_ip
    # And the other way: a container on another host reaches the app on the mesh IP.
    other = sidecar.other
    got = other.container_exec(
        "sc-web", ["wget", "-q", "-O", "-", f"http://{mesh_ip}:{APP_PORT}/"], timeout=15
    )
    assert got.stdout.strip() == "app"
    assert whoami(other, "sc-web", sidecar.web)  # sc-web itself is still served
