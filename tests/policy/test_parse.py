"""The policy format: what parses into which values, and one-line errors naming file:line."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from shoal.model.policy import (
    Endpoint,
    PolicyError,
    PortRange,
    Selector,
    decide,
    parse,
    run_tests,
)
from tests.policy.conftest import example


def test_the_example_parses_into_typed_rules_claims_and_tests() -> None:
    policy = example()
    web_db, ops, icmp = policy.rules
    assert (web_db.line, web_db.proto, web_db.ports) == (
        3,
        "tcp",
        (PortRange(first=5432, last=5432),),
    )
    assert web_db.sources == (Selector(kind="service", value="web"),)
    assert ops.dests == (Selector(kind="mesh-host"), Selector(kind="label", value="shoal.tags=api"))
    assert ops.ports == (PortRange(first=22, last=22), PortRange(first=8000, last=8080))
    assert (icmp.proto, icmp.ports) == ("icmp", ())
    assert [(c.tags, c.names) for c in policy.publish] == [(("db",), ("db",))]
    assert len(policy.tests) == 5 and run_tests(policy) == []


def test_defaults_an_empty_policy_and_any_protocol() -> None:
    assert parse("", "p.yaml").rules == ()
    rule = parse("rules:\n  - {from: '*', to: node:h1}\n", "p.yaml").rules[0]
    assert (rule.proto, rule.ports, rule.sources) == ("any", (), (Selector(kind="any"),))


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("rules: [\n", "p.yaml:2: not valid YAML"),
        ("rulez: []\n", "p.yaml:1: unknown key 'rulez' in the policy"),
        ("rules:\n  - from: web\n    to: service:db\n", "p.yaml:2: bad selector 'web'"),
        ("rules:\n  - from: service:web\n", "p.yaml:2: a rule needs 'to'"),
        ("rules:\n  - from: '*'\n    to: '*'\n    ports: 70000\n", "p.yaml:4: bad port '70000'"),
        ("rules:\n  - from: '*'\n    to: '*'\n    ports: 9-1\n", "p.yaml:4: bad port '9-1'"),
        ("rules:\n\n  - from: cidr:10.0.0.1/8\n    to: '*'\n", "p.yaml:3: bad CIDR"),
        (
            "rules:\n  - from: '*'\n    to: '*'\n    ports: 53\n    proto: icmp\n",
            "p.yaml:4: ports need proto tcp or udp",
        ),
        ("rules:\n  - from: '*'\n    to: '*'\n    proto: sctp\n", "p.yaml:4: proto must be"),
        ("rules:\n  - from: label:shoal.tags\n    to: '*'\n", "p.yaml:2: label selector"),
        ("rules: {}\n", "p.yaml:1: must be a list"),
        ("tests:\n  - {from: node:a, to: node:b, port: 1, expect: maybe}\n", "p.yaml:2: expect"),
        ("tests:\n  - {from: node:a, to: node:b, proto: udp, expect: deny}\n", "needs a port"),
        ("tests:\n  - {from: '*', to: node:b, port: 1, expect: deny}\n", "* is no endpoint"),
        ("publish:\n  - {tags: [db]}\n", "p.yaml:2: it needs 'names'"),
    ],
)
def test_errors_are_one_line_naming_file_and_line(text: str, error: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse(text, "p.yaml")
    message = str(caught.value)
    assert error in message and "\n" not in message, message


def test_inline_tests_report_what_fails_and_why() -> None:
    policy = parse(
        "rules:\n"
        "  - {from: service:web, to: service:db, ports: 5432}\n"
        "tests:\n"
        "  - {from: service:web, to: service:db, port: 5432, expect: deny}\n"
        "  - {from: service:db, to: service:web, port: 80, expect: allow}\n",
        "p.yaml",
    )
    assert run_tests(policy) == [
        "p.yaml:4: test expects deny, policy says allow (rule at p.yaml:2)",
        "p.yaml:5: test expects allow, policy says deny (no rule allows it)",
    ]


def test_selectors_over_test_endpoints() -> None:
    policy = example()
    on_h1 = Endpoint(node="h1", tags=("ops",))
    h2 = Endpoint(host=True, node="h2")
    api = Endpoint(labels=(("shoal.tags", "api"),), node="h2")
    assert decide(policy, on_h1, h2, "tcp", 22) is policy.rules[1]
    assert decide(policy, on_h1, api, "tcp", 8080) is policy.rules[1]
    assert decide(policy, on_h1, api, "tcp", 8081) is None
    # node:h2 as a destination is its containers, never the host's own services
    pinger = Endpoint(ip=IPv4Address("10.42.9.9"))
    assert decide(policy, pinger, Endpoint(node="h2"), "icmp", None) is policy.rules[2]
    assert decide(policy, pinger, h2, "icmp", None) is None
    # a service qualified by its project
    qualified = parse("rules:\n  - {from: '*', to: service:app/db, ports: 1}\n", "q.yaml")
    assert decide(qualified, on_h1, Endpoint(project="app", service="db"), "tcp", 1)
    assert decide(qualified, on_h1, Endpoint(project="other", service="db"), "tcp", 1) is None


def test_publish_claims_reserve_names_to_their_tags() -> None:
    policy = example()
    assert policy.may_publish(("db",), "db")
    assert not policy.may_publish(("ops",), "db")
    assert policy.may_publish((), "web")  # nobody claimed it
