"""`firewall.drift` (shoal doctor's firewall check) against real nft and iptables in a
throwaway network namespace: nothing when applied, the missing parts when broken."""

from __future__ import annotations

from shoal import firewall
from shoal.firewall.drift import Drift, drift
from tests.firewall.test_rules import CFG
from tests.hostnet.netns import NetnsFactory


def test_drift_is_empty_once_applied_and_names_what_was_broken(netns: NetnsFactory) -> None:
    ns = netns.new("drift")
    missing = ns.run(lambda: drift(CFG))
    assert missing.table == (
        "firewall: table inet shoal created",
        "firewall: table bridge shoal created",
    )
    assert "firewall: filter DOCKER-USER -> SHOAL-FORWARD jump added" in missing.docker
    assert ns.run(lambda: firewall.apply(CFG)) is True
    assert ns.run(lambda: drift(CFG)) == Drift(table=(), docker=())

    ns.sh("nft", "flush", "chain", "inet", "shoal", "input")
    ns.sh("iptables", "-D", "DOCKER-USER", "-j", "SHOAL-FORWARD")
    broken = ns.run(lambda: drift(CFG))
    assert broken.table and all(line.startswith("firewall: inet shoal + ") for line in broken.table)
    assert broken.docker == ("firewall: filter DOCKER-USER -> SHOAL-FORWARD jump added",)
    # Reading changed nothing: the next apply still has work to do.
    assert ns.run(lambda: firewall.apply(CFG)) is True
    assert ns.run(lambda: drift(CFG)) == Drift(table=(), docker=())
    ns.sh("nft", "delete", "table", "bridge", "shoal")  # the anti-spoofing table gone
    assert ns.run(lambda: drift(CFG)).table == ("firewall: table bridge shoal created",)
