"""An operator's slips on a joined host leave its mesh as it was, as the lab's QA pass found
them: a `shoal down` given another --state-dir (it deleted the running agent's shoal0 and
firewall), a second `shoal up --foreground` on the running agent's state dir (it started, and
on its way out deleted the first one's socket and the containers' DNS redirect)."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from shoal.lab import Lab, LabHost
from tests.e2e.runbook import ping, shoal, start_web, status, up, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def pair(lab: Lab, join_token: str) -> Iterator[tuple[LabHost, LabHost]]:
    h1, h2 = lab.hosts[:2]
    for host in (h1, h2):
        up(lab, host, join_token)  # "already running" when another module joined it
    try:
        yield h1, h2
    finally:
        h1.docker("rm", "-f", "op-web1", check=False)
        h2.docker("rm", "-f", "op-web2", check=False)


def mesh_works(h1: LabHost, web2: str) -> bool:
    """By IP and by name, from a container on h1 to one on h2 (the name through shoal's DNS)."""
    by_name = h1.container_exec("op-web1", ["nslookup", "-type=a", "op-web2"], check=False)
    return ping(h1, "op-web1", IPv4Address(web2)) and web2 in by_name.stdout


def test_a_wrong_state_dir_or_a_second_agent_leaves_the_mesh_running(
    pair: tuple[LabHost, LabHost],
) -> None:
    h1, h2 = pair
    start_web(h1, "op-web1")
    web2 = str(start_web(h2, "op-web2"))
    wait_until("op-web1 -> op-web2 by IP and name", lambda: mesh_works(h1, web2))

    down = shoal(h1, "down", "--state-dir", str(h1.dir / "not-the-agents"))
    assert down.stdout.startswith("shoal: nothing to undo: no node was joined with state dir")
    second = shoal(h1, "up", "--foreground", "--state-dir", str(h1.state_dir), check=False)
    assert second.returncode == 1
    assert (
        second.stderr.strip()
        .splitlines()[-1]
        .startswith(f"shoal: an agent already runs with state dir {h1.state_dir}")
    )

    assert status(h1)["state"] == "RUNNING"
    assert h1.exec(["ip", "link", "show", "shoal0"], check=False).returncode == 0
    assert "SHOAL-DNS -i shoal-br0" in h1.exec(["iptables-save", "-t", "nat"]).stdout
    assert mesh_works(h1, web2)
