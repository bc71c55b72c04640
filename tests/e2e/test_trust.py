"""Issue 7's findings that are about hosts, in the lab: a takeover attempt with a join token and
a victim's public key, names spoofed across hosts, and a removed host's key and addresses."""

from __future__ import annotations

import json
import re
import sys
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from shoal.lab import Lab, LabHost
from tests.e2e.runbook import IMAGE, admin, ping, shoal, start_web, status, up, wait_until

pytestmark = pytest.mark.e2e

# Run on the attacker's host: joins as the victim with a valid token, signing with its own key.
_TAKEOVER = """
import asyncio, sys
from shoal.controlclient.client import ControlClient
from shoal.controlclient.errors import ControlRejected
from shoal.controlclient.tls import fetch_pinned_ca
from shoal.model.api import RegisterRequest
from shoal.model.keys import PrivateKey, PublicKey
from shoal.model.tokens import parse_join_token

async def main(url, token, victim_key, victim_name):
    ca = await fetch_pinned_ca(url, parse_join_token(token).fingerprint)
    attacker = PrivateKey.generate()
    req = RegisterRequest(token=token, name=victim_name, public_key=PublicKey.parse(victim_key))
    async with ControlClient(url, ca, node_key=attacker) as client:
        try:
            await client.register(req)
        except ControlRejected as exc:
            print(exc.code)
            return
    print("ACCEPTED")

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def pair(lab: Lab, join_token: str) -> tuple[LabHost, LabHost]:
    h1, h2 = lab.hosts[:2]
    for host in (h1, h2):
        up(lab, host, join_token)
    for host in (h1, h2):
        if f"tr-{host.name}" not in host.exec(["docker", "ps", "--format", "{{.Names}}"]).stdout:
            start_web(host, f"tr-{host.name}")
    return h1, h2


def resolve(host: LabHost, container: str, name: str) -> set[IPv4Address]:
    result = host.container_exec(container, ["nslookup", "-type=a", name], check=False, timeout=15)
    answer = result.stdout.split("Name:", 1)[-1] if "Name:" in result.stdout else ""
    return {IPv4Address(a) for a in re.findall(r"Address:\s*([0-9.]+)(?!:)\s*$", answer, re.M)}


def test_a_token_and_a_victims_public_key_take_nothing(
    lab: Lab, pair: tuple[LabHost, LabHost], join_token: str
) -> None:
    h1, h2 = pair
    victim = status(h1)
    web1 = h1.container_ip(f"tr-{h1.name}")
    assert ping(h2, f"tr-{h2.name}", web1)
    script = Path(lab.dir) / "takeover.py"
    script.write_text(_TAKEOVER)
    out = h2.exec(
        [sys.executable, str(script), str(lab.server_url), join_token, victim["public_key"], "h1"],
        check=False,
    )
    assert out.stdout.strip() == "signature_invalid", out.stdout + out.stderr
    # The victim is untouched: still running, still reachable, its key unchanged.
    after = status(h1)
    assert after["state"] == "RUNNING" and after["public_key"] == victim["public_key"]
    assert ping(h2, f"tr-{h2.name}", web1, count=3)


def test_a_container_cannot_take_a_node_name_or_another_hosts_container(
    lab: Lab, pair: tuple[LabHost, LabHost], join_token: str
) -> None:
    """Asked from a third host: Docker's own resolver answers a name of a container on the
    asking host's network itself, without asking shoal."""
    h1, h2 = pair
    h3 = lab.hosts[2]
    up(lab, h3, join_token)
    h3.run_container("tr-probe", network="shoal", image=IMAGE)
    mesh1 = IPv4Address(status(h1)["mesh_ip"])
    # h2 runs a container named like host h1, and one named like a container of h1.
    h2.run_container(h1.name, network="shoal", image=IMAGE)
    h2.run_container(f"tr-{h1.name}", network="shoal", image=IMAGE)
    spoof = h2.container_ip(f"tr-{h1.name}")
    web1 = h1.container_ip(f"tr-{h1.name}")
    wait_until(
        "both replicas answer the short name",
        lambda: resolve(h3, "tr-probe", f"tr-{h1.name}") == {web1, spoof},
        15,
    )
    assert resolve(h3, "tr-probe", f"{h1.name}.shoal") == {mesh1}  # the node, not the container
    assert resolve(h3, "tr-probe", f"tr-{h1.name}.{h1.name}.shoal") == {web1}
    assert resolve(h3, "tr-probe", f"tr-{h1.name}.{h2.name}.shoal") == {spoof}


def test_a_removed_hosts_key_is_revoked_and_its_addresses_quarantined(
    lab: Lab, join_token: str
) -> None:
    gone = lab.add_host()
    up(lab, gone, join_token)
    before = status(gone)
    admin(lab, "node", "remove", gone.name)
    wait_until(f"{gone.name} NEEDS_JOIN", lambda: status(gone)["state"] == "NEEDS_JOIN", 40)
    warning = " ".join(w["message"] for w in status(gone)["health"])
    assert "shoal down --leave" in warning and "--token-file" in warning
    # Its key cannot come back, even with a valid reusable token (the host keeps its key, as
    # an attacker holding its files would, and joins afresh).
    shoal(gone, "down", "--state-dir", str(gone.state_dir))
    for name in ("node.json", "netmap.json"):
        (gone.state_dir / name).unlink(missing_ok=True)
    again = up(lab, gone, join_token, check=False)
    assert again.returncode != 0 and "cannot join again" in again.stderr
    # A new host gets neither its mesh IP nor its subnet.
    newcomer = lab.add_host()
    up(lab, newcomer, join_token)
    fresh = status(newcomer)
    assert fresh["mesh_ip"] != before["mesh_ip"] and fresh["subnet"] != before["subnet"]
    nodes = json.loads(admin(lab, "nodes", "--json").stdout)
    assert gone.name not in {n["name"] for n in nodes}
