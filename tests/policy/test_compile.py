"""A policy compiled for one host: address sets per rule, verdicts and explanations."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from shoal.model.policy import parse
from shoal.plan.hostconfig import plan_host
from shoal.plan.policy import compile_for, explain, publishable
from shoal.testing.builders import SETTINGS
from tests.policy.conftest import CONTAINERS, box, example, mesh

H2 = IPv4Address("100.64.0.2")


def nets(*texts: str) -> tuple[IPv4Network, ...]:
    return tuple(IPv4Network(t) for t in texts)


def test_compiled_for_h2_the_database_host() -> None:
    compiled = compile_for(example(), mesh(2, example()))
    web_db, ops, icmp = compiled.rules
    assert (web_db.origin, web_db.sources, web_db.dests) == (
        "example.yaml:3",
        nets("10.42.1.11/32", "10.42.3.12/32"),  # both web replicas, wherever they run
        nets("10.42.2.13/32"),  # the db replica on h2
    )
    assert ops.sources == nets("10.42.1.0/24", "100.64.0.1/32")  # h1 (tag ops) and its host
    assert ops.dests == nets("10.42.2.14/32", "100.64.0.2/32")  # the api container and h2
    # node:h2 is its containers: the subnet without the gateway (the host on the bridge)
    assert icmp.dests == nets(
        "10.42.2.0/32", "10.42.2.2/31", "10.42.2.4/30", "10.42.2.8/29",
        "10.42.2.16/28", "10.42.2.32/27", "10.42.2.64/26", "10.42.2.128/25",
    )  # fmt: skip
    assert compiled.revision == 3 and compiled.mesh_ip == H2


def test_the_bridge_gateway_is_the_host_and_only_mesh_host_opens_it() -> None:
    policy = parse("rules:\n  - {from: '*', to: ['*', 'cidr:10.42.2.0/30']}\n", "p.yaml")
    compiled = compile_for(policy, mesh(2, policy))
    gateway, container = IPv4Address("10.42.2.1"), IPv4Address("10.42.2.13")
    web = IPv4Address("10.42.1.11")
    assert explain(compiled, H2, web, container, "tcp", 80).allow
    assert explain(compiled, H2, web, IPv4Address("10.42.2.2"), "tcp", 80).allow
    refused = explain(compiled, H2, web, gateway, "tcp", 80)
    assert not refused.allow and refused.reason == "no rule of p.yaml r0 allows it"


def test_rules_that_never_select_this_host_are_left_out_but_empty_sets_stay() -> None:
    on_h3 = compile_for(example(), mesh(3, example()))
    # web -> db stays (a db may start on h3 any time: a set element, not a new rule); the
    # mesh-host/label rule stays for the same reason; node:h2 icmp is h2's business only.
    assert [r.origin for r in on_h3.rules] == ["example.yaml:3", "example.yaml:6"]
    assert on_h3.rules[0].dests == ()
    assert on_h3.rules[1].dests == nets("100.64.0.3/32")


def test_explain_names_the_rule_or_the_default() -> None:
    compiled = compile_for(example(), mesh(2, example()))
    web, db = IPv4Address("10.42.1.11"), IPv4Address("10.42.2.13")
    assert explain(compiled, H2, web, db, "tcp", 5432).reason == "allowed by example.yaml:3"
    denied = explain(compiled, H2, web, db, "tcp", 5433)
    assert not denied.allow and denied.reason == "no rule of example.yaml r3 allows it"
    assert explain(compiled, H2, web, H2, "icmp", None).allow  # hosts always answer pings
    # web-2 runs on h3, which has no ops tag; web-1 runs on h1, which has
    assert not explain(compiled, H2, IPv4Address("10.42.3.12"), H2, "tcp", 22).allow
    assert explain(compiled, H2, web, H2, "tcp", 22).reason == "allowed by example.yaml:6"
    # no policy: containers reach containers, hosts stay closed
    assert explain(None, H2, web, db, "tcp", 5433).allow
    assert not explain(None, H2, web, H2, "tcp", 22).allow


def test_plan_puts_the_compiled_policy_in_the_firewall_part() -> None:
    key = __import__("shoal.model.keys", fromlist=["PrivateKey"]).PrivateKey(bytes([2]) * 32)
    assert plan_host(mesh(2), key, 51820).firewall.policy is None
    planned = plan_host(mesh(2, example()), key, 51820).firewall.policy
    assert planned == compile_for(example(), mesh(2, example()))


def test_a_container_starting_changes_set_elements_not_rules() -> None:
    before = compile_for(example(), mesh(2, example()))
    grown = mesh(2, example()).model_copy(
        update={"containers": (*CONTAINERS, box(9, "app-db-2", 2, "db"))}
    )
    after = compile_for(example(), grown)
    assert [r.origin for r in after.rules] == [r.origin for r in before.rules]
    assert after.rules[0].dests == nets("10.42.2.13/32", "10.42.2.19/32")


def test_unpublishable_names_leave_dns_only() -> None:
    policy = parse("publish:\n  - {tags: [db], names: [db, cache]}\n", "p.yaml")
    served = publishable(mesh(2, policy))
    # h2 is tagged db: its db and cache stay; nothing else claimed is refused
    assert served.containers == CONTAINERS
    impostor = box(8, "app-db-9", 3, "db")  # h3 has no db tag
    with_impostor = mesh(1, policy).model_copy(update={"containers": (*CONTAINERS, impostor)})
    assert impostor not in publishable(with_impostor).containers
    assert with_impostor.settings == SETTINGS
