"""`shoal doctor` names the cause of a broken path: each test breaks exactly one thing on a lab
host, runs doctor there and checks that the failing line names it (and that doctor exits 1).

The agent repairs drift on its 30 s resync (routes, the nft table, iptables jumps, forwarding):
those tests break the thing again if a resync repaired it before doctor looked.

Clock skew cannot be faked per network namespace (one kernel clock): `check_clock` is
unit-tested in tests/agent/test_doctor.py instead.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from functools import partial
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from shoal.lab import Lab, LabHost
from tests.e2e.runbook import admin, host_ping, shoal, status, up, wait_until

pytestmark = pytest.mark.e2e

Report = dict[str, Any]
TEST_TABLE = "doctortest"  # a table of the test's own in the host's netns, deleted after


def doctor(host: LabHost, target: str | None = None) -> tuple[int, Report, str]:
    """`shoal doctor [TARGET] --json` and the human rendering; (exit code, report, text)."""
    args = [target] if target else []
    state = ["--state-dir", str(host.state_dir)]
    out = shoal(host, "doctor", *args, "--json", *state, check=False)
    text = shoal(host, "doctor", *args, *state, check=False).stdout
    return out.returncode, json.loads(out.stdout), text


def failing(report: Report, code: str) -> list[dict[str, Any]]:
    return [c for c in report["checks"] if c["code"] == code and c["verdict"] == "fail"]


def doctor_names(
    host: LabHost, break_it: Callable[[], None], code: str, target: str | None = None
) -> dict[str, Any]:
    """Break, run doctor, return the failing `code` check; break again (up to 3 times) if the
    agent's resync repaired it before doctor looked."""
    seen = ""
    for _ in range(3):
        break_it()
        rc, report, text = doctor(host, target)
        found = failing(report, code)
        if found:
            assert rc == 1
            print(text)  # the operator's view, in the test log
            return found[0]
        seen = text
    raise AssertionError(f"doctor never reported {code} as failed:\n{seen}")


def mesh_ip(host: LabHost) -> IPv4Address:
    return IPv4Address(status(host)["mesh_ip"])


def nft(host: LabHost, script: str) -> None:
    host.exec(["nft", "-f", "-"], input=script)


def run(host: LabHost, *argv: str) -> Callable[[], None]:
    """A step that runs `argv` on `host`, whatever its exit code (the thing may be gone)."""

    def step() -> None:
        host.exec(list(argv), check=False)

    return step


def drop_in_test_table(host: LabHost, rule: str) -> None:
    """`rule` in an input chain of the test's own table, ahead of everything else; the table
    is made anew each time (a retry must not stack rules)."""
    nft(
        host,
        f"add table inet {TEST_TABLE}\ndelete table inet {TEST_TABLE}\n"
        f"table inet {TEST_TABLE} {{\n"
        f"  chain input {{ type filter hook input priority -400; policy accept; {rule}; }}\n"
        "}\n",
    )


def drop_test_table(host: LabHost) -> None:
    host.exec(["nft", "delete", "table", "inet", TEST_TABLE], check=False)


@pytest.fixture(scope="module")
def pair(lab: Lab, join_token: str) -> Iterator[tuple[LabHost, LabHost]]:
    h1, h2 = lab.hosts[:2]
    for host in (h1, h2):
        up(lab, host, join_token)  # "already running" when another module joined it
    ip2 = str(mesh_ip(h2))
    wait_until("h1 -> h2 over the mesh", lambda: host_ping(h1, ip2))
    yield h1, h2
    for host in (h1, h2):
        drop_test_table(host)


def repaired(h1: LabHost, h2: LabHost) -> None:
    """Wait until doctor passes again: the agent's resync repaired what the test broke."""
    wait_until("doctor to pass again", lambda: doctor(h1, h2.name)[0] == 0, timeout=45)


def healthy(h1: LabHost, h2: LabHost) -> None:
    """Wait until the pair is whole again after a test broke it."""
    ip2 = str(mesh_ip(h2))
    wait_until("h1 -> h2 over the mesh again", lambda: host_ping(h1, ip2), timeout=60)


def test_a_healthy_host_passes_every_check(pair: tuple[LabHost, LabHost]) -> None:
    h1, h2 = pair
    started = time.monotonic()
    rc, report, text = doctor(h1)
    took = time.monotonic() - started
    print(text, f"\n(two doctor runs, JSON and text, in {took:.1f} s)")
    assert rc == 0, text
    # Every probe of a healthy path answers at once: no timeout is waited out.
    assert took < 20
    verdicts = {(c["code"], c["subject"]): c["verdict"] for c in report["checks"]}
    for code in (
        "agent",
        "server",
        "certificate",
        "clock",
        "wireguard",
        "forwarding",
        "routes",
        "docker-network",
        "firewall-table",
        "firewall-docker",
        "dns-responder",
        "dns-upstream",
    ):
        assert verdicts[(code, "this host")] == "ok", text
    assert verdicts[("peer", h2.name)] == "ok", text
    assert verdicts[("path-mtu", h2.name)] == "ok", text


def test_a_target_limits_the_peers_and_probes_it(pair: tuple[LabHost, LabHost]) -> None:
    h1, h2 = pair
    rc, report, text = doctor(h1, h2.name)
    assert rc == 0, text
    assert {c["subject"] for c in report["checks"] if c["code"] == "peer"} == {h2.name}
    (target,) = [c for c in report["checks"] if c["code"] == "target"]
    assert target["verdict"] == "ok" and str(mesh_ip(h2)) in target["summary"]
    bad = shoal(h1, "doctor", "no-such-thing", "--state-dir", str(h1.state_dir), check=False)
    assert bad.returncode == 1
    assert bad.stderr.startswith("shoal: no node, container or service named 'no-such-thing'")


def test_a_stopped_agent_is_named(lab: Lab, pair: tuple[LabHost, LabHost]) -> None:
    h1, h2 = pair
    pid = int((h1.state_dir / "agent.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    wait_until("the agent to exit", lambda: not (h1.state_dir / "agent.sock").exists(), 15)
    try:
        rc, report, text = doctor(h1)
        print(text)
        assert rc == 1
        (check,) = failing(report, "agent")
        assert check["summary"] == "agent not running"
        assert "shoal up" in check["fix"]
    finally:
        up(lab, h1, None)
    healthy(h1, h2)


def test_blocked_wireguard_udp_on_one_side_is_named(pair: tuple[LabHost, LabHost]) -> None:
    """An operator's firewall drops UDP 51820 from the network at h2 (loopback stays open, as
    in any ruleset): h2 finds its UDP blocked, both sides move to the TCP relay, the mesh keeps
    working, and doctor on h1 warns that h2 is relayed because direct UDP 51820 fails."""
    h1, h2 = pair
    ip2 = str(mesh_ip(h2))
    found: list[dict[str, Any]] = []

    def relayed() -> bool:
        _rc, report, text = doctor(h1, h2.name)
        peer = [c for c in report["checks"] if c["code"] == "peer" and c["subject"] == h2.name]
        if peer and peer[0]["verdict"] == "warn" and "relayed via tcp relay" in peer[0]["summary"]:
            print(text)  # the operator's view, in the test log
            found[:] = peer
            return True
        return False

    try:
        drop_in_test_table(h2, 'iif != "lo" udp dport 51820 drop')
        wait_until(f"doctor on h1 to report {h2.name} relayed", relayed, timeout=90)
        check = found[0]
        assert "UDP 51820" in check["cause"]
        assert f"{h2.underlay_ip}:51820" in check["cause"]
        assert "127.0.0.1" not in f"{check['summary']} {check['cause']} {check['fix']}"
        wait_until("h1 -> h2 over the relay", lambda: host_ping(h1, ip2))
    finally:
        drop_test_table(h2)
    healthy(h1, h2)
    # Both sides leave the relay: WireGuard must not stay on the agents' loopback sockets
    # (CI: relayed for minutes after the unblock, and the next tests' traffic went over TCP).
    for host, other in ((h1, h2), (h2, h1)):
        wait_until(f"{host.name} -> {other.name} direct again", partial(direct, host, other), 75)


def direct(host: LabHost, other: LabHost) -> bool:
    _rc, report, _text = doctor(host, other.name)
    peer = [c for c in report["checks"] if c["code"] == "peer" and c["subject"] == other.name]
    return bool(peer) and "(direct)" in peer[0]["summary"] and "127.0.0.1" not in peer[0]["summary"]


def test_a_smaller_underlay_mtu_is_named_a_black_hole(
    lab: Lab, pair: tuple[LabHost, LabHost]
) -> None:
    h1, h2 = pair
    # h2's port on the underlay switch: bigger frames are dropped there, with no ICMP error.
    veth = ["ip", "-n", lab.underlay_netns, "link", "set", f"v{h2.index}", "mtu"]
    subprocess.run([*veth, "1400"], check=True)
    try:
        check = doctor_names(h1, lambda: None, "path-mtu", target=h2.name)
        assert check["subject"] == h2.name
        assert "black hole" in check["summary"]
        # 1400 on the wire minus WireGuard's 60 bytes over IPv4: within the bisection step.
        largest = int(check["summary"].split("up to ")[1].split()[0])
        assert 1340 - 8 <= largest <= 1340, check
        assert f"--mtu {largest}" in check["fix"]
    finally:
        subprocess.run([*veth, "1500"], check=True)
    healthy(h1, h2)


def test_a_deleted_route_is_named(pair: tuple[LabHost, LabHost]) -> None:
    h1, h2 = pair
    subnet = status(h2)["subnet"]
    check = doctor_names(
        h1,
        run(h1, "ip", "route", "del", subnet, "dev", "shoal0"),
        "routes",
        target=h2.name,
    )
    assert f"{subnet} ({h2.name}) missing" in check["cause"]
    # The fix doctor prints works.
    command = check["fix"].split("`")[1]
    assert command.startswith(f"ip route replace {subnet} dev shoal0")
    h1.exec(command.split())
    assert not failing(doctor(h1, h2.name)[1], "routes")


def test_a_flushed_nft_table_is_named(pair: tuple[LabHost, LabHost]) -> None:
    h1, h2 = pair
    check = doctor_names(
        h1, lambda: nft(h1, "flush table inet shoal\n"), "firewall-table", target=h2.name
    )
    assert "inet shoal" in check["summary"]
    assert "firewall: inet shoal +" in check["cause"]
    repaired(h1, h2)


def test_a_missing_docker_user_jump_is_named(pair: tuple[LabHost, LabHost]) -> None:
    h1, h2 = pair
    jump = run(h1, "iptables", "-D", "DOCKER-USER", "-j", "SHOAL-FORWARD")
    check = doctor_names(h1, jump, "firewall-docker", target=h2.name)
    assert "DOCKER-USER -> SHOAL-FORWARD" in check["cause"]
    repaired(h1, h2)


def test_forwarding_turned_off_is_named(pair: tuple[LabHost, LabHost]) -> None:
    h1, h2 = pair
    off = run(h1, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    check = doctor_names(h1, off, "forwarding", target=h2.name)
    assert "net.ipv4.ip_forward is 0" in check["cause"]
    h1.exec(["sysctl", "-qw", "net.ipv4.ip_forward=1"])


def test_a_blocked_dns_responder_is_named(pair: tuple[LabHost, LabHost]) -> None:
    h1, h2 = pair
    mesh = mesh_ip(h1)
    try:
        check = doctor_names(
            h1,
            lambda: drop_in_test_table(h1, f"ip daddr {mesh} udp dport 53 drop"),
            "dns-responder",
            target=h2.name,
        )
        assert f"no answer from {mesh}:53" in check["cause"]
    finally:
        drop_test_table(h1)


@pytest.fixture
def containers(pair: tuple[LabHost, LabHost]) -> Iterator[tuple[LabHost, LabHost]]:
    """A container on each host of the pair (the `shoal` network), removed after."""
    h1, h2 = pair
    h1.run_container("doc-app")
    h2.run_container("doc-db")
    try:
        yield h1, h2
    finally:
        h1.docker("rm", "-f", "doc-app", check=False)
        h2.docker("rm", "-f", "doc-db", check=False)


def container_dns(host: LabHost, target: str) -> dict[str, Any]:
    (check,) = [c for c in doctor(host, target)[1]["checks"] if c["code"] == "container-dns"]
    return check


def test_port_53_dropped_from_the_containers_is_named(
    containers: tuple[LabHost, LabHost],
) -> None:
    """The responder answers the host, but the containers' lookups (Docker's resolver forwards
    them from the container's own address) are dropped: only container-dns can see it."""
    h1, h2 = containers
    # Doctor picks one container of this host and one name of the target's: in a lab other
    # tests share, not necessarily doc-app and doc-db.
    wait_until(
        "doctor to resolve a remote name inside a container",
        lambda: (
            re.fullmatch(
                r"\S+ resolves to [0-9.]+ inside container \S+",
                container_dns(h1, h2.name)["summary"],
            )
            is not None
        ),
        timeout=30,
    )
    subnet = IPv4Network(status(h1)["subnet"])
    try:
        check = doctor_names(
            h1,
            lambda: drop_in_test_table(h1, f"ip saddr {subnet} udp dport 53 drop"),
            "container-dns",
            target=h2.name,
        )
        assert re.match(r"\S+ inside container \S+: no answer", check["summary"]), check
        assert "the responder answers this host, but Docker's resolver in" in check["cause"]
        _, report, _ = doctor(h1, h2.name)
        assert not failing(report, "dns-responder")  # the host's own lookups still work
    finally:
        drop_test_table(h1)


DENY_8080 = """\
# doctor's test: the web port is closed, the rest stays as without a policy
rules:
  - from: '*'
    to: '*'
    proto: icmp
  - from: '*'
    to: '*'
    ports: [1-8079, 8081-65535]
"""


def test_a_policy_denial_is_named_with_its_rule(
    lab: Lab, containers: tuple[LabHost, LabHost], tmp_path: Path
) -> None:
    h1, h2 = containers
    db = h2.container_ip("doc-db")
    target = f"{db}:8080"
    policy = tmp_path / "doctor-deny.yaml"
    policy.write_text(DENY_8080)
    admin(lab, "policy", "set", str(policy))
    try:
        wait_until(
            "doctor to see the policy",
            lambda: bool(failing(doctor(h1, target)[1], "policy")),
            timeout=30,
        )
        rc, report, text = doctor(h1, target)
        print(text)
        (check,) = failing(report, "policy")
        assert rc == 1
        assert check["summary"] == f"tcp {mesh_ip(h1)} → {target}: denied by {h2.name}'s firewall"
        assert check["cause"].startswith("no rule of doctor-deny.yaml r")
        assert f"shoal policy test --from {h1.name} --to doc-db:8080" in check["fix"]
        allowed = doctor(h1, f"{db}:5432")[1]
        (verdict,) = [c for c in allowed["checks"] if c["code"] == "policy"]
        assert verdict["verdict"] == "ok" and "allowed by doctor-deny.yaml:6" in verdict["summary"]
    finally:
        # Back to no policy at all: the tests after this one (in the lab they share) expect
        # shoal's defaults, e.g. a host without Docker serving the mesh.
        admin(lab, "policy", "clear")
