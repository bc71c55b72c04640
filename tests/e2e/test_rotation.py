"""Key rotation as an operator runs it: `shoal node rotate-key` on a host while containers ping
each other across it every 10 ms, both ways. Every peer switches to the new key and not one
packet is lost, rotation after rotation."""

from __future__ import annotations

import re
import subprocess
from ipaddress import IPv4Address

import pytest

from shoal.lab import Lab, LabHost
from tests.e2e.runbook import ping, shoal, status, up, wait_until

pytestmark = pytest.mark.e2e

ROTATIONS = 10
SECONDS_PER_ROTATION = 8  # announcement lead 3 s + peers' lag 0.5 s + finalisation 1 s + slack

Pair = tuple[LabHost, LabHost, IPv4Address, IPv4Address]


def pinger(host: LabHost) -> str:
    return f"rot-{host.name}"


@pytest.fixture(scope="module")
def pair(lab: Lab, join_token: str) -> Pair:
    h1, h2 = lab.hosts[:2]
    ips = []
    for host in (h1, h2):
        up(lab, host, join_token)
        host.run_container(pinger(host))
        ips.append(host.container_ip(pinger(host), network="shoal"))
    return h1, h2, ips[0], ips[1]


def wg_public_key(host: LabHost) -> str:
    return host.exec(["wg", "show", "shoal0", "public-key"]).stdout.strip()


def wg_peers(host: LabHost) -> set[str]:
    return set(host.exec(["wg", "show", "shoal0", "peers"]).stdout.split())


def start_ping(host: LabHost, dst: IPv4Address, count: int) -> subprocess.Popen[str]:
    return host.docker_popen(
        ["exec", pinger(host), "ping", "-i", "0.01", "-c", str(count), str(dst)]
    )


def lost(out: str, count: int) -> list[tuple[int, int]]:
    """The runs (first, last) of sequence numbers that got no reply (busybox ping prints one
    line per reply)."""
    answered = {int(m) for m in re.findall(r"seq=(\d+)", out)}
    runs: list[tuple[int, int]] = []
    for seq in range(count):
        if seq in answered:
            continue
        if runs and runs[-1][1] == seq - 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return runs


def switch_log(host: LabHost) -> list[str]:
    """The agent's log lines about keys and peers (what happened when, for a failure)."""
    lines = (host.state_dir / "agent.log").read_text().splitlines()
    return [line for line in lines if "key" in line or "peer" in line]


def test_rotate_key_switches_every_peer_without_losing_a_packet(lab: Lab, pair: Pair) -> None:
    h1, h2, ip1, ip2 = pair
    wait_until("h1 <-> h2 ping", lambda: ping(h1, pinger(h1), ip2) and ping(h2, pinger(h2), ip1))
    count = 100 * SECONDS_PER_ROTATION * (ROTATIONS + 1)
    to_rotating = start_ping(h2, ip1, count)
    from_rotating = start_ping(h1, ip2, count)
    keys = [wg_public_key(h1)]
    for _ in range(ROTATIONS):
        out = shoal(h1, "node", "rotate-key", "--state-dir", str(h1.state_dir)).stdout
        assert "switch at" in out, out
        rotation = status(h1)["rotation"]
        assert rotation is not None, "shoal status --json shows no pending rotation"
        new = rotation["next_key"]
        wait_until(
            "h1's interface to take the new key", lambda new=new: wg_public_key(h1) == new, 15
        )
        wait_until(
            "h2 to switch its peer entry to h1's new key",
            lambda new=new, old=keys[-1]: new in wg_peers(h2) and old not in wg_peers(h2),
            15,
        )
        wait_until("the server to finish the rotation", lambda: status(h1)["rotation"] is None, 15)
        assert status(h1)["public_key"] == new
        keys.append(new)
    assert to_rotating.poll() is None and from_rotating.poll() is None, (
        "the pings ended before the last rotation: raise SECONDS_PER_ROTATION"
    )
    results = {}
    for name, proc in (("h2 -> h1", to_rotating), ("h1 -> h2", from_rotating)):
        out, _ = proc.communicate(timeout=count / 100 * 3)
        results[name] = (lost(out, count), out.strip().splitlines()[-2:])
    assert len(set(keys)) == ROTATIONS + 1
    assert (h1.state_dir / "private.key.next").exists() is False
    report = "\n".join(
        [
            *(f"{name}: lost {missing} {summary}" for name, (missing, summary) in results.items()),
            "h1:",
            *switch_log(h1)[-60:],
            "h2:",
            *switch_log(h2)[-60:],
        ]
    )
    assert all(not missing for missing, _ in results.values()), report
