"""shoal ÷ hand-written WireGuard as `make bench` judges it: the medians of the rounds' own
ratios (the two run back to back in every round), the medians' ratio where rounds do not pair."""

from __future__ import annotations

import pytest

from benchmarks.dataplane.results import SystemResult, compare


def _system(gbps: tuple[float, ...], cpu: tuple[float | None, ...]) -> SystemResult:
    return SystemResult(
        status="ok",
        label="x",
        tcp1_runs_gbps=gbps,
        tcp1_gbps=sorted(gbps)[len(gbps) // 2],
        tcp1_cpu_runs=cpu,
        cpu_s_per_gbit=sorted(c for c in cpu if c is not None)[len(cpu) // 2],
    )


def test_load_that_drifts_between_rounds_cancels_out_in_the_pairs() -> None:
    # The machine slows down round after round; shoal is 2 % behind in every round. The
    # medians' ratio mixes rounds (0.88x); the rounds' own ratios do not.
    hand = _system((0.50, 0.45, 0.40, 0.35, 0.30), (4.0, 4.4, 5.0, 5.7, 6.7))
    shoal = _system((0.49, 0.441, 0.392, 0.343, 0.294), (4.08, 4.49, 5.1, 5.81, 6.83))

    cmp = compare(shoal, hand)

    assert cmp.tcp1_rounds == pytest.approx((0.98,) * 5)
    assert cmp.tcp1 == pytest.approx(0.98) and cmp.cpu == pytest.approx(1.02, abs=0.001)
    assert cmp.ratios.tcp1_gbps == pytest.approx(0.392 / 0.40)
    assert cmp.meets_target is True


def test_one_round_below_does_not_decide_but_most_rounds_do() -> None:
    hand = _system((0.40, 0.40, 0.40), (5.0, 5.0, 5.0))
    one_bad = compare(_system((0.40, 0.34, 0.40), (5.0, 5.9, 5.0)), hand)
    most_bad = compare(_system((0.38, 0.34, 0.40), (5.2, 5.9, 5.0)), hand)

    assert one_bad.tcp1 == pytest.approx(1.0) and one_bad.meets_target is True
    assert most_bad.tcp1 == pytest.approx(0.95) and most_bad.meets_target is False


def test_rounds_that_do_not_pair_fall_back_to_the_medians() -> None:
    # shoal failed a run (four against five), or a run moved nothing (no CPU per Gbit).
    hand = _system((0.40, 0.40, 0.40, 0.40, 0.40), (5.0, 5.0, 5.0, 5.0, 5.0))
    short = compare(_system((0.39, 0.39, 0.39, 0.39), (5.1, 5.1, 5.1, 5.1)), hand)
    no_cpu = compare(_system((0.39,) * 5, (5.1, None, 5.1, 5.1, 5.1)), hand)

    assert short.tcp1_rounds == () and short.tcp1 == pytest.approx(0.975)
    assert no_cpu.cpu_rounds == () and no_cpu.cpu == pytest.approx(1.02)
    assert no_cpu.tcp1_rounds == pytest.approx((0.975,) * 5)
