"""`shoal up` as an operator reruns it: a join whose host configuration failed resumes with its
spent single-use token, and a second `shoal up` applies new settings to the running agent
(same node, no packet lost) or says in one line why it cannot."""

from __future__ import annotations

import json
import subprocess

import pytest

from shoal.lab import Lab, LabHost
from tests.e2e.runbook import admin, host_ping, shoal, status, up, wait_until

pytestmark = pytest.mark.e2e

ROUTE = "192.168.77.0/24"  # an office LAN behind the host; never approved, so never routed


@pytest.fixture(scope="module")
def spare(lab: Lab, join_token: str) -> LabHost:
    """A host of its own (the lab's first three stay as other modules use them), and h1 up,
    its peer."""
    up(lab, lab.hosts[0], join_token)  # "already running" when another module joined it
    return lab.add_host()


def node_names(lab: Lab) -> list[str]:
    return sorted(n["name"] for n in json.loads(admin(lab, "nodes", "--json").stdout))


def routes_of(lab: Lab, host: LabHost) -> list[str]:
    routes = json.loads(admin(lab, "routes", "list", "--json").stdout)
    return [r["prefix"] for r in routes if r["node"] == host.name]


def up_with(host: LabHost, *flags: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A second `shoal up` on a joined host: only the flags that change something."""
    return shoal(host, "up", *flags, "--state-dir", str(host.state_dir), check=check)


def test_a_join_that_failed_on_the_host_resumes_with_its_spent_single_use_token(
    lab: Lab, spare: LabHost
) -> None:
    token = lab.create_token(reusable=False)
    # A Docker network named `shoal` in use, with another subnet: the agent cannot make its
    # own, so the host's first configuration fails after the server registered the node.
    spare.docker("network", "create", "--subnet", "10.99.0.0/24", "shoal")
    spare.run_container("squatter", network="shoal")
    try:
        failed = up(lab, spare, token, check=False)
    finally:
        spare.docker("rm", "-f", "squatter")
        spare.docker("network", "rm", "shoal")
    assert failed.returncode != 0 and "Traceback" not in failed.stderr, failed.stderr
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("shoal: ") and "the node stays registered (its token is spent)" in last
    # The host was rolled back; the node's registration and key were kept.
    assert spare.exec(["ip", "link", "show", "shoal0"], check=False).returncode != 0
    assert not (spare.state_dir / "agent.sock").exists()
    assert spare.name in node_names(lab)

    retried = up(lab, spare, token)  # the same, spent token: the node resumes without it
    assert f"shoal: {spare.name} is up" in retried.stdout
    assert "the join token was not used" in retried.stderr
    assert not (spare.state_dir / "join.pending").exists()
    h1 = status(lab.hosts[0])
    wait_until("spare -> h1 over the mesh", lambda: host_ping(spare, str(h1["mesh_ip"])), 30)


def test_up_with_new_settings_restarts_the_agent_as_the_same_node_without_loss(
    lab: Lab, spare: LabHost, join_token: str
) -> None:
    up(lab, spare, join_token)  # joined (or "already running": the test above joined it)
    before = status(spare)
    key = (spare.state_dir / "private.key").read_text()
    h1_mesh_ip = str(status(lab.hosts[0])["mesh_ip"])
    spare.run_container("pinger")
    try:
        pinger = spare.docker_popen(
            ["exec", "pinger", "ping", "-i", "0.05", "-c", "120", h1_mesh_ip]
        )
        assert "agent already running here" in up_with(spare).stdout  # the same settings
        changed = up_with(spare, "--advertise-routes", ROUTE)
        assert f"shoal: changing --advertise-routes none => {ROUTE}" in changed.stdout
        assert f"shoal: {spare.name} is up" in changed.stdout
        assert routes_of(lab, spare) == [ROUTE]
        assert "agent already running here" in up_with(spare, "--advertise-routes", ROUTE).stdout
        out, _ = pinger.communicate(timeout=60)
        assert " 0% packet loss" in out, out
    finally:
        spare.docker("rm", "-f", "pinger")
        up_with(spare, "--advertise-routes", "")  # as found: no route advertised
    assert routes_of(lab, spare) == []
    after = status(spare)
    assert (after["mesh_ip"], after["subnet"]) == (before["mesh_ip"], before["subnet"])
    assert (spare.state_dir / "private.key").read_text() == key


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (("--server", "https://192.0.2.250:8443"), "--server https://192.0.2.250:8443: this host"),
        (("--name", "renamed"), "--name 'renamed': this host is joined to"),
        (("--no-docker",), "--no-docker: this host is joined to"),
    ],
)
def test_what_cannot_change_in_place_is_one_line_naming_the_flag(
    lab: Lab, spare: LabHost, join_token: str, flags: tuple[str, ...], words: str
) -> None:
    up(lab, spare, join_token)
    refused = up_with(spare, *flags, check=False)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"shoal: {words}"), lines
    assert f"`shoal down --leave --state-dir {spare.state_dir}`" in refused.stderr
    assert status(spare)["state"] == "RUNNING"  # untouched
