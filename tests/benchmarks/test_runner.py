"""Publishing some sections again (`python -m benchmarks --only NAME`): the others stay as the
report holds them, each dated with the run that measured it. From a canned report of one run
(tests/benchmarks/test_report.py) and canned section runs: no lab."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import report, runner
from benchmarks.dataplane.results import NfCost
from benchmarks.results import SECTIONS, AnySection, Results, Section, kept_sections
from shoal.lab import LabError
from tests.benchmarks.test_report import DOCS, canned

PUBLISHED = "2026-11-26 10:00 UTC"  # the canned report's run


def published() -> Results:
    """A report written by one run of every section (no section carries its own date)."""
    return canned()


def test_a_run_of_one_section_keeps_the_others_with_their_dates() -> None:
    previous = published()
    sections = kept_sections(previous, ("controlplane",), quick=False, hosts=2)
    assert sections.controlplane == Section(status="skipped", reason="not run yet")
    for name in ("dataplane", "scale", "nat", "policy"):
        kept, old = sections.named(name), previous.sections.named(name)
        assert old.generated is None
        assert kept.generated == PUBLISHED
        assert kept.model_copy(update={"generated": None}) == old


def test_a_section_kept_twice_keeps_the_date_of_the_run_that_measured_it() -> None:
    first = published()
    later = first.model_copy(
        update={
            "generated": "2026-12-01 04:00 UTC",
            "sections": kept_sections(first, ("controlplane",), quick=False, hosts=2),
        }
    )
    again = kept_sections(later, ("nat",), quick=False, hosts=2)
    assert again.dataplane.generated == PUBLISHED
    assert again.controlplane.generated == "2026-12-01 04:00 UTC"
    assert again.nat.status == "skipped"


@pytest.mark.parametrize(("quick", "hosts"), [(True, 2), (False, 3)])
def test_figures_of_another_kind_of_run_are_not_kept(quick: bool, hosts: int) -> None:
    sections = kept_sections(published(), ("controlplane",), quick=quick, hosts=hosts)
    assert sections.dataplane.status == "skipped" and sections.dataplane.result is None
    assert sections.dataplane.reason == (
        "not selected (--only); the report there (full, 2 hosts) is of another kind"
    )


def test_without_a_report_the_others_are_skipped() -> None:
    sections = kept_sections(None, ("controlplane",), quick=False, hosts=2)
    assert {sections.named(n).status for n in SECTIONS} == {"skipped"}
    assert sections.scale.reason == "not selected (--only)"


def _controlplane_again() -> AnySection:
    # A real section's result: the one docs/benchmarks.json holds.
    docs = Results.model_validate_json((DOCS / "benchmarks.json").read_text())
    result = docs.sections.controlplane.result
    assert result is not None
    again = result.model_copy(update={"join_reps": 9})
    return Section(status="ok", seconds=100.0, result=again)


def test_publishing_one_section_rewrites_only_that_section(tmp_path: Path) -> None:
    report.write_report(published(), tmp_path)
    before = report.read_report(tmp_path)
    assert before is not None
    results, written = runner.run_sections(
        tmp_path,
        {"controlplane": _controlplane_again},
        before,
        hosts=2,
        quick=False,
        machine=before.machine,
    )
    after = Results.model_validate_json(written["json"].read_text())
    assert after == results
    assert after.kept() == ("dataplane", "scale", "policy", "nat")
    cp = after.sections.controlplane
    assert cp.generated == after.generated and cp.result is not None and cp.result.join_reps == 9
    for name in ("dataplane", "scale", "policy", "nat"):
        kept = after.sections.named(name)
        assert kept == before.sections.named(name).model_copy(update={"generated": PUBLISHED})
    md = written["markdown"].read_text()
    assert md == report.render_markdown(after, {"dataplane": report.DATAPLANE_PNG,
                                                "scale": report.SCALE_PNG})  # fmt: skip
    assert f"(the last run: {after.generated}; dataplane, scale, policy, nat kept" in md
    assert f"## Data plane\n\n_Measured {PUBLISHED} (an earlier run, kept)._" in md
    assert f"## Control plane\n\n_Measured {after.generated} (the last run)._" in md
    assert "The last run took" in md


def test_a_report_of_one_run_shows_no_dates_per_section() -> None:
    md = report.render_markdown(canned())
    assert "_Measured" not in md and "The whole run took 10.0 min." in md


def test_a_report_that_does_not_parse_stops_the_run_before_it_starts(tmp_path: Path) -> None:
    (tmp_path / "benchmarks.json").write_text('{"generated": 1}')
    with pytest.raises(LabError, match="is not a benchmark report this code reads"):
        runner.run_bench(tmp_path, only=("controlplane",))
    assert report.read_report(tmp_path / "missing") is None


def test_an_unknown_section_is_refused() -> None:
    with pytest.raises(LabError, match="unknown section"):
        runner.run_bench(Path("/nonexistent"), only=("bogus",))


def test_only_this_runs_failures_set_the_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    now = "2026-12-01 04:00 UTC"
    everything_kept = kept_sections(published(), (), quick=False, hosts=2)
    results = published().model_copy(update={"generated": now, "sections": everything_kept})
    assert runner.summarize(results, {}) == 0  # the canned run's controlplane failed, then
    assert (
        f"controlplane: failed (LabError: dockerd did not start), kept from the run of {PUBLISHED}"
        in capsys.readouterr().out
    )
    failed_now = Section(status="failed", reason="LabError: x", generated=now)
    sections = everything_kept.model_copy(update={"nat": failed_now})
    assert runner.summarize(results.model_copy(update={"sections": sections}), {}) == 1


def test_a_new_data_plane_run_keeps_the_published_decomposition_runs(tmp_path: Path) -> None:
    """`benchmarks.dataplane.parity --publish` and `... nfcost --publish` add their runs to the
    data-plane section; running the section again replaces its figures, not those runs."""
    docs = Results.model_validate_json((DOCS / "benchmarks.json").read_text())
    dataplane = docs.sections.dataplane.result
    assert dataplane is not None and dataplane.parity  # docs holds some
    nfcost = NfCost(command="nfcost", generated="now", rounds=1, copies=10, seconds=3)
    dataplane = dataplane.model_copy(update={"nfcost": (nfcost,)})
    before = published()
    with_parity = before.sections.dataplane.model_copy(update={"result": dataplane})
    before = before.model_copy(
        update={"sections": before.sections.model_copy(update={"dataplane": with_parity})}
    )
    fresh = dataplane.model_copy(update={"parity": (), "nfcost": ()})
    results, _ = runner.run_sections(
        tmp_path,
        {"dataplane": lambda: Section(status="ok", seconds=1.0, result=fresh)},
        before,
        hosts=2,
        quick=False,
        machine=before.machine,
    )
    result = results.sections.dataplane.result
    assert result is not None and result.parity == dataplane.parity
    assert result.nfcost == (nfcost,)
