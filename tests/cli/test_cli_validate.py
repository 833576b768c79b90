"""`falco-correlator validate [PATH ...]` (spec section 6)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from _cli_support import CLI_RULES, SHIPPED_RULES, Run

ERROR_LINE = re.compile(r"^(?P<path>[^:\n]+):(?P<line>\d+):(?P<col>\d+): \S")

BROKEN = """\
- correlation: c
  type: count
  condition: a = b
  threshold: 2
  within: 10x
"""


def _error_lines(text: str) -> list[tuple[str, int, int]]:
    found = []
    for row in text.splitlines():
        match = ERROR_LINE.match(row)
        if match:
            found.append((match["path"], int(match["line"]), int(match["col"])))
    return found


def test_validate_defaults_to_rules_directory_and_exits_0_when_valid(
    run: Run, tmp_path: Path
) -> None:
    shutil.copytree(SHIPPED_RULES, tmp_path / "rules")
    result = run("validate")
    assert result.returncode == 0, result.stderr
    assert _error_lines(result.stdout + result.stderr) == []


def test_validate_default_rules_directory_with_an_error_exits_1(run: Run, tmp_path: Path) -> None:
    shutil.copytree(SHIPPED_RULES, tmp_path / "rules")
    (tmp_path / "rules" / "zz-mine.yaml").write_text(BROKEN)
    result = run("validate")
    assert result.returncode == 1
    assert _error_lines(result.stdout + result.stderr) == [("rules/zz-mine.yaml", 5, 11)]


def test_validate_without_rules_directory_fails(run: Run) -> None:
    result = run("validate")
    assert result.returncode == 1


def test_validate_given_paths_exits_0(run: Run, tmp_path: Path) -> None:
    result = run(
        "validate", CLI_RULES, SHIPPED_RULES / "bursts.yaml", SHIPPED_RULES / "00-lists-macros.yaml"
    )
    assert result.returncode == 0, result.stderr


def test_validate_reports_every_error_of_every_file_as_path_line_col(
    run: Run, tmp_path: Path
) -> None:
    (tmp_path / "a.yaml").write_text(BROKEN)
    (tmp_path / "b.yaml").write_text("- macro: m\n   condition: x\n")
    (tmp_path / "c.yaml").write_text(
        "- macro: m2\n  condition: a = b and nosuch\n- list: l\n  items: [a]\n  bogus: 1\n"
    )
    result = run("validate", "a.yaml", "b.yaml", "c.yaml")
    assert result.returncode == 1
    assert sorted(_error_lines(result.stdout + result.stderr)) == [
        ("a.yaml", 5, 11),
        ("b.yaml", 2, 13),
        ("c.yaml", 2, 14),
        ("c.yaml", 5, 3),
    ]


def test_validate_writes_errors_to_stderr(run: Run, tmp_path: Path) -> None:
    # The spec does not name the stream; this pins the current choice (stderr, stdout empty).
    (tmp_path / "a.yaml").write_text(BROKEN)
    result = run("validate", "a.yaml")
    assert result.returncode == 1
    assert _error_lines(result.stderr) == [("a.yaml", 5, 11)]
    assert result.stdout == ""


def test_validate_skips_rule_test_fixtures_in_a_directory(run: Run, tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(CLI_RULES, rules)
    (rules / "tests").mkdir()
    (rules / "tests" / "x.test.yaml").write_text("tests:\n  - name: not a rule\n")
    result = run("validate", "rules")
    assert result.returncode == 0, result.stderr


def test_validate_reports_an_unknown_yaml_tag_as_a_located_error(run: Run, tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("- list: l\n  items: !foo [a]\n")
    result = run("validate", "a.yaml")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert _error_lines(result.stdout + result.stderr) == [("a.yaml", 2, 10)]
