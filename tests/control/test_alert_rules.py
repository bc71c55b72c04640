"""docs/alerts.yml, the example Prometheus alert rules: a rules file Prometheus would load
(groups of rules with alert, expr, for, labels, annotations), whose expressions are balanced
and name only metric families and labels that shoal really exports (scraped from a real
server and rendered from an agent snapshot), and whose annotations use only those labels."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from shoal.agent.metrics import render_metrics
from shoal.control.app import RunningServer
from tests.agent.test_metrics import snapshot
from tests.control.servers import join
from tests.control.test_metrics import scrape

RULES = Path(__file__).resolve().parents[2] / "docs" / "alerts.yml"
_TYPE = re.compile(r"^# TYPE (\S+) (\S+)$", re.M)
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ", re.M)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="')
_METRIC = re.compile(r"\b(shoal_[a-z0-9_]+)\b")
_MATCHERS = re.compile(r"\b(shoal_[a-z0-9_]+)\{([^}]*)\}")
_DURATION = re.compile(r"^[0-9]+[smhd]$")
_TARGET = {"instance", "job"}  # what Prometheus adds to every scraped series


def families(text: str) -> dict[str, set[str]]:
    """Family → its label names, from an exposition (histogram series under their family)."""
    kinds = dict(_TYPE.findall(text))
    out: dict[str, set[str]] = {name: set() for name in kinds}
    for name, labels in _SAMPLE.findall(text):
        family = name
        if name not in kinds:
            family = re.sub(r"_(bucket|sum|count)$", "", name)
        out.setdefault(family, set()).update(_LABEL.findall(labels))
        if kinds.get(family) == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                out.setdefault(family + suffix, set()).update(_LABEL.findall(labels))
    return out


def balanced(expr: str) -> bool:
    stack: list[str] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for ch in re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack


async def test_the_example_alert_rules_load_and_name_what_shoal_exports(
    server: RunningServer,
) -> None:
    await join(server, "h1")
    await scrape(server, "SHOAL-ADMIN-1-wrong-token")  # a refusal: its counters get series
    status, _, text = await scrape(server, server.admin_token)
    assert status == 200
    exported = families(text) | families(render_metrics(await snapshot()))

    doc: Any = yaml.safe_load(RULES.read_text())
    assert set(doc) == {"groups"} and doc["groups"]
    names: set[str] = set()
    for group in doc["groups"]:
        assert set(group) == {"name", "rules"} and group["rules"], group
        for rule in group["rules"]:
            where = f"{RULES.name}: {rule.get('alert')}"
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, where
            assert re.fullmatch(r"Shoal[A-Z][A-Za-z]+", rule["alert"]), where
            assert rule["alert"] not in names, f"{where}: twice"
            names.add(rule["alert"])
            expr = rule["expr"]
            assert isinstance(expr, str) and balanced(expr), where
            if "for" in rule:
                assert _DURATION.match(rule["for"]), where
            assert rule["labels"]["severity"] in {"warning", "critical"}, where
            assert rule["annotations"]["summary"], where
            used = set(_METRIC.findall(expr))
            assert used, f"{where}: no shoal metric"
            for metric in used:
                assert metric in exported, f"{where}: shoal exports no {metric}"
            for metric, matchers in _MATCHERS.findall(expr):
                for label in re.findall(r"([a-zA-Z_]+)\s*(?:=~|!=|!~|=)", matchers):
                    assert label in exported[metric], f"{where}: {metric} has no label {label}"
            labels = set().union(*(exported[m] for m in used)) | _TARGET
            for text_ in rule["annotations"].values():
                for label in re.findall(r"\$labels\.([a-zA-Z_]+)", text_):
                    assert label in labels, f"{where}: annotation uses missing label {label}"
    assert len(names) >= 8
