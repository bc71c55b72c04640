"""The firewall: pure rendering, and real iptables inside a throwaway network namespace."""

from __future__ import annotations

import shutil
from ipaddress import IPv4Address, IPv4Network

import pytest

from shoal import firewall
from shoal.plan.hostconfig import FirewallConfig
from tests.hostnet.netns import Netns, NetnsFactory

CFG = FirewallConfig(
    mesh_interface="shoal0",
    bridge="shoal-br0",
    local_subnet=IPv4Network("10.42.1.0/24"),
    container_pool=IPv4Network("10.42.0.0/16"),
    mesh_pool=IPv4Network("100.64.0.0/10"),
    dns_address=IPv4Address("100.64.0.1"),
    wireguard_port=51820,
)

SHOAL_FORWARD = [
    "-A SHOAL-FORWARD -i shoal0 -o shoal-br0 -j ACCEPT",
    "-A SHOAL-FORWARD -i shoal-br0 -o shoal0 -j ACCEPT",
]
SHOAL_POSTROUTING = [
    "-A SHOAL-POSTROUTING -s 10.42.1.0/24 -d 10.42.0.0/16 -j RETURN",
    "-A SHOAL-POSTROUTING -s 10.42.1.0/24 -d 100.64.0.0/10 -j RETURN",
    "-A SHOAL-POSTROUTING -s 10.42.1.0/24 ! -o shoal-br0 -j MASQUERADE",
]
SHOAL_DNS = [
    "-A SHOAL-DNS -i shoal-br0 -p udp -m udp --dport 53 -j DNAT --to-destination 100.64.0.1:53",
    "-A SHOAL-DNS -i shoal-br0 -p tcp -m tcp --dport 53 -j DNAT --to-destination 100.64.0.1:53",
]
# What shoal up to November 2026 left in mangle; the MSS clamp now lives in the nft table.
SHOAL_MSS = [
    "-A SHOAL-MSS -o shoal0 -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu",
]


def test_render() -> None:
    assert firewall.render(CFG).splitlines() == [
        "*filter",
        ":SHOAL-FORWARD - [0:0]",
        "-F SHOAL-FORWARD",
        *SHOAL_FORWARD,
        "COMMIT",
        "*nat",
        ":SHOAL-POSTROUTING - [0:0]",
        "-F SHOAL-POSTROUTING",
        *SHOAL_POSTROUTING,
        "COMMIT",
        "*nat",
        ":SHOAL-DNS - [0:0]",
        "-F SHOAL-DNS",
        *SHOAL_DNS,
        "COMMIT",
    ]


def dump(ns: Netns) -> dict[str, list[str]]:
    """Rules per table (counters dropped) from iptables-save; tables with nothing in them
    (only built-in chains with policy ACCEPT, as the nft variant leaves them) are left out."""
    tables: dict[str, list[str]] = {}
    table = ""
    for line in ns.sh("iptables-save").stdout.splitlines():
        if line.startswith("*"):
            table = line[1:]
            tables[table] = []
        elif line.startswith(("-A", ":")):
            tables[table].append(line.split(" [")[0] if line.startswith(":") else line)
    return {
        table: lines
        for table, lines in tables.items()
        if not all(line.startswith(":") and line.endswith(" ACCEPT") for line in lines)
    }


@pytest.fixture
def ns(netns: NetnsFactory) -> Netns:
    if shutil.which("iptables-restore") is None:
        pytest.fail("iptables-restore not found: run scripts/install-deps.sh")
    ns = netns.new("fw")
    # What Docker would have made: its chain, the jump to it, a MASQUERADE at the top of nat.
    ns.sh("iptables", "-N", "DOCKER-USER")
    ns.sh("iptables", "-P", "FORWARD", "DROP")
    ns.sh("iptables", "-A", "FORWARD", "-j", "DOCKER-USER")
    ns.sh("iptables", "-A", "DOCKER-USER", "-j", "RETURN")
    ns.sh("iptables", "-t", "nat", "-I", "POSTROUTING", "-s", "172.17.0.0/16", "!", "-o",
          "docker0", "-j", "MASQUERADE")  # fmt: skip
    return ns


def test_apply_converges_and_keeps_dockers_rules(ns: Netns) -> None:
    assert ns.run(lambda: firewall.apply(CFG)) is True
    assert dump(ns) == {
        "filter": [
            ":INPUT ACCEPT",
            ":FORWARD DROP",
            ":OUTPUT ACCEPT",
            ":DOCKER-USER -",
            ":SHOAL-FORWARD -",
            "-A FORWARD -j DOCKER-USER",
            "-A DOCKER-USER -j SHOAL-FORWARD",
            "-A DOCKER-USER -j RETURN",
            *SHOAL_FORWARD,
        ],
        "nat": [
            ":PREROUTING ACCEPT",
            ":INPUT ACCEPT",
            ":OUTPUT ACCEPT",
            ":POSTROUTING ACCEPT",
            ":SHOAL-DNS -",
            ":SHOAL-POSTROUTING -",
            "-A PREROUTING -j SHOAL-DNS",
            "-A POSTROUTING -j SHOAL-POSTROUTING",
            "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
            *SHOAL_DNS,
            *SHOAL_POSTROUTING,
        ],
    }
    before = dump(ns)
    assert ns.run(lambda: firewall.apply(CFG)) is False
    assert dump(ns) == before

    # A new local subnet rewrites shoal's chains only.
    moved = CFG.model_copy(update={"local_subnet": IPv4Network("10.42.7.0/24")})
    assert ns.run(lambda: firewall.apply(moved)) is True
    after = dump(ns)
    assert "-A SHOAL-POSTROUTING -s 10.42.7.0/24 -d 10.42.0.0/16 -j RETURN" in after["nat"]
    assert not any("10.42.1.0/24" in rule for rules in after.values() for rule in rules)
    assert after["filter"].count("-A DOCKER-USER -j SHOAL-FORWARD") == 1

    # Someone flushed our chain: the next apply notices and repairs it.
    ns.sh("iptables", "-F", "SHOAL-FORWARD")
    assert ns.run(lambda: firewall.apply(moved)) is True
    assert dump(ns) == after


def test_apply_retires_the_old_mss_chain(ns: Netns) -> None:
    """An upgraded host: the mangle chain an older shoal made goes, with its jump."""
    ns.sh("iptables", "-t", "mangle", "-N", "SHOAL-MSS")
    ns.sh("iptables", "-t", "mangle", "-A", "FORWARD", "-j", "SHOAL-MSS")
    ns.sh("iptables", "-t", "mangle", *SHOAL_MSS[0].split())
    assert ns.run(lambda: firewall.apply(CFG)) is True
    assert "mangle" not in dump(ns)
    assert ns.run(lambda: firewall.apply(CFG)) is False


def test_apply_without_docker_creates_docker_user(netns: NetnsFactory) -> None:
    ns = netns.new("fw-nodocker")
    assert ns.run(lambda: firewall.apply(CFG)) is True
    rules = dump(ns)["filter"]
    assert ":DOCKER-USER -" in rules and "-A DOCKER-USER -j SHOAL-FORWARD" in rules
    assert ns.run(lambda: firewall.apply(CFG)) is False


def test_teardown_leaves_dockers_rules(ns: Netns) -> None:
    pristine = dump(ns)
    assert ns.run(firewall.teardown) is False
    assert ns.run(lambda: firewall.apply(CFG)) is True
    assert ns.run(firewall.teardown) is True
    assert dump(ns) == pristine
    assert ns.run(firewall.teardown) is False
