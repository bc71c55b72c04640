"""A strict reader of the Prometheus text format, for tests: every sample must belong to a
family declared with # HELP and # TYPE before it, and parse as name{labels} value."""

from __future__ import annotations

import re

Key = tuple[str, frozenset[tuple[str, str]]]

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')
_SUFFIXES = ("_bucket", "_sum", "_count")


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text)


def parse(text: str) -> dict[Key, float]:
    """(name, labels) -> value; AssertionError on anything Prometheus would reject."""
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples: dict[Key, float] = {}
    assert text.endswith("\n"), "the exposition must end with a newline"
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helps.add(line.split()[2])
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in types, f"{name} declared twice"
            types[name] = kind
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, raw_labels, raw_value = match.groups()
        family = name
        if name not in types:
            family = next((name.removesuffix(s) for s in _SUFFIXES if name.endswith(s)), name)
        assert family in types and family in helps, f"{name} has no # HELP/# TYPE before it"
        labels = frozenset((k, _unescape(v)) for k, v in _PAIR.findall(raw_labels or ""))
        key = (name, labels)
        assert key not in samples, f"duplicate series {line!r}"
        samples[key] = float(raw_value)
    return samples


def value(samples: dict[Key, float], name: str, **labels: str) -> float:
    """The value of one series; KeyError naming it when absent."""
    key = (name, frozenset(labels.items()))
    if key not in samples:
        raise KeyError(f"no series {name}{labels}")
    return samples[key]
