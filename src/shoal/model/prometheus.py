"""Prometheus text exposition (format 0.0.4), written by hand: the agent and the server each
expose a few dozen series, not worth a dependency.

    render([Family("shoal_peer_receive_bytes_total", "counter", "Bytes from the peer.",
                   (Sample(1234, peer="h2"),))])

Names and label names must match Prometheus' grammar (ValueError otherwise: a bug here, not
bad input); label values are escaped. Families come out in the order given, samples in theirs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Kind = Literal["counter", "gauge", "histogram"]

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@dataclass(frozen=True, slots=True)
class Sample:
    value: float
    labels: tuple[tuple[str, str], ...] = ()
    suffix: str = ""  # "_bucket", "_sum", "_count" of a histogram

    def __init__(self, value: float, suffix: str = "", **labels: str) -> None:
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "labels", tuple(labels.items()))
        object.__setattr__(self, "suffix", suffix)


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    kind: Kind
    help: str
    samples: Sequence[Sample] = field(default_factory=tuple)


def _value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer() and abs(v) < 2**53:
        return str(int(v))
    return repr(float(v))


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(families: Iterable[Family]) -> str:
    lines: list[str] = []
    for family in families:
        if not _NAME.match(family.name):
            raise ValueError(f"bad metric name {family.name!r}")
        help_text = family.help.replace("\\", "\\\\").replace("\n", "\\n")
        lines.append(f"# HELP {family.name} {help_text}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for sample in family.samples:
            for label, _ in sample.labels:
                if not _LABEL.match(label):
                    raise ValueError(f"bad label name {label!r} on {family.name}")
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels)
            braces = f"{{{labels}}}" if labels else ""
            lines.append(f"{family.name}{sample.suffix}{braces} {_value(sample.value)}")
    return "\n".join(lines) + "\n"


class Histogram:
    """Observations in fixed buckets (seconds), one series set per label tuple."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(sorted(buckets))
        self._series: dict[tuple[tuple[str, str], ...], tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        counts, total = self._series.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1
        counts[-1] += 1  # +Inf
        total[0] += value

    def samples(self) -> list[Sample]:
        out: list[Sample] = []
        for key, (counts, total) in sorted(self._series.items()):
            labels = dict(key)
            for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
                out.append(Sample(count, "_bucket", **labels, le=_value(bound)))
            out.append(Sample(total[0], "_sum", **labels))
            out.append(Sample(counts[-1], "_count", **labels))
        return out
