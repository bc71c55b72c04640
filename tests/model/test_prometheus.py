"""The hand-written text exposition: escaping, value forms, histograms, bad names."""

from __future__ import annotations

import math

import pytest

from shoal.model.prometheus import Family, Histogram, Sample, render
from shoal.testing.prometheus import parse, value


def test_labels_are_escaped_and_values_written_as_prometheus_reads_them() -> None:
    text = render(
        [
            Family("x_total", "counter", 'Help with \\ and\na newline.', (
                Sample(3, path='a"b\\c\nd'), Sample(0.25, path="e"),
            )),
            Family("y", "gauge", "Odd values.", (
                Sample(math.inf, k="inf"), Sample(math.nan, k="nan"), Sample(2**60, k="big"),
            )),
        ]
    )  # fmt: skip
    assert text.splitlines()[:3] == [
        "# HELP x_total Help with \\\\ and\\na newline.",
        "# TYPE x_total counter",
        'x_total{path="a\\"b\\\\c\\nd"} 3',
    ]
    m = parse(text)
    assert value(m, "x_total", path='a"b\\c\nd') == 3
    assert value(m, "x_total", path="e") == 0.25
    assert value(m, "y", k="inf") == math.inf
    assert math.isnan(value(m, "y", k="nan"))
    assert value(m, "y", k="big") == 2**60


def test_a_histogram_counts_cumulatively_per_label_set() -> None:
    h = Histogram((0.1, 1.0))
    for seconds in (0.05, 0.5, 5.0):
        h.observe(seconds, route="/a")
    h.observe(0.01, route="/b")
    m = parse(render([Family("d_seconds", "histogram", "Durations.", h.samples())]))
    assert [value(m, "d_seconds_bucket", route="/a", le=le) for le in ("0.1", "1", "+Inf")] == [
        1, 2, 3,
    ]  # fmt: skip
    assert value(m, "d_seconds_count", route="/a") == 3
    assert value(m, "d_seconds_sum", route="/a") == pytest.approx(5.55)
    assert value(m, "d_seconds_count", route="/b") == 1


def test_bad_names_are_a_bug_not_output() -> None:
    with pytest.raises(ValueError, match="bad metric name"):
        render([Family("1x", "gauge", "h")])
    with pytest.raises(ValueError, match="bad label name"):
        render([Family("x", "gauge", "h", (Sample(1, **{"le-x": "1"}),))])
