"""A host without Docker (a laptop, a VM with a natively installed service) on the mesh, as an
operator runs it in the lab: a lab host with no dockerd joins with `shoal up --no-docker`
(a mesh IP, no container subnet), reaches a container on another host by IP and by name
through its own resolver (/etc/resolv.conf here: the lab has no systemd-resolved), and a
container reaches a service it runs on its mesh address, by its node name; `shoal down`
gives the host its resolv.conf back.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

import pytest

from shoal.dns.hostresolver import MARK
from shoal.lab import Lab, LabHost
from shoal.lab.lab import listening
from tests.e2e.runbook import shoal, start_web, status, up, wait_until

pytestmark = pytest.mark.e2e

SERVICE_PORT = 9393  # the bare host's own service, bound to its mesh IP only


@pytest.fixture(scope="module")
def hosts(lab: Lab, join_token: str) -> Iterator[tuple[LabHost, LabHost, IPv4Address]]:
    """A new host without dockerd, joined with --no-docker, and h2 with web `nd-web`."""
    bare = lab.add_host(docker=False)
    docker_host = lab.hosts[1]
    shoal(
        bare,
        "up",
        "--server",
        str(lab.server_url),
        "--token",
        join_token,
        "--name",
        bare.name,
        "--advertise-addr",
        str(bare.underlay_ip),
        "--no-docker",
        "--state-dir",
        str(bare.state_dir),
    )
    up(lab, docker_host, join_token)  # "already running" when another module joined it
    web = start_web(docker_host, "nd-web")
    try:
        yield bare, docker_host, web
    finally:
        docker_host.docker("rm", "-f", "nd-web", check=False)


def test_it_joins_with_a_mesh_ip_and_no_container_subnet(
    hosts: tuple[LabHost, LabHost, IPv4Address],
) -> None:
    bare, _docker_host, _web = hosts
    me = status(bare)
    assert me["state"] == "RUNNING" and me["subnet"] is None
    assert IPv4Address(me["mesh_ip"]) in IPv4Network("100.64.0.0/10")
    assert bare.resolv_conf.read_text().startswith(f"nameserver {me['mesh_ip']} {MARK}\n")


def test_it_reaches_a_container_by_ip_and_by_name(
    hosts: tuple[LabHost, LabHost, IPv4Address],
) -> None:
    bare, _docker_host, web = hosts
    mesh_ip = status(bare)["mesh_ip"]
    wait_until(
        "nd-web answers the bare host",
        lambda: _wget(bare, f"http://{web}:8080/cgi-bin/whoami") == 0,
    )
    # The resolver of the host itself (busybox reads /etc/resolv.conf): the agent answers.
    took = wait_until(
        "nd-web.shoal resolves on the bare host",
        lambda: (
            bare.exec(["busybox", "nslookup", "-type=a", "nd-web.shoal"], check=False).stdout.count(
                str(web)
            )
            > 0
        ),
    )
    print(f"nd-web.shoal resolved on the bare host after {took:.2f}s")
    got = bare.exec(["busybox", "wget", "-q", "-O", "-", "http://nd-web.shoal:8080/cgi-bin/whoami"])
    # No NAT inside the mesh: the container sees the bare host's mesh IP.
    assert got.stdout.strip().removeprefix("[::ffff:").removesuffix("]") == mesh_ip
    # Its own node name, and names outside the mesh (forwarded to the lab's upstream resolver).
    own = bare.exec(["busybox", "nslookup", "-type=a", f"{bare.name}.shoal"], check=False)
    # (The server's own line reads "Address: <ip>:53"; the answer's has no port.)
    assert ["Address:", mesh_ip] in [line.split() for line in own.stdout.splitlines()]
    upstream = bare.exec(["busybox", "nslookup", "-type=a", "www.lab.test"], check=False)
    assert "192.0.2.80" in upstream.stdout


def test_a_container_reaches_its_service_on_its_mesh_address_by_name(
    hosts: tuple[LabHost, LabHost, IPv4Address],
) -> None:
    bare, docker_host, _web = hosts
    mesh_ip = status(bare)["mesh_ip"]
    server = bare.popen(
        [sys.executable, "-m", "http.server", str(SERVICE_PORT), "--bind", mesh_ip],
        log=bare.dir / "service.log",
    )
    try:
        wait_until("the bare host's service", lambda: listening(server.pid, SERVICE_PORT))
        assert whoami_ok(docker_host, f"http://{bare.name}.shoal:{SERVICE_PORT}/")
        assert whoami_ok(docker_host, f"http://{mesh_ip}:{SERVICE_PORT}/")
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_down_gives_the_host_its_resolver_back(
    hosts: tuple[LabHost, LabHost, IPv4Address],
) -> None:
    bare, _docker_host, _web = hosts
    shoal(bare, "down", "--state-dir", str(bare.state_dir))
    assert MARK not in bare.resolv_conf.read_text()
    assert bare.resolv_conf.read_text().startswith("nameserver ")


def _wget(host: LabHost, url: str) -> int:
    return host.exec(
        ["busybox", "wget", "-q", "-O", "/dev/null", url], check=False, timeout=15
    ).returncode


def whoami_ok(host: LabHost, url: str) -> bool:
    """A container on `host` fetches `url` (by name: Docker's DNS forwards to the agent)."""
    got = host.container_exec(
        "nd-web", ["wget", "-q", "-O", "/dev/null", url], check=False, timeout=15
    )
    return got.returncode == 0
