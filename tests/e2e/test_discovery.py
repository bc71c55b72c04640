"""Service discovery as an operator uses it: containers find each other by name across hosts,
from inside busybox containers, with no per-container flag."""

from __future__ import annotations

import json
import os
import re
import signal
from ipaddress import IPv4Address

import pytest

from shoal.agent.systemd import AgentUnit
from shoal.lab import IMAGE, SERVER_IP, Lab, LabHost
from tests.e2e.runbook import shoal, status, up, wait_until

pytestmark = pytest.mark.e2e

# The lab's upstream resolver answers this name (anything not under `shoal` goes upstream).
UPSTREAM_NAME, UPSTREAM_ADDRESS = "www.lab.test", "192.0.2.80"


@pytest.fixture(scope="module")
def hosts(lab: Lab, join_token: str) -> tuple[LabHost, LabHost, LabHost]:
    h1, h2, h3 = lab.hosts[:3]
    for host in (h1, h2, h3):
        up(lab, host, join_token)  # "already running" when another module joined it
        host.run_container(f"probe-{host.name}", network="shoal", image=IMAGE)
    return h1, h2, h3


def resolve(host: LabHost, name: str) -> set[IPv4Address]:
    """A records for `name` as a container on `host` sees them (busybox nslookup)."""
    result = host.container_exec(
        f"probe-{host.name}", ["nslookup", "-type=a", name], check=False, timeout=15
    )
    if result.returncode != 0:
        return set()
    answer = result.stdout.split("Name:", 1)[-1] if "Name:" in result.stdout else ""
    return {IPv4Address(a) for a in re.findall(r"Address:\s*([0-9.]+)(?!:)\s*$", answer, re.M)}


def test_a_container_name_resolves_on_every_host(hosts: tuple[LabHost, ...]) -> None:
    h1, h2, h3 = hosts
    h2.run_container("cache", network="shoal", image=IMAGE)
    ip = h2.container_ip("cache")
    for host in (h1, h3):
        wait_until(f"cache on {host.name}", lambda host=host: resolve(host, "cache") == {ip}, 10)
        assert resolve(host, "cache.shoal") == {ip}
    wait_until(
        "h1's probe pings cache by name",
        lambda: (
            h1.container_exec(
                f"probe-{h1.name}", ["ping", "-c", "1", "-W", "2", "cache"], check=False
            ).returncode
            == 0
        ),
        15,
    )


def test_node_names_resolve_to_mesh_ips(hosts: tuple[LabHost, ...]) -> None:
    h1, h2, _ = hosts
    mesh_ip = json.loads(shoal(h2, "status", "--json", "--state-dir", str(h2.state_dir)).stdout)[
        "mesh_ip"
    ]
    assert resolve(h1, f"{h2.name}.shoal") == {IPv4Address(mesh_ip)}


def _replica(host: LabHost, name: str, *health: str) -> IPv4Address:
    labels = ("--label", "com.docker.compose.project=app", "--label",
              "com.docker.compose.service=api")  # fmt: skip
    host.run_container(name, network="shoal", image=IMAGE, options=(*labels, *health))
    return host.container_ip(name)


def test_service_replicas_on_two_hosts_all_answer(hosts: tuple[LabHost, ...]) -> None:
    h1, h2, h3 = hosts
    ips = {_replica(h1, "app-api-1"), _replica(h2, "app-api-2")}
    wait_until("both replicas", lambda: resolve(h3, "api") == ips, 10)
    assert resolve(h3, "api.app.shoal") == ips
    catalog = json.loads(shoal(h3, "services", "--json", "--state-dir", str(h3.state_dir)).stdout)
    api = next(s for s in catalog if s["name"] == "api.app")
    assert {i["node"] for i in api["instances"]} == {h1.name, h2.name}


def test_an_unhealthy_replica_leaves_and_comes_back(hosts: tuple[LabHost, ...]) -> None:
    h1, _, h3 = hosts
    check = ("--health-cmd", "cat /tmp/ok", "--health-interval", "1s", "--health-retries", "1")
    ip = _replica(h1, "app-api-3", *check)
    wait_until("an unhealthy replica to be left out", lambda: ip not in resolve(h3, "api"), 20)
    h1.container_exec("app-api-3", ["touch", "/tmp/ok"])
    wait_until("the replica to come back", lambda: ip in resolve(h3, "api"), 20)
    h1.container_exec("app-api-3", ["rm", "/tmp/ok"])
    wait_until("it to leave again", lambda: ip not in resolve(h3, "api"), 20)


def test_a_stopped_container_disappears_everywhere(hosts: tuple[LabHost, ...]) -> None:
    h1, h2, h3 = hosts
    h2.run_container("short-lived", network="shoal", image=IMAGE)
    wait_until("it to appear", lambda: resolve(h1, "short-lived") != set(), 10)
    h2.docker("rm", "-f", "short-lived")
    for host in (h1, h3):
        wait_until(f"gone on {host.name}", lambda host=host: resolve(host, "short-lived") == set())


def test_upstream_names_still_resolve(hosts: tuple[LabHost, ...]) -> None:
    h1 = hosts[0]
    assert resolve(h1, UPSTREAM_NAME) == {IPv4Address(UPSTREAM_ADDRESS)}


def test_malformed_packets_do_not_kill_the_responder(hosts: tuple[LabHost, ...]) -> None:
    h1 = hosts[0]
    mesh_ip = json.loads(shoal(h1, "status", "--json", "--state-dir", str(h1.state_dir)).stdout)[
        "mesh_ip"
    ]
    junk = (
        "import os, socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for n in (0, 1, 11, 12, 13, 300, 512, 1500, 4000):\n"
        f"    s.sendto(os.urandom(n), ('{mesh_ip}', 53))\n"
        # A header announcing one question, then a label claiming 63 bytes that are not there.
        "bad = bytes.fromhex('123401000001000000000000') + b'\\x3fabc'\n"
        f"s.sendto(bad, ('{mesh_ip}', 53))\n"
    )
    h1.exec(["python3", "-c", junk])
    assert resolve(h1, f"{h1.name}.shoal") == {IPv4Address(mesh_ip)}  # still answering


def test_a_host_cut_off_from_the_server_is_withdrawn_then_restored(
    lab: Lab, hosts: tuple[LabHost, ...]
) -> None:
    h1, _, h3 = hosts
    h3.run_container("islander", network="shoal", image=IMAGE)
    ip = h3.container_ip("islander")
    wait_until("islander to appear", lambda: resolve(h1, "islander") == {ip}, 10)
    cut = ["iptables", "-I", "OUTPUT", "-d", str(SERVER_IP), "-j", "DROP"]
    h3.exec(cut)
    try:
        # The server's heartbeat timeout is 15 s by default.
        wait_until("islander to be withdrawn", lambda: resolve(h1, "islander") == set(), 45)
    finally:
        h3.exec(["iptables", "-D", *cut[2:]])
    wait_until("islander to come back", lambda: resolve(h1, "islander") == {ip}, 45)


def test_a_stopped_agent_hands_container_dns_back_to_docker(
    lab: Lab, hosts: tuple[LabHost, ...]
) -> None:
    """SIGTERM: the agent's resolver goes, and the redirect to it goes too, so containers ask
    Docker's upstream again until the next agent. (In the lab that upstream is the host's own
    underlay address, where nothing answers: lab lookups never leave the lab. On a real host it
    is the host's resolv.conf.) The next agent brings the redirect and the names back."""
    h1, _, h3 = hosts
    pid = int((h3.state_dir / "agent.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    # The agent removes its pid file last, after the redirect.
    wait_until("the agent to exit", lambda: not (h3.state_dir / "agent.pid").exists(), 15)
    nat = h3.exec(["iptables-save", "-t", "nat"]).stdout.splitlines()
    assert [rule for rule in nat if rule.startswith("-A SHOAL-DNS")] == []
    assert any(rule.startswith("-A SHOAL-POSTROUTING") for rule in nat), "the mesh stays"
    up(lab, h3, None)
    status = shoal(h1, "status", "--json", "--state-dir", str(h1.state_dir)).stdout
    h1_mesh_ip = IPv4Address(json.loads(status)["mesh_ip"])
    wait_until("mesh names again", lambda: resolve(h3, "h1.shoal") == {h1_mesh_ip}, 10)
    assert resolve(h3, UPSTREAM_NAME) == {IPv4Address(UPSTREAM_ADDRESS)}


def test_a_killed_agent_restarted_by_its_supervisor_answers_names_again(
    lab: Lab, hosts: tuple[LabHost, ...]
) -> None:
    """SIGKILL runs none of the agent's clean-up: the containers' DNS redirect stays, pointing
    at a resolver that died with the agent, and names are gone until the supervisor (systemd,
    `Restart=always`) starts the agent again, which answers from its cached netmap before it
    sets up anything else. The lab has no systemd: the test runs the unit's own command."""
    h1, _, h3 = hosts
    h1_mesh_ip = IPv4Address(status(h1)["mesh_ip"])
    wait_until("mesh names on h3", lambda: resolve(h3, "h1.shoal") == {h1_mesh_ip}, 10)
    os.kill(int((h3.state_dir / "agent.pid").read_text()), signal.SIGKILL)
    wait_until("names to die with the agent", lambda: resolve(h3, "h1.shoal") == set(), 15)
    nat = h3.exec(["iptables-save", "-t", "nat"]).stdout.splitlines()
    assert any(rule.startswith("-A SHOAL-DNS") for rule in nat), "the redirect outlives it"
    unit = AgentUnit(state_dir=h3.state_dir, docker_host=h3.docker_host)
    h3.popen(unit.argv(), log=h3.state_dir / "agent.log")  # Lab.destroy stops it
    wait_until("mesh names again", lambda: resolve(h3, "h1.shoal") == {h1_mesh_ip}, 30)
    wait_until("the agent to run", lambda: status(h3)["state"] == "RUNNING", 30)
    assert resolve(h3, UPSTREAM_NAME) == {IPv4Address(UPSTREAM_ADDRESS)}
