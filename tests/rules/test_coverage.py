"""docs/coverage.md and docs/catalog.md agree with the shipped rules."""

from __future__ import annotations

import re
from pathlib import Path

from rule_mentions import rule_mentions

from streams.core.loader import load_rules

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "rules"
ROW = re.compile(
    r"^\| `(?P<name>[^`]+)` \| (?P<where>[^|]*) \| (?P<used>[^|]*) \| (?P<note>[^|]*) \|$"
)


def _rows() -> dict[str, tuple[set[str], str]]:
    """Rule name -> (shipped correlations, note), from the four-column rule tables."""
    rows: dict[str, tuple[set[str], str]] = {}
    text = (REPO / "docs" / "coverage.md").read_text(encoding="utf-8")
    for line in text.splitlines():
        match = ROW.match(line)
        if match is None:
            continue
        used = match["used"].strip()
        names = set() if used in ("—", "") else {n.strip() for n in used.split(";")}
        assert match["name"] not in rows, f"{match['name']} is listed twice"
        rows[match["name"]] = (names, match["note"].strip())
    return rows


def test_every_rule_name_the_correlations_use_is_listed() -> None:
    rows = _rows()
    missing = sorted(set(rule_mentions(RULES)) - set(rows))
    assert missing == []


def test_the_used_by_column_is_what_the_rules_say() -> None:
    mentions = rule_mentions(RULES)
    wrong = {
        name: (sorted(used), sorted(mentions.get(name, set())))
        for name, (used, _) in _rows().items()
        if used != mentions.get(name, set())
    }
    assert wrong == {}


def test_a_rule_no_correlation_uses_says_why() -> None:
    unexplained = [name for name, (used, note) in _rows().items() if not used and not note]
    assert unexplained == []


def test_every_correlation_is_in_the_catalog() -> None:
    catalog = (REPO / "docs" / "catalog.md").read_text(encoding="utf-8")
    summary, _, details = catalog.partition("## Correlations")
    names = [c.name for c in load_rules([RULES]).correlations]
    assert [n for n in names if f"| {n} |" not in summary or n not in details] == []
