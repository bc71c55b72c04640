"""Cutting established flows a new policy denies: the judgement in pure code, and real
connection-tracking entries deleted inside a throwaway network namespace."""

from __future__ import annotations

from ipaddress import IPv4Address

from shoal.firewall import conntrack
from shoal.firewall.conntrack import Flow
from tests.firewall.test_nft import policy_cfg
from tests.hostnet.netns import Netns, NetnsFactory

LISTING = """\
tcp      6 431999 ESTABLISHED src=10.42.1.11 dst=10.42.2.13 sport=40000 dport=5432 \
src=10.42.2.13 dst=10.42.1.11 sport=5432 dport=40000 [ASSURED] mark=0 use=1
tcp      6 431999 ESTABLISHED src=10.42.1.11 dst=10.42.2.13 sport=40001 dport=5433 \
src=10.42.2.13 dst=10.42.1.11 sport=5433 dport=40001 [ASSURED] mark=0 use=1
udp      17 29 src=10.42.3.12 dst=100.64.0.2 sport=5000 dport=53 [UNREPLIED] \
src=100.64.0.2 dst=10.42.3.12 sport=53 dport=5000 mark=0 use=1
tcp      6 100 ESTABLISHED src=10.42.2.13 dst=10.42.3.12 sport=1 dport=2 \
src=10.42.3.12 dst=10.42.2.13 sport=2 dport=1 mark=0 use=1
icmp     1 29 src=10.42.1.11 dst=10.42.2.13 type=8 code=0 id=7 src=10.42.2.13 \
dst=10.42.1.11 type=0 code=0 id=7 mark=0 use=1
"""


def flow(proto: str, src: str, dst: str, sport: int, dport: int) -> Flow:
    return Flow(proto, IPv4Address(src), IPv4Address(dst), sport, dport)


def test_parse_takes_the_original_direction_of_tcp_and_udp() -> None:
    assert conntrack.parse_flows(LISTING) == [
        flow("tcp", "10.42.1.11", "10.42.2.13", 40000, 5432),
        flow("tcp", "10.42.1.11", "10.42.2.13", 40001, 5433),
        flow("udp", "10.42.3.12", "100.64.0.2", 5000, 53),
        flow("tcp", "10.42.2.13", "10.42.3.12", 1, 2),
    ]


def test_denied_judges_only_flows_from_the_mesh_into_this_host() -> None:
    # Allowed web -> db stays; db on another port and the host's own DNS are denied; a flow
    # this host's container started is not the destination's business here.
    assert conntrack.denied(policy_cfg(), conntrack.parse_flows(LISTING)) == [
        flow("tcp", "10.42.1.11", "10.42.2.13", 40001, 5433),
        flow("udp", "10.42.3.12", "100.64.0.2", 5000, 53),
    ]


def _insert(ns: Netns, proto: str, src: str, dst: str, sport: int, dport: int) -> None:
    state = ["--state", "ESTABLISHED"] if proto == "tcp" else []
    ns.sh(
        "conntrack", "-I", "-p", proto, "-s", src, "-d", dst, "--sport", str(sport),
        "--dport", str(dport), *state, "-t", "300",
    )  # fmt: skip


def test_cut_denied_deletes_exactly_the_denied_entries(netns: NetnsFactory) -> None:
    ns = netns.new("ct")
    _insert(ns, "tcp", "10.42.1.11", "10.42.2.13", 40000, 5432)
    _insert(ns, "tcp", "10.42.1.11", "10.42.2.13", 40001, 5433)
    _insert(ns, "udp", "10.42.3.12", "100.64.0.2", 5000, 53)
    assert ns.run(lambda: conntrack.cut_denied(policy_cfg())) == 2
    left = conntrack.parse_flows(ns.sh("conntrack", "-L", "-f", "ipv4").stdout)
    assert left == [flow("tcp", "10.42.1.11", "10.42.2.13", 40000, 5432)]
    assert ns.run(lambda: conntrack.cut_denied(policy_cfg())) == 0
