"""Rule language v2 in the loader (RULES-SPEC section 7): `new_term` keys, references between
correlations, unknown references and cycles, each error as PATH:LINE:COL, all at once."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from streams.core._references import MAX_CHAIN_DEPTH
from streams.core.loader import load_rules
from streams.core.rule_spec import rules_json_schema
from streams.core.rules import CorrelationType
from streams.errors import RuleLoadError

NEW_TERM = """\
- correlation: n
  type: new_term
  by: [k]
  fields: [dst]
  within: 30d
  learn: 0s
  condition: rule = Conn
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _errors(tmp_path: Path, text: str) -> list[tuple[int, int, str]]:
    path = _write(tmp_path, text)
    with pytest.raises(RuleLoadError) as caught:
        load_rules([path])
    out = []
    for error in caught.value.errors:
        assert str(error).startswith(f"{path}:{error.location.line}:{error.location.column}: ")
        out.append((error.location.line, error.location.column, error.message))
    return out


# -- new_term ------------------------------


def test_new_term_loads_with_its_keys(tmp_path: Path) -> None:
    (corr,) = load_rules([_write(tmp_path, NEW_TERM)]).correlations
    assert corr.type is CorrelationType.NEW_TERM
    assert corr.term_fields == ("dst",)
    assert corr.within_ns == 30 * 86_400 * 10**9
    assert corr.learn_ns == 0
    assert [s.name for s in corr.steps] == ["term"]


@pytest.mark.parametrize(
    ("replace", "by", "line", "column", "fragment"),
    [
        ("within: 30d", "within: 31d", 5, 11, "within must be at most 30d"),
        ("within: 30d", "within: 0s", 5, 11, "within must be greater than 0"),
        ("learn: 0s", "learn: 31d", 6, 10, "learn must be at most 30d"),
        ("learn: 0s", "learn: soon", 6, 10, "learn: invalid duration"),
        ("fields: [dst]", "fields: []", 4, 11, "fields must list 1 to 3 field names"),
        ("fields: [dst]", "fields: [a, b, c, d]", 4, 11, "fields must list 1 to 3"),
        ("fields: [dst]", "fields: [a, a]", 4, 11, "lists a field twice"),
        ("fields: [dst]", "fields: dst", 4, 11, "fields must be a list of field names"),
        ("fields: [dst]", "steps: []", 4, 3, "unknown key 'steps' for type new_term"),
        ("learn: 0s", "threshold: 2", 6, 3, "unknown key 'threshold' for type new_term"),
        ("learn: 0s", "field: x", 6, 3, "unknown key 'field' for type new_term"),
        ("learn: 0s", "trigger: {condition: a}", 6, 3, "unknown key 'trigger' for type new_term"),
        ("learn: 0s", "expect: {condition: a}", 6, 3, "unknown key 'expect' for type new_term"),
    ],
)
def test_new_term_errors_are_located(
    tmp_path: Path, replace: str, by: str, line: int, column: int, fragment: str
) -> None:
    errors = _errors(tmp_path, NEW_TERM.replace(replace, by))
    assert any((ln, col) == (line, column) and fragment in msg for ln, col, msg in errors), errors


def test_new_term_needs_fields_and_condition(tmp_path: Path) -> None:
    text = NEW_TERM.replace("  fields: [dst]\n", "").replace("  condition: rule = Conn\n", "")
    messages = [m for _, _, m in _errors(tmp_path, text)]
    assert any("needs 'fields'" in m for m in messages)
    assert any("needs 'condition'" in m for m in messages)


def test_learn_is_optional(tmp_path: Path) -> None:
    (corr,) = load_rules([_write(tmp_path, NEW_TERM.replace("  learn: 0s\n", ""))]).correlations
    assert corr.learn_ns == corr.within_ns


def test_other_types_keep_the_seven_day_limit(tmp_path: Path) -> None:
    text = """\
- correlation: c
  type: count
  condition: a = b
  threshold: 2
  within: 8d
"""
    assert _errors(tmp_path, text) == [(5, 11, "within must be at most 7d")]


# -- references, unknown names, cycles ------------------------------

CHAIN = """\
- list: upstreams
  items: [a, b]
- macro: from_c
  condition: correlation = c
- correlation: a
  type: count
  within: 1m
  threshold: 2
  condition: rule = X
- correlation: b
  type: count
  within: 1m
  threshold: 2
  condition: rule = Y
  enabled: false
- correlation: c
  type: sequence
  within: 1m
  steps:
    - {name: one, condition: correlation in (upstreams)}
    - {name: two, condition: not correlation == a}
- correlation: d
  type: count
  within: 1m
  threshold: 2
  condition: from_c or correlation != a or correlation startswith b or correlation exists
"""


def test_references_follow_equality_in_intersects_macros_lists_and_not(tmp_path: Path) -> None:
    rules = load_rules([_write(tmp_path, CHAIN)])
    refs = {c.name: c.references for c in rules.correlations}
    # b is disabled: referencing it is fine (it emits nothing); `!=`, `startswith`, `exists`
    # create no reference
    assert refs == {"a": (), "c": ("a", "b"), "d": ("c",)}


def test_unknown_reference_is_located_at_the_condition(tmp_path: Path) -> None:
    text = CHAIN.replace("items: [a, b]", "items: [a, b, zed]")
    assert _errors(tmp_path, text) == [
        (20, 30, "correlation 'c' references unknown correlation 'zed' (correlation = zed)")
    ]


def test_unknown_reference_under_intersects_and_not(tmp_path: Path) -> None:
    text = CHAIN.replace("not correlation == a", '"not correlation intersects (a, nope)"')
    errors = _errors(tmp_path, text)
    assert [(ln, col) for ln, col, _ in errors] == [(21, 30)]
    assert "unknown correlation 'nope'" in errors[0][2]


CYCLE = """\
- correlation: a
  type: sequence
  within: 1m
  steps:
    - {name: x, condition: rule = X}
    - {name: y, condition: correlation = b}
    - {name: z, condition: correlation = b}
- correlation: b
  type: count
  within: 1m
  threshold: 2
  condition: correlation = c
- correlation: c
  type: count
  within: 1m
  threshold: 2
  condition: correlation in (a, c2)
- correlation: c2
  type: count
  within: 1m
  threshold: 2
  condition: rule = Y
"""


def test_cycle_is_reported_on_each_correlation_of_it(tmp_path: Path) -> None:
    assert _errors(tmp_path, CYCLE) == [
        (6, 28, "correlation cycle: a -> b -> c -> a"),
        (12, 14, "correlation cycle: b -> c -> a -> b"),
        (17, 14, "correlation cycle: c -> a -> b -> c"),
    ]


def test_self_reference_is_a_cycle(tmp_path: Path) -> None:
    text = CYCLE.replace("correlation in (a, c2)", "correlation = c or rule = Z").replace(
        "correlation = b\n", "rule = B\n"
    )
    assert _errors(tmp_path, text) == [(17, 14, "correlation cycle: c -> c")]


def test_a_disabled_correlation_breaks_a_cycle(tmp_path: Path) -> None:
    text = CYCLE + "  enabled: false\n"  # c2 disabled: not on the cycle anyway
    assert len(_errors(tmp_path, text)) == 3
    text = CYCLE.replace(
        "  condition: correlation = c\n", "  condition: correlation = c\n  enabled: false\n"
    )
    load_rules([_write(tmp_path, text)])


def test_cycle_and_unknown_reference_errors_come_with_the_others(tmp_path: Path) -> None:
    text = CYCLE.replace(
        "within: 1m\n  threshold: 2\n  condition: rule = Y",
        "within: 1x\n  threshold: 2\n  condition: correlation = ghost",
    )
    messages = [m for _, _, m in _errors(tmp_path, text)]
    assert sum("correlation cycle" in m for m in messages) == 3
    assert any("unknown correlation 'ghost'" in m for m in messages)
    assert any("within: invalid duration" in m for m in messages)


# -- JSON Schema ------------------------------


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(rules_json_schema())


def _schema_errors(validator: jsonschema.Draft7Validator, item: dict[str, Any]) -> list[str]:
    return [e.message for e in validator.iter_errors([item])]


def test_schema_accepts_new_term(validator: jsonschema.Draft7Validator) -> None:
    assert _schema_errors(validator, yaml.safe_load(NEW_TERM)[0]) == []
    item = yaml.safe_load(NEW_TERM)[0]
    del item["learn"]
    assert _schema_errors(validator, item) == []


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"fields": []}, "should be non-empty"),
        ({"fields": ["a", "b", "c", "d"]}, "is too long"),
        ({"fields": ["a", "a"]}, "non-unique"),
        ({"learn": "soon"}, "does not match"),
        ({"threshold": 2}, "False schema"),
        ({"steps": []}, "False schema"),
    ],
)
def test_schema_rejects_bad_new_term_keys(
    validator: jsonschema.Draft7Validator, change: dict[str, Any], fragment: str
) -> None:
    item = {**yaml.safe_load(NEW_TERM)[0], **change}
    found = _schema_errors(validator, item)
    assert any(fragment in m for m in found), json.dumps(found)


def _chain(n: int) -> str:
    items = [
        "- correlation: c0\n  type: count\n  within: 1m\n  threshold: 2\n  condition: rule = X\n"
    ]
    items += [
        f"- correlation: c{i}\n  type: count\n  within: 1m\n  threshold: 2\n"
        f"  condition: correlation = c{i - 1}\n"
        for i in range(1, n)
    ]
    return "".join(items)


def test_chains_up_to_the_depth_limit_load(tmp_path: Path) -> None:
    rules = load_rules([_write(tmp_path, _chain(MAX_CHAIN_DEPTH + 1))])
    assert rules.correlations[-1].references == (f"c{MAX_CHAIN_DEPTH - 1}",)


def test_a_chain_deeper_than_the_limit_is_a_located_error(tmp_path: Path) -> None:
    errors = _errors(tmp_path, _chain(MAX_CHAIN_DEPTH + 5))
    line = 5 * (MAX_CHAIN_DEPTH + 1) + 5
    assert errors == [
        (
            line,
            14,
            f"correlation 'c{MAX_CHAIN_DEPTH + 1}' is more than {MAX_CHAIN_DEPTH} references deep "
            "(correlations of correlations of ...)",
        )
    ]


def test_many_correlations_referencing_each_other_load_in_linear_time(tmp_path: Path) -> None:
    fan = [_chain(2)] + [
        f"- correlation: d{i}\n  type: count\n  within: 1m\n  threshold: 2\n"
        f"  condition: correlation in (c0, c1)\n"
        for i in range(3000)
    ]
    rules = load_rules([_write(tmp_path, "".join(fan))])
    assert len(rules.correlations) == 3002
