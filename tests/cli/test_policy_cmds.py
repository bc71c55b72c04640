"""`shoal policy check` offline, and how verdicts and status render."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.cli.main import main
from shoal.cli.policy_cmds import render_verdict
from shoal.model.api import PolicyVerdict
from tests.policy.conftest import EXAMPLE


def test_check_passes_a_good_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(EXAMPLE)]) == 0
    assert capsys.readouterr().out == (f"{EXAMPLE}: ok (3 rules, 1 publish claims, 5 tests pass)\n")


def test_check_names_the_file_and_line_of_a_mistake(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "my policy.yaml"
    bad.write_text("rules:\n  - from: service:web\n    to: db\n")
    assert main(["policy", "check", str(bad)]) == 1
    assert capsys.readouterr().err.startswith("shoal: my_policy.yaml:3: bad selector 'db'")


def test_check_lists_failing_tests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "p.yaml"
    broken.write_text(
        EXAMPLE.read_text().replace("port: 22, expect: deny", "port: 22, expect: allow", 1)
    )
    assert main(["policy", "check", str(broken)]) == 1
    err = capsys.readouterr().err
    assert (
        "1 inline test(s) fail" in err and "p.yaml:17: test expects allow, policy says deny" in err
    )


def test_check_refuses_an_unreadable_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["policy", "check", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read policy file" in capsys.readouterr().err


def test_a_verdict_is_one_line() -> None:
    verdict = PolicyVerdict(
        src="web-1 (10.42.0.2 on h1)",
        dst="db-1 (10.42.1.2 on h2)",
        proto="tcp",
        port=5432,
        allow=True,
        reason="allowed by p.yaml:3",
        policy_revision=2,
    )
    assert render_verdict(verdict) == (
        "allow  web-1 (10.42.0.2 on h1) -> db-1 (10.42.1.2 on h2) tcp/5432: allowed by p.yaml:3"
    )


def test_policy_test_exits_2_when_it_could_not_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not 1: a script asserting a flow tells "denied" from "not checked"."""
    monkeypatch.delenv("SHOAL_ADMIN_TOKEN", raising=False)
    argv = ["policy", "test", "--from", "web", "--to", "db:5432", "--data-dir", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("shoal: ") and err.count("\n") == 1
