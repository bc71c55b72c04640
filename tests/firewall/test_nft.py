"""shoal's nftables table: the rendered text against a golden file, and real nft inside a
throwaway network namespace (loads, lists back as rendered, converges, repairs, goes away)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from shoal import firewall
from shoal.firewall import nft
from shoal.plan.hostconfig import FirewallConfig
from shoal.plan.policy import compile_for
from tests.firewall.test_rules import CFG
from tests.hostnet.netns import Netns, NetnsFactory
from tests.policy.conftest import CONTAINERS, box, example, mesh

GOLDEN = Path(__file__).parent / "golden" / "inet-shoal.nft"


def test_render_matches_the_golden_file() -> None:
    assert nft.render(CFG) == GOLDEN.read_text()


def test_render_follows_the_config() -> None:
    other = CFG.model_copy(
        update={
            "mesh_interface": "wg9",
            "bridge": "br-x",
            "local_subnet": IPv4Network("10.9.3.0/24"),
            "container_pool": IPv4Network("10.9.0.0/16"),
            "mesh_pool": IPv4Network("100.100.0.0/16"),
        }
    )
    text = nft.render(other)
    assert "elements = { 10.9.0.0/16, 100.100.0.0/16 }" in text
    assert '"wg9" : jump from_mesh, "br-x" : goto from_containers' in text
    assert "ip saddr != 10.9.3.2-10.9.3.254 drop" in text
    assert 'iifname "wg9" oifname != "br-x" drop' in text
    assert "shoal0" not in text and "10.42." not in text


def test_container_sources_exclude_gateway_and_broadcast() -> None:
    assert nft.container_sources(IPv4Network("10.42.1.0/24")) == (
        IPv4Address("10.42.1.2"),
        IPv4Address("10.42.1.254"),
    )


def test_canonical_ignores_the_order_of_set_members() -> None:
    a = '\t\tiifname vmap { "shoal0" : accept, "lo" : accept }\n'
    b = '\t\tiifname vmap { "lo" : accept, "shoal0" : accept }\n\n'
    assert nft.canonical(a) == nft.canonical(b)


def test_changes_explain_a_moved_subnet() -> None:
    moved = CFG.model_copy(update={"local_subnet": IPv4Network("10.42.7.0/24")})
    established = 'iifname "shoal-br0" ip saddr {} ct state established,related accept'
    assert nft.changes(moved, nft.render(CFG)) == [
        "firewall: inet shoal - " + established.format("10.42.1.2-10.42.1.254"),
        "firewall: inet shoal - ip saddr != 10.42.1.2-10.42.1.254 drop",
        "firewall: inet shoal + " + established.format("10.42.7.2-10.42.7.254"),
        "firewall: inet shoal + ip saddr != 10.42.7.2-10.42.7.254 drop",
    ]
    assert nft.changes(CFG, None) == ["firewall: table inet shoal created"]
    assert nft.changes(CFG, nft.render(CFG)) == []


def listing(ns: Netns) -> str:
    return ns.sh("nft", "list", "table", "inet", "shoal").stdout


def has_table(ns: Netns) -> bool:
    return ns.sh("nft", "list", "table", "inet", "shoal", check=False).returncode == 0


def test_apply_loads_converges_and_repairs(netns: NetnsFactory) -> None:
    ns = netns.new("nft")
    assert ns.run(lambda: firewall.apply(CFG)) is True
    # The kernel lists the table back as rendered (modulo hashed-set order): the next apply
    # is a no-op, not a reload every resync.
    assert nft.canonical(listing(ns)) == nft.canonical(GOLDEN.read_text())
    assert ns.run(lambda: firewall.apply(CFG)) is False

    # Someone flushed a chain, then the whole ruleset: each time the next apply restores it.
    ns.sh("nft", "flush", "chain", "inet", "shoal", "input")
    assert ns.run(lambda: firewall.apply(CFG)) is True
    assert nft.canonical(listing(ns)) == nft.canonical(GOLDEN.read_text())
    ns.sh("nft", "flush", "ruleset")
    assert ns.run(lambda: firewall.apply(CFG)) is True
    assert nft.canonical(listing(ns)) == nft.canonical(GOLDEN.read_text())

    moved = CFG.model_copy(update={"local_subnet": IPv4Network("10.42.7.0/24")})
    assert ns.run(lambda: firewall.apply(moved)) is True
    assert "10.42.7.2-10.42.7.254" in listing(ns) and "10.42.1.2" not in listing(ns)


def test_teardown_removes_the_table(netns: NetnsFactory) -> None:
    ns = netns.new("nft-down")
    assert ns.run(firewall.teardown) is False
    assert ns.run(lambda: firewall.apply(CFG)) is True
    assert has_table(ns)
    assert ns.run(firewall.teardown) is True
    assert not has_table(ns)
    assert ns.sh("iptables-save").stdout.count("SHOAL") == 0
    assert ns.run(firewall.teardown) is False


POLICY_GOLDEN = Path(__file__).parent / "golden" / "inet-shoal-policy.nft"


def policy_cfg() -> FirewallConfig:
    """h2 of tests/policy's mesh, enforcing the README's example policy."""
    h2 = mesh(2, example())
    return CFG.model_copy(
        update={
            "local_subnet": h2.self_node.subnet,
            "dns_address": h2.self_node.mesh_ip,
            "policy": compile_for(example(), h2),
        }
    )


def test_a_policy_renders_sets_per_rule_and_a_chain_ending_in_drop() -> None:
    assert nft.render(policy_cfg()) == POLICY_GOLDEN.read_text()


def test_the_kernel_loads_the_policy_table_and_lists_it_back(netns: NetnsFactory) -> None:
    ns = netns.new("nft-policy")
    cfg = policy_cfg()
    assert ns.run(lambda: firewall.apply(cfg)) is True
    assert nft.canonical(listing(ns)) == nft.canonical(POLICY_GOLDEN.read_text())
    assert ns.run(lambda: firewall.apply(cfg)) is False
    # A second db replica: one set gains an element, the rules stay as they are.
    grown = mesh(2, example()).model_copy(
        update={"containers": (*CONTAINERS, box(9, "app-db-2", 2, "db"))}
    )
    bigger = cfg.model_copy(update={"policy": compile_for(example(), grown)})
    assert nft.changes(bigger, listing(ns)) == [
        "firewall: inet shoal - elements = { 10.42.2.13 }",
        "firewall: inet shoal + elements = { 10.42.2.13, 10.42.2.19 }",
    ]
    assert nft.element_patch("inet", listing(ns), nft.render(bigger)) == (
        "flush set inet shoal p1_dst\nadd element inet shoal p1_dst { 10.42.2.13, 10.42.2.19 }\n"
    )
    handles = rule_handles(ns)
    assert ns.run(lambda: firewall.apply(bigger)) is True
    assert nft.canonical(listing(ns)) == nft.canonical(nft.render(bigger))
    assert rule_handles(ns) == handles  # the same rules: only the set changed
    # The replica stops again: the set is emptied back, still in place.
    assert ns.run(lambda: firewall.apply(cfg)) is True
    assert rule_handles(ns) == handles
    assert nft.canonical(listing(ns)) == nft.canonical(POLICY_GOLDEN.read_text())


def rule_handles(ns: Netns) -> list[str]:
    out = ns.sh("nft", "-a", "list", "chain", "inet", "shoal", "mesh_policy").stdout
    return [line.rsplit("# handle ", 1)[1] for line in out.splitlines() if "# handle" in line]


def test_an_element_patch_only_when_nothing_but_elements_differ() -> None:
    cfg = policy_cfg()
    text = nft.render(cfg)
    emptied = text.replace("\t\telements = { 10.42.2.13 }\n", "")
    assert nft.element_patch("inet", text, emptied) == "flush set inet shoal p1_dst\n"
    assert nft.element_patch("inet", emptied, text) == (
        "flush set inet shoal p1_dst\nadd element inet shoal p1_dst { 10.42.2.13 }\n"
    )
    assert nft.element_patch("inet", text, text) == ""
    other_rule = text.replace("tcp dport 5432", "tcp dport 5433")
    assert nft.element_patch("inet", text, other_rule) is None


def test_canonical_joins_element_lists_nft_wrapped() -> None:
    wrapped = "\t\telements = { 10.42.2.0/24, 10.42.3.5,\n\t\t\t     100.64.0.2 }\n"
    assert nft.canonical(wrapped) == ["\t\telements = { 10.42.2.0/24, 10.42.3.5, 100.64.0.2 }"]
