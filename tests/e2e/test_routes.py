"""A subnet router as an operator runs one, in the lab: a host offers a network that is not
Docker's (a LAN behind it, one plain machine on it) with `shoal up --advertise-routes`; until
the admin approves the route no container elsewhere reaches that machine; once approved a
container on another host reaches it by IP (the machine sees the router's LAN address: no
route back to the mesh is needed); once rejected it is unreachable again. The host changes its
list with `shoal down` and `shoal up --advertise-routes`. A route overlapping the container
pool is refused at `shoal up` with one line saying why.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from ipaddress import IPv4Network

import pytest

from shoal.lab import IMAGE, Lab, LabHost
from shoal.lab.lab import LabOutsider
from tests.e2e.runbook import admin, ping, shoal, up, wait_until

pytestmark = pytest.mark.e2e

LAN = IPv4Network("192.168.77.0/24")
WEB_PORT = 8080
# A CGI answering with the TCP peer's address: who the LAN machine sees connecting.
_WHOAMI = '#!/bin/sh\necho "Content-Type: text/plain"\necho\necho "$REMOTE_ADDR"\n'


def up_routing(lab: Lab, host: LabHost, token: str, routes: str, check: bool = True) -> str:
    """`shoal up --advertise-routes routes` on a host that has not joined; its stderr."""
    done = shoal(
        host,
        "up",
        "--server",
        str(lab.server_url),
        "--token",
        token,
        "--name",
        host.name,
        "--advertise-addr",
        str(host.underlay_ip),
        "--advertise-routes",
        routes,
        "--state-dir",
        str(host.state_dir),
        check=check,
    )
    return done.stderr


def routes(lab: Lab) -> list[dict[str, str]]:
    listed: list[dict[str, str]] = json.loads(admin(lab, "routes", "list", "--json").stdout)
    return listed


@pytest.fixture(scope="module")
def mesh(lab: Lab, join_token: str) -> Iterator[tuple[LabHost, LabHost, LabOutsider]]:
    """A new host (the router, fresh: the lab's own may have joined without routes) with a
    LAN behind it serving whoami on 8080, and h2 with a container `rt-client`."""
    router = lab.add_host()
    client = lab.hosts[1]
    machine = lab.add_lan(router, LAN)
    www = router.dir / "lan-www"
    (www / "cgi-bin").mkdir(parents=True)
    (www / "cgi-bin" / "whoami").write_text(_WHOAMI)
    (www / "cgi-bin" / "whoami").chmod(0o755)
    # busybox httpd forks into the background; `destroy` kills what is left in the netns.
    machine.exec(["busybox", "httpd", "-p", str(WEB_PORT), "-h", str(www)])
    up_routing(lab, router, join_token, str(LAN))
    up(lab, client, join_token)  # "already running" when another module joined it
    client.run_container("rt-client", network="shoal", image=IMAGE, cmd=("sleep", "infinity"))
    try:
        yield router, client, machine
    finally:
        client.docker("rm", "-f", "rt-client", check=False)


def fetch_whoami(client: LabHost, machine: LabOutsider) -> str | None:
    """What the LAN machine saw as the TCP peer of `rt-client`; None when it is unreachable."""
    url = f"http://{machine.ip}:{WEB_PORT}/cgi-bin/whoami"
    got = client.container_exec(
        "rt-client", ["wget", "-q", "-O", "-", url], check=False, timeout=15
    )
    return got.stdout.strip().removeprefix("[::ffff:").removesuffix("]") or None


def test_a_lan_behind_a_host_is_reached_once_its_route_is_approved_and_not_after_rejection(
    lab: Lab, mesh: tuple[LabHost, LabHost, LabOutsider]
) -> None:
    router, client, machine = mesh
    [route] = routes(lab)
    assert (route["node"], route["prefix"], route["status"]) == (router.name, str(LAN), "pending")
    assert not ping(client, "rt-client", machine.ip)  # pending: no host routes it

    approved = admin(lab, "routes", "approve", route["id"]).stdout
    assert f"route {LAN} of {router.name} approved" in approved
    took = wait_until(
        "the LAN machine answers rt-client", lambda: ping(client, "rt-client", machine.ip)
    )
    print(f"approved route usable after {took:.2f}s")
    # Masqueraded by the router: the machine sees the router's own LAN address.
    assert fetch_whoami(client, machine) == str(LAN[1])

    admin(lab, "routes", "reject", str(LAN))  # by prefix this time
    wait_until("the LAN gone for rt-client", lambda: not ping(client, "rt-client", machine.ip))
    assert fetch_whoami(client, machine) is None
    assert [r["status"] for r in routes(lab)] == ["rejected"]


def test_a_joined_host_changes_its_routes_with_down_and_up(
    lab: Lab, mesh: tuple[LabHost, LabHost, LabOutsider]
) -> None:
    """Resumed from its state dir with a new list: a new route is pending, a known one keeps
    the admin's decision (rejected by the test above), and the host stays joined as itself."""
    router, _client, _machine = mesh
    shoal(router, "down", "--state-dir", str(router.state_dir))
    extra = "172.31.9.0/24"
    shoal(
        router,
        "up",
        "--advertise-routes",
        f"{LAN},{extra}",
        "--state-dir",
        str(router.state_dir),
    )
    assert {(r["prefix"], r["status"]) for r in routes(lab)} == {
        (str(LAN), "rejected"),
        (extra, "pending"),
    }
    assert [n for n in admin(lab, "nodes").stdout.split() if n == router.name] == [router.name]


def test_a_route_overlapping_the_container_pool_is_refused_at_up(
    lab: Lab, join_token: str, mesh: tuple[LabHost, LabHost, LabOutsider]
) -> None:
    host = lab.add_host()
    err = up_routing(lab, host, join_token, "10.42.200.0/24", check=False)
    lines = [line for line in err.splitlines() if line.startswith("shoal:")]
    assert lines[-1].startswith("shoal: ") and "overlaps the mesh's container pool" in lines[-1]
    assert "Traceback" not in err
    assert host.name not in admin(lab, "nodes").stdout
