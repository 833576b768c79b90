"""Every rule test fixture of the shipped ruleset (rules/tests/*.test.yaml) passes, and so does
tests/rules/overrides.test.yaml (the shipped rules with docs/examples/my-overrides.yaml).

One pytest case per fixture test, named `FILE::TEST NAME`, so a failure says which one and why.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.cli import ruletest
from streams.core.loader import load_rules

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "rules"
FIXTURE_FILES = ruletest.test_files([str(RULES)])
OVERRIDE_FIXTURES = ruletest.test_files([str(Path(__file__).parent)])


def _outcomes() -> list[ruletest.TestOutcome]:
    paths = [*FIXTURE_FILES, *OVERRIDE_FIXTURES]
    return [outcome for path in paths for outcome in ruletest.run_test_file(path, None)]


OUTCOMES = _outcomes()


def test_fixture_files_are_found() -> None:
    assert len(FIXTURE_FILES) >= 8
    assert (RULES / "tests" / "benign.test.yaml") in FIXTURE_FILES
    assert [p.name for p in OVERRIDE_FIXTURES] == ["overrides.test.yaml"]


@pytest.mark.parametrize(
    "outcome",
    OUTCOMES,
    ids=[f"{Path(o.file).name}::{o.name}" for o in OUTCOMES],
)
def test_rule_fixture(outcome: ruletest.TestOutcome) -> None:
    assert outcome.passed, "\n".join(outcome.failures)


def test_every_correlation_has_a_fixture() -> None:
    ruleset = load_rules([str(RULES)])
    text = "".join(path.read_text(encoding="utf-8") for path in FIXTURE_FILES)
    untested = [c.name for c in ruleset.correlations if c.name not in text]
    assert untested == []


def test_example_overrides_validate_with_the_shipped_rules() -> None:
    ruleset = load_rules([str(RULES), str(REPO / "docs" / "examples" / "my-overrides.yaml")])
    assert {c.name for c in ruleset.correlations} == {
        c.name for c in load_rules([str(RULES)]).correlations
    }
