"""`firewall.drift` (shoal doctor's firewall check) against real nft and iptables in a
throwaway network namespace: nothing when applied, the missing parts when broken."""

from __future__ import annotations

import shutil
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from shoal import firewall
from shoal.firewall import IptablesMissing
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


def test_a_host_without_docker_needs_no_iptables_unless_it_routes_a_subnet(
    netns: NetnsFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Debian installs nftables, not iptables: a laptop or a VM with a native database joins
    on nft alone; a subnet route's masquerade is what needs iptables, and says so."""
    ns = netns.new("noipt")
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("nft", "nsenter", "ip"):
        found = shutil.which(tool)
        assert found is not None, f"{tool} is not installed"
        (bare / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(bare))
    no_docker = CFG.model_copy(update={"local_subnet": None})
    assert ns.run(lambda: firewall.apply(no_docker)) is True
    assert ns.run(lambda: drift(no_docker)) == Drift(table=(), docker=())
    assert ns.sh("nft", "list", "table", "inet", "shoal").returncode == 0
    assert ns.run(lambda: firewall.teardown()) is True

    router = no_docker.model_copy(update={"subnet_routes": (IPv4Network("192.168.50.0/24"),)})
    with pytest.raises(IptablesMissing, match="install the iptables package"):
        ns.run(lambda: firewall.apply(router))
