"""`shoal lab bench` runs the benchmarks of a source checkout, and says what to do without one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from shoal.cli import bench_cmds
from shoal.cli.main import main


def test_from_a_checkout_it_reaches_the_benchmarks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An unknown section is refused by the benchmarks' runner before anything runs.
    assert main(["lab", "bench", "--out", str(tmp_path), "--only", "nosuch"]) == 1
    assert "unknown section(s) nosuch: choose from dataplane, controlplane, scale" in (
        capsys.readouterr().err
    )


def test_without_the_benchmarks_it_exits_2_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # What an install from the wheel looks like: no benchmarks/ beside the package.
    monkeypatch.setattr(bench_cmds, "_CHECKOUT", tmp_path)
    monkeypatch.setitem(sys.modules, "benchmarks", None)
    monkeypatch.setitem(sys.modules, "benchmarks.runner", None)

    assert main(["lab", "bench", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == bench_cmds.NOT_AVAILABLE + "\n"
    assert "run `make bench` from a source checkout" in err
    assert not list(tmp_path.iterdir())
