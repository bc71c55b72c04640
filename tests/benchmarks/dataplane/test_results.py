"""shoal ÷ hand-written WireGuard as `make bench` judges it: the median of the rounds' own
ratios (the two run back to back in every round), each A B round taken with its B A round; the
medians' ratio where rounds do not pair."""

from __future__ import annotations

import pytest

from benchmarks.dataplane.render import comparison_md
from benchmarks.dataplane.results import SystemResult, compare, crossover, median


def _system(gbps: tuple[float, ...], cpu: tuple[float | None, ...]) -> SystemResult:
    return SystemResult(
        status="ok",
        label="x",
        tcp1_runs_gbps=gbps,
        tcp1_gbps=median(gbps),
        tcp1_cpu_runs=cpu,
        cpu_s_per_gbit=median([c for c in cpu if c is not None]),
    )


def test_a_round_hit_by_load_counts_once_against_the_pair_it_hit() -> None:
    # shoal is 2 % behind in every round. Load hit hand-written's first run and shoal's last:
    # the medians' ratio takes both hits; each round's ratio, and its pair, only its own.
    hand = _system((0.30, 0.40, 0.41, 0.40, 0.40, 0.41), (6.0, 4.5, 4.4, 4.5, 4.5, 4.4))
    shoal = _system((0.294, 0.392, 0.4018, 0.392, 0.392, 0.33), (6.1, 4.6, 4.5, 4.6, 4.6, 5.5))

    cmp = compare(shoal, hand)

    assert cmp.tcp1_rounds == pytest.approx((0.98,) * 5 + (0.33 / 0.41,))
    assert cmp.tcp1 == pytest.approx(0.98) and cmp.cpu == pytest.approx(4.6 / 4.5, rel=0.01)
    assert cmp.ratios.tcp1_gbps == pytest.approx(0.392 / 0.40)
    assert cmp.meets_target is True


def test_whatever_running_second_costs_cancels_out() -> None:
    # Each system loses a tenth when it runs second: hand-written in the B A rounds, shoal in
    # the A B rounds. Single rounds say 0.90 or 1.11; each pair of rounds says 1.00.
    hand = _system((0.40, 0.36) * 3, (5.0, 5.5) * 3)
    shoal = _system((0.36, 0.40) * 3, (5.5, 5.0) * 3)

    cmp = compare(shoal, hand)

    assert crossover(cmp.tcp1_rounds) == pytest.approx((1.0, 1.0, 1.0))
    assert cmp.tcp1 == pytest.approx(1.0) and cmp.cpu == pytest.approx(1.0)
    # An odd last round has no reverse: left out, unless it is all there is.
    assert crossover((0.9, 1.1, 0.8)) == pytest.approx(((0.9 * 1.1) ** 0.5,))
    assert crossover((0.8,)) == (0.8,) and crossover(()) == ()


def test_one_round_below_does_not_decide_but_most_rounds_do() -> None:
    hand = _system((0.40,) * 6, (5.0,) * 6)
    one_bad = compare(_system((0.40, 0.34, 0.40, 0.40, 0.40, 0.40), (5.0, 5.9) + (5.0,) * 4), hand)
    most_bad = compare(_system((0.38, 0.38, 0.34, 0.40, 0.38, 0.38), (5.2,) * 6), hand)

    assert one_bad.tcp1 == pytest.approx(1.0) and one_bad.meets_target is True
    assert most_bad.tcp1 == pytest.approx(0.95) and most_bad.meets_target is False


def test_rounds_that_do_not_pair_fall_back_to_the_medians() -> None:
    # A run that moved nothing has no CPU per Gbit; runs that do not line up (which a failed
    # system, reported failed and never compared, cannot cause) are not paired at all.
    hand = _system((0.40, 0.40, 0.40, 0.40, 0.40), (5.0, 5.0, 5.0, 5.0, 5.0))
    short = compare(_system((0.39, 0.39, 0.39, 0.39), (5.1, 5.1, 5.1, 5.1)), hand)
    no_cpu = compare(_system((0.39,) * 5, (5.1, None, 5.1, 5.1, 5.1)), hand)

    assert short.tcp1_rounds == () and short.tcp1 == pytest.approx(0.975)
    assert no_cpu.cpu_rounds == () and no_cpu.cpu == pytest.approx(1.02)
    assert no_cpu.tcp1_rounds == pytest.approx((0.975,) * 5)


def test_a_missing_figure_does_not_meet_the_target() -> None:
    hand = _system((0.40,), (5.0,))
    no_cpu = _system((0.40,), (None,))

    assert compare(no_cpu, hand).meets_target is False


def test_the_report_says_which_figures_are_paired() -> None:
    hand = _system((0.40, 0.40), (5.0, 5.0))
    both = " ".join(comparison_md(compare(_system((0.39, 0.40), (5.1, 5.0)), hand)))
    tcp_only = " ".join(comparison_md(compare(_system((0.39, 0.40), (5.1, None)), hand)))

    assert "TCP 1 stream and CPU per Gbit above: the median" in both
    assert "Rounds: TCP 1 stream 0.97, 1.00; CPU per Gbit 1.02, 1.00." in both
    assert "TCP 1 stream above: the median" in tcp_only
    assert "the other figure is the ratio of the medians" in tcp_only
    assert "Rounds: TCP 1 stream 0.97, 1.00." in tcp_only
