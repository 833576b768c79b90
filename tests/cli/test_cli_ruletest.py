"""`falco-correlator test [PATH ...]`: rule tests (fixtures of events and expected incidents)."""

from __future__ import annotations

import shutil
from pathlib import Path

from _cli_support import CLI_RULES, SHIPPED_RULES, Run

PASSING = """\
rules: [../rules]
start: "2024-01-01T00:00:00Z"
tests:
  - name: three bursts in a minute fire
    correlations: [Burst]
    events:
      - {at: +0s, repeat: 3, every: 10s, rule: Burst event, priority: Notice,
         output_fields: {container.id: c1}}
    expect:
      - {correlation: Burst, status: new, count: 1, key: {container.id: c1}, events: [0, 1, 2]}
"""

FAILING = """\
rules: [../rules]
start: "2024-01-01T00:00:00Z"
tests:
  - name: two bursts are expected to fire but do not
    correlations: [Burst]
    events:
      - {at: +0s, repeat: 2, every: 10s, rule: Burst event, output_fields: {container.id: c1}}
    expect:
      - {correlation: Burst}
"""


def _project(tmp_path: Path, **fixtures: str) -> None:
    shutil.copytree(CLI_RULES, tmp_path / "rules")
    (tmp_path / "fixtures").mkdir()
    for name, text in fixtures.items():
        (tmp_path / "fixtures" / f"{name}.test.yaml").write_text(text)


def test_shipped_rule_tests_pass(run: Run, tmp_path: Path) -> None:
    shutil.copytree(SHIPPED_RULES, tmp_path / "rules")
    result = run("test", "rules/")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout


def test_default_path_is_rules_directory(run: Run, tmp_path: Path) -> None:
    shutil.copytree(SHIPPED_RULES, tmp_path / "rules")
    result = run("test")
    assert result.returncode == 0, result.stdout + result.stderr


def test_passing_fixture_exits_0(run: Run, tmp_path: Path) -> None:
    _project(tmp_path, passing=PASSING)
    result = run("test", "fixtures")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout


def test_failing_fixture_exits_1_with_a_fail_line(run: Run, tmp_path: Path) -> None:
    _project(tmp_path, failing=FAILING)
    result = run("test", "fixtures/failing.test.yaml")
    assert result.returncode == 1
    fail_lines = [row for row in result.stdout.splitlines() if row.startswith("FAIL")]
    assert len(fail_lines) == 1
    assert "failing.test.yaml" in fail_lines[0]
    assert "two bursts are expected to fire but do not" in fail_lines[0]


def test_one_failing_fixture_among_passing_ones_fails_the_run(run: Run, tmp_path: Path) -> None:
    _project(tmp_path, a_passing=PASSING, b_failing=FAILING)
    result = run("test", "fixtures")
    assert result.returncode == 1
    fail_lines = [row for row in result.stdout.splitlines() if row.startswith("FAIL")]
    assert len(fail_lines) == 1
    assert "b_failing.test.yaml" in fail_lines[0]


def test_fixture_with_broken_rules_fails(run: Run, tmp_path: Path) -> None:
    _project(tmp_path, passing=PASSING)
    (tmp_path / "rules" / "zz-broken.yaml").write_text("- macro: m\n  condition: a ~~ b\n")
    result = run("test", "fixtures")
    assert result.returncode == 1
    assert "FAIL" in result.stdout


LATE = """\
rules: [../rules]
start: "2024-01-01T00:00:00Z"
tests:
  - name: bursts in two containers do not add up
    correlations: [Burst]
    {declared}
    events:
      - {{at: +0s, repeat: 2, every: 30s, rule: Burst event, output_fields: {{container.id: c1}}}}
      - {{at: +1s, rule: Burst event, output_fields: {{container.id: c2}}}}
    expect: []
"""


def test_an_event_arriving_late_fails_the_test_unless_declared(run: Run, tmp_path: Path) -> None:
    # The event at +1s arrives after one at +30s: with lateness 10s it is never correlated, so
    # the negative test would pass whatever the rules say.
    _project(tmp_path, late=LATE.format(declared=""))
    result = run("test", "fixtures")
    assert result.returncode == 1
    assert "1 event(s) arrived late and were not correlated (indices [2]), 0 declared" in (
        result.stdout
    )
    (tmp_path / "fixtures" / "late.test.yaml").write_text(LATE.format(declared="late: 1"))
    result = run("test", "fixtures")
    assert result.returncode == 0, result.stdout
