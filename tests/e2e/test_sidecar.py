"""The sidecar (issue 11 item 6), as an operator runs it: a container of the sidecar image
(`shoal-lab/sidecar:1`, built from Debian's packages like examples/sidecar/Dockerfile: see
`shoal.lab.images`), given only NET_ADMIN and /dev/net/tun, runs its entrypoint
`shoal sidecar` and joins the mesh as its own node, with no agent of its host involved. An app
container sharing its network namespace (`--network container:sc-sidecar`, compose's
`network_mode: service:shoal`) reaches a container on another host by name, is seen there
under the sidecar's mesh IP (no NAT), and is reached from there by IP and by the sidecar's
name.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from shoal.lab import Lab, LabHost, images
from tests.e2e.runbook import IMAGE, start_web, status, up, wait_until, whoami

pytestmark = pytest.mark.e2e

NAME = "sc-sidecar"
PORT = 51821  # the host's own agent may hold 51820
APP_PORT = 8081
SHOAL_IN_IMAGE = f"{images.VENV}/bin/shoal"  # the image's console script
TOKEN = "/run/secrets/join-token"  # where compose mounts a secret


@dataclass(frozen=True)
class Sidecar:
    host: LabHost  # runs the sidecar and the app, and no agent of its own for them
    other: LabHost  # runs sc-web
    web: IPv4Address  # sc-web on the other host

    def status(self) -> dict[str, Any]:
        """`shoal status --json` in the sidecar container ({} while it cannot answer yet);
        fails the test with the container's log once its entrypoint has exited."""
        out = self.host.container_exec(NAME, [SHOAL_IN_IMAGE, "status", "--json"], check=False)
        if out.returncode == 0:
            parsed: dict[str, Any] = json.loads(out.stdout)
            return parsed
        running = self.host.docker("inspect", "-f", "{{.State.Running}}", NAME, check=False)
        if running.stdout.strip() != "true":
            logs = self.host.docker("logs", "--tail", "20", NAME, check=False)
            raise AssertionError(f"{NAME} exited:\n{logs.stdout}{logs.stderr}")
        return {}


def peer_names(host: LabHost) -> set[str]:
    return {p["name"] for p in status(host).get("peers", [])}


@pytest.fixture(scope="module")
def sidecar(lab: Lab, join_token: str) -> Iterator[Sidecar]:
    host, other = lab.hosts[0], lab.hosts[1]
    started = time.monotonic()
    images.build(images.SIDECAR)  # `make lab-images` built it: a cache hit
    images.load(host.docker, host.dir, {images.SIDECAR_IMAGE})
    print(f"sidecar image ready on {host.name} in {time.monotonic() - started:.1f}s")
    up(lab, other, join_token)  # "already running" when another module joined it
    web = start_web(other, "sc-web")
    token = host.dir / "sidecar-token"
    token.write_text(join_token)
    token.chmod(0o600)
    try:
        host.docker(
            "run", "-d", "--name", NAME, "--cap-add", "NET_ADMIN", "--device", "/dev/net/tun",
            "-p", f"{PORT}:{PORT}/udp", "-v", f"{token}:{TOKEN}:ro", images.SIDECAR_IMAGE,
            "--server", str(lab.server_url), "--token-file", TOKEN, "--name", NAME,
            "--advertise-addr", str(host.underlay_ip), "--listen-port", str(PORT),
        )  # fmt: skip
        yield Sidecar(host, other, web)
    finally:
        # Leave the mesh (the next modules see no offline peer), then remove the containers:
        # the sidecar's namespace goes with it, and wireguard-go with its interface.
        left = host.container_exec(
            NAME, [SHOAL_IN_IMAGE, "down", "--leave"], check=False, timeout=60
        )
        logs = host.docker("logs", "--tail", "20", NAME, check=False)
        print(f"{NAME} log, last lines:\n{logs.stdout}{logs.stderr}")
        for h, name in ((host, "sc-app"), (host, NAME), (other, "sc-web")):
            h.docker("rm", "-f", name, check=False)
        token.unlink(missing_ok=True)
        # `down` stops the agent, the container's main process: the container ends and Docker
        # may kill the exec (137) right after it printed that it left. Its words decide.
        assert "left the mesh" in left.stdout, f"the sidecar did not leave: {left.stderr}"
        wait_until(f"{other.name} to drop {NAME}", lambda: NAME not in peer_names(other))


def test_the_sidecar_image_joins_as_its_own_node_without_docker(sidecar: Sidecar) -> None:
    took = wait_until(
        "the sidecar RUNNING", lambda: sidecar.status().get("state") == "RUNNING", timeout=90
    )
    print(f"sidecar RUNNING {took:.2f}s after `docker run`")
    me = sidecar.status()
    assert me["subnet"] is None and me["dataplane"] == "wireguard-go"
    assert IPv4Address(me["mesh_ip"]) in IPv4Network("100.64.0.0/10")
    # The image's entrypoint (PID 1) got NET_ADMIN beyond Docker's defaults and the TUN
    # device, nothing more.
    config = json.loads(sidecar.host.docker("inspect", NAME).stdout)[0]["HostConfig"]
    assert [c.removeprefix("CAP_") for c in config["CapAdd"]] == ["NET_ADMIN"]
    assert [d["PathOnHost"] for d in config["Devices"]] == ["/dev/net/tun"]
    assert not config["Privileged"]


def test_an_app_sharing_its_namespace_is_on_the_mesh(sidecar: Sidecar) -> None:
    wait_until("the sidecar RUNNING", lambda: sidecar.status().get("state") == "RUNNING", 90)
    mesh_ip = sidecar.status()["mesh_ip"]
    host = sidecar.host
    host.docker(
        "run", "-d", "--name", "sc-app", "--network", f"container:{NAME}", IMAGE,
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

    # The other way: a container on another host reaches the app by IP and by name.
    other = sidecar.other

    def web_gets(target: str) -> str:
        got = other.container_exec(
            "sc-web", ["wget", "-q", "-O", "-", f"http://{target}:{APP_PORT}/"], check=False,
            timeout=15,
        )  # fmt: skip
        return got.stdout.strip() if got.returncode == 0 else ""

    assert web_gets(mesh_ip) == "app"
    took = wait_until(
        f"sc-web reaches {NAME}.shoal", lambda: web_gets(f"{NAME}.shoal") == "app", timeout=30
    )
    print(f"sc-web -> {NAME}.shoal answered after {took:.2f}s")
    assert whoami(other, "sc-web", sidecar.web)  # sc-web itself is still served
