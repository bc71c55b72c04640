"""`--nat` parsing and the routers' rulesets (pure; the behaviour is in test_nat.py)."""

from __future__ import annotations

import pytest

from shoal.lab.errors import LabError
from shoal.lab.nat import NatSpec, parse_nat, ruleset


def test_parse_names_kinds_and_shared_routers() -> None:
    assert parse_nat("h2=easy, h3=hard:r,h4=hard:r,") == {
        "h2": NatSpec("h2", "easy", "h2"),
        "h3": NatSpec("h3", "hard", "r"),
        "h4": NatSpec("h4", "hard", "r"),
    }
    assert parse_nat("") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("h2", "expected HOST=KIND"),
        ("h2=cone", "KIND one of easy, hard, udp-blocked"),
        ("h2=easy,h2=hard", "named twice"),
        ("h2=easy:r,h3=hard:r", "two kinds"),
        ("h2=easy:Bad_Name", "bad router name"),
    ],
)
def test_parse_refuses_bad_entries(text: str, message: str) -> None:
    with pytest.raises(LabError, match=message):
        parse_nat(text)


def test_each_kind_renders_its_mapping_and_filtering() -> None:
    easy, hard, blocked = ruleset("easy"), ruleset("hard"), ruleset("udp-blocked")
    assert 'oifname "wan" masquerade\n' in easy and "@cone" in easy
    assert "masquerade fully-random" in hard and "@cone" not in hard
    assert "tcp dport { 80, 443, 8443 } accept" in blocked and "@cone" not in blocked
    for rules in (easy, hard, blocked):
        assert "policy drop" in rules and "ct state established,related accept" in rules


def test_a_rebound_port_gets_one_new_outside_port_before_the_general_rule() -> None:
    rules = ruleset("easy", moved={51820: 21820})
    moved = 'oifname "wan" udp sport 51820 masquerade to :21820\n'
    assert moved in rules
    # nft takes the first verdict: the moved port's rule must come before the general one.
    assert rules.index(moved) < rules.index('oifname "wan" masquerade\n')
