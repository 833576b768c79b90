"""Hostile rule files (issue 10): every one ends in a located RuleLoadError or a ruleset, quickly.

Deep YAML, long macro and list chains, macros that double, huge conditions, YAML 1.1 surprises,
templates that would run at load time. Times are bounded generously (the machine is shared);
before these limits the same files took minutes or raised RecursionError.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.core import _yaml_tree, loader
from streams.core.conditions import (
    MAX_CONDITION_ITEMS,
    MAX_CONDITION_TERMS,
    MAX_MACRO_DEPTH,
    ExpansionBudget,
)
from streams.core.events import event_from_dict
from streams.core.loader import load_rules
from streams.core.rules import Ruleset
from streams.errors import RuleLoadError


@pytest.fixture(params=["libyaml", "python"])
def yaml_parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both YAML parsers: libyaml's (the default when PyYAML has it) and PyYAML's own."""
    if request.param == "python":
        monkeypatch.setattr(_yaml_tree, "_Loader", _yaml_tree._PythonLoader)
    elif _yaml_tree._Loader is _yaml_tree._PythonLoader:
        pytest.skip("PyYAML without libyaml")
    return str(request.param)


def _correlation(condition: str, extra: str = "") -> str:
    return (
        "- correlation: c\n  type: count\n  within: 1m\n  threshold: 2\n"
        f"  condition: {condition}\n{extra}"
    )


def _load(tmp_path: Path, text: str) -> Ruleset:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return load_rules([path])


def _errors(tmp_path: Path, text: str, *, seconds: float = 5.0) -> list[tuple[int, int, str]]:
    started = time.monotonic()
    with pytest.raises(RuleLoadError) as caught:
        _load(tmp_path, text)
    assert time.monotonic() - started < seconds
    return [(e.location.line, e.location.column, e.message) for e in caught.value.errors]


@pytest.fixture
def timed() -> Iterator[None]:
    started = time.monotonic()
    yield
    assert time.monotonic() - started < 5.0


# -- YAML ----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("yaml_parser")
def test_tags_nested_600_deep_are_a_located_error(tmp_path: Path) -> None:
    text = _correlation("rule = x", f"  tags: {'[' * 600}x{']' * 600}\n")
    [(line, column, message)] = _errors(tmp_path, text)
    assert (line, column) == (6, 71)  # the 65th '['
    assert message == "nesting deeper than 64 levels"


@pytest.mark.usefixtures("yaml_parser")
def test_block_nesting_past_the_limit_is_a_located_error(tmp_path: Path) -> None:
    lines = [f"{'  ' * depth}- " for depth in range(80)]
    [(line, _, message)] = _errors(tmp_path, "\n".join(lines) + "x\n")
    assert message == "nesting deeper than 64 levels"
    assert line == 65  # the 65th level


@pytest.mark.usefixtures("yaml_parser")
def test_more_nodes_than_the_limit_is_a_located_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_yaml_tree, "MAX_YAML_NODES", 100)
    items = "".join(f"  - i{n}\n" for n in range(200))
    [(line, _, message)] = _errors(tmp_path, "- list: l\n  items:\n" + items)
    assert message == "more than 100 YAML nodes in one file"
    assert line > 90


def test_file_over_the_size_limit_is_an_error_without_reading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("streams.core.loader.MAX_YAML_BYTES", 1000)
    [(line, column, message)] = _errors(tmp_path, "# " + "x" * 2000 + "\n")
    assert (line, column, message) == (1, 1, "file larger than 1000 bytes")


@pytest.mark.usefixtures("yaml_parser")
def test_alias_bomb_is_loaded_in_linear_time_and_reported_at_its_use(tmp_path: Path) -> None:
    lines = ["- list: l0\n  items: &a0 [x, x, x, x, x, x, x, x, x, x]\n"]
    lines += [f"- list: l{i}\n  items: &a{i} [*a{i - 1}, *a{i - 1}]\n" for i in range(1, 40)]
    errors = _errors(tmp_path, "".join(lines) + _correlation("rule = x", "  tags: *a39\n"))
    messages = {message for _, _, message in errors}
    assert "tags must be a list of strings" in messages


@pytest.mark.usefixtures("yaml_parser")
def test_anchors_nesting_each_other_600_deep_give_a_located_error(tmp_path: Path) -> None:
    lines = ["- list: l0\n  items: &a0 [x]\n"]
    lines += [f"- list: l{i}\n  items: &a{i} [*a{i - 1}]\n" for i in range(1, 600)]
    errors = _errors(tmp_path, "".join(lines))
    assert errors[0] == (4, 10, "list 'l1': items must be a list of strings")


@pytest.mark.usefixtures("yaml_parser")
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1:30", "'1:30' is a base-60 number (90) in YAML 1.1"),
        ("0777", "'0777' is an octal number (511) in YAML 1.1"),
        ("1_000", "'1_000' is a number with '_' separators (1000) in YAML 1.1"),
        ("0b11", "'0b11' is a binary number (3) in YAML 1.1"),
        ("1:30.5", "'1:30.5' is a base-60 number in YAML 1.1"),
        ("2024-01-01", "'2024-01-01' is a YAML 1.1 date/time: quote it"),
    ],
)  # fmt: skip
def test_yaml_1_1_numbers_and_dates_are_rejected_where_they_are(
    tmp_path: Path, value: str, message: str
) -> None:
    text = _correlation("rule = x").replace("threshold: 2", f"threshold: {value}")
    assert _errors(tmp_path, text) == [
        (4, 14, message if message.endswith("quote it") else message + ": write the decimal "
         "number, or quote it")
    ]  # fmt: skip


@pytest.mark.usefixtures("yaml_parser")
@pytest.mark.parametrize(("word", "meaning"), [("yes", "true"), ("off", "false"), ("On", "true")])
def test_yaml_1_1_booleans_are_rejected(tmp_path: Path, word: str, meaning: str) -> None:
    text = _correlation("rule = x", f"  enabled: {word}\n")
    assert _errors(tmp_path, text) == [
        (6, 12, f"'{word}' is a YAML 1.1 boolean ({meaning}): write {meaning}, or quote it "
         "for text")
    ]  # fmt: skip


def test_quoted_yaml_1_1_lookalikes_are_text(tmp_path: Path) -> None:
    text = "- list: l\n  items: ['1:30', \"yes\", '2024-01-01', '0777']\n" + _correlation(
        "proc.name in (l)"
    )
    ruleset = _load(tmp_path, text)
    event = event_from_dict(
        {"rule": "r", "time": "2024-01-01T00:00:00Z", "output_fields": {"proc.name": "1:30"}}, 0
    )
    assert ruleset.correlations[0].steps[0].condition.predicate(event)


def test_decimal_hex_and_yaml_1_2_booleans_are_read_as_before(tmp_path: Path) -> None:
    text = _correlation("rule = x", "  enabled: True\n").replace("threshold: 2", "threshold: 0x3")
    [correlation] = _load(tmp_path, text).correlations
    assert correlation.threshold == 3


@pytest.mark.usefixtures("yaml_parser")
def test_merge_keys_are_rejected(tmp_path: Path) -> None:
    text = "- &base {correlation: c, type: count, within: 1m}\n- <<: *base\n  threshold: 2\n"
    errors = _errors(tmp_path, text)
    assert (2, 3, "merge keys ('<<') are not supported") in errors


@pytest.mark.usefixtures("yaml_parser")
def test_duplicate_keys_are_still_located(tmp_path: Path) -> None:
    text = _correlation("rule = x") + "  threshold: 3\n"
    assert _errors(tmp_path, text) == [(6, 3, "duplicate key 'threshold' (first at line 4)")]


# Found by fuzzing (tests/test_fuzz_inputs.py): each once escaped as an exception or an empty
# RuleLoadError.


def test_a_null_name_is_reported(tmp_path: Path) -> None:
    assert _errors(tmp_path, "- list: null\n") == [(1, 9, "list name must be a non-empty string")]


@pytest.mark.usefixtures("yaml_parser")
@pytest.mark.parametrize("key", ["{a: 1}", "[a, b]"])
def test_a_mapping_or_list_used_as_a_key_is_a_located_error(tmp_path: Path, key: str) -> None:
    text = _correlation("rule = x", f"  tags: {{? {key} : 1}}\n")
    assert _errors(tmp_path, text) == [
        (6, 12, "a mapping key must be a plain value, not a list or a mapping")
    ]


def test_control_characters_in_names_cannot_forge_error_lines(tmp_path: Path) -> None:
    text = '- list: "a\\nrules.yaml:9:9: all fine"\n- list: "a\\nrules.yaml:9:9: all fine"\n'
    errors = _errors(tmp_path, text)
    assert [line for line, _, _ in errors] == [1, 2]
    assert all("\n" not in message for _, _, message in errors)
    assert errors[1][2].startswith("duplicate list name 'a\\nrules.yaml:9:9: all fine'")


# -- lists and macros ----------------------------------------------------------------------------


def _macro_chain(n: int) -> str:
    items = ["- macro: m0\n  condition: rule = x\n"]
    items += [f"- macro: m{i}\n  condition: m{i - 1}\n" for i in range(1, n)]
    return "".join(items)


def test_chain_of_600_macros_is_a_located_error_naming_the_path(tmp_path: Path) -> None:
    [(line, column, message)] = _errors(tmp_path, _macro_chain(600) + _correlation("m599"))
    assert (line, column) == (1205, 14)
    assert message.startswith("condition: in macro 'm599' -> 'm598' -> ... (61 more) -> ")
    assert f"macros nested more than {MAX_MACRO_DEPTH} deep" in message


@pytest.mark.usefixtures("timed")
def test_macro_chain_within_the_depth_limit_loads(tmp_path: Path) -> None:
    ruleset = _load(
        tmp_path, _macro_chain(MAX_MACRO_DEPTH) + _correlation(f"m{MAX_MACRO_DEPTH - 1}")
    )
    assert ruleset.correlations[0].steps[0].condition.rules == frozenset({"x"})


@pytest.mark.usefixtures("timed")
def test_chain_of_3000_lists_loads_and_expands_in_order(tmp_path: Path) -> None:
    # Defined last to first, so expanding the first walks the whole chain.
    items = [f"- list: l{i}\n  items: [l{i - 1}, x{i}]\n" for i in range(2999, 0, -1)]
    text = "".join(items) + "- list: l0\n  items: [a]\n" + _correlation("proc.name in (l2999)")
    ruleset = _load(tmp_path, text)
    predicate = ruleset.correlations[0].steps[0].condition.predicate
    for name, expected in (("a", True), ("x1", True), ("x2999", True), ("x3000", False)):
        raw = {"rule": "r", "time": "2024-01-01T00:00:00Z", "output_fields": {"proc.name": name}}
        assert predicate(event_from_dict(raw, 0)) is expected


def test_list_cycle_is_reported_at_the_list_that_starts_it(tmp_path: Path) -> None:
    text = "- list: ok\n  items: [a]\n- list: a\n  items: [b]\n- list: b\n  items: [a]\n"
    assert _errors(tmp_path, text) == [(4, 10, "list cycle: a -> b -> a")]


def _doubling(levels: int) -> str:
    items = ["- macro: m0\n  condition: proc.name = x\n"]
    items += [f"- macro: m{i}\n  condition: m{i - 1} or m{i - 1}\n" for i in range(1, levels)]
    return "".join(items)


@pytest.mark.usefixtures("timed")
def test_unused_doubling_macros_load_in_linear_time(tmp_path: Path) -> None:
    assert len(_load(tmp_path, _doubling(40) + _correlation("rule = x")).correlations) == 1


def test_used_doubling_macros_stop_at_the_term_limit(tmp_path: Path) -> None:
    [(line, column, message)] = _errors(tmp_path, _doubling(40) + _correlation("m39"))
    assert (line, column) == (85, 14)
    assert f"more than {MAX_CONDITION_TERMS} comparisons once its macros are expanded" in message


def test_macro_cycles_are_found_in_linear_time_each_at_its_macro(tmp_path: Path) -> None:
    # 2,000 macros that all use each other (one strongly connected component).
    n = 2000
    items = [f"- macro: m{i}\n  condition: m{(i + 1) % n} or m{(i + 7) % n}\n" for i in range(n)]
    errors = _errors(tmp_path, "".join(items) + _correlation("rule = x"))
    assert len(errors) == n
    assert errors[0][2].startswith("macro cycle: m0 -> m1 -> ")
    assert errors[-1][2] == "macro cycle: 'm1999' is one of 2000 macros that use each other"


def test_small_macro_cycles_keep_their_message(tmp_path: Path) -> None:
    text = "- macro: a\n  condition: b\n- macro: b\n  condition: x = 1 and a\n"
    assert _errors(tmp_path, text) == [
        (2, 14, "macro cycle: a -> b -> a"),
        (4, 14, "macro cycle: b -> a -> b"),
    ]


# -- condition size ------------------------------------------------------------------------------


def test_condition_over_the_text_limit_is_a_located_error(tmp_path: Path) -> None:
    terms = " or ".join(f'rule = "r{i}"' for i in range(100_000))
    [(line, column, message)] = _errors(tmp_path, _correlation(f"'{terms}'"))
    assert (line, column) == (5, 14)
    assert message.startswith("condition: condition longer than 65536 characters")


@pytest.mark.usefixtures("timed")
def test_thousands_of_or_terms_compile_in_linear_time_with_a_full_rule_index(
    tmp_path: Path,
) -> None:
    terms = " or ".join(f"rule = r{i}" for i in range(4000))  # 63 KiB
    [correlation] = _load(tmp_path, _correlation(f"'{terms}'")).correlations
    assert len(correlation.steps[0].condition.rules or ()) == 4000


def test_list_operands_over_the_item_limit_are_a_located_error(tmp_path: Path) -> None:
    text = "- list: big\n  items: [" + ", ".join(f"i{n}" for n in range(60_000)) + "]\n"
    [(line, column, message)] = _errors(tmp_path, text + _correlation("proc.name in (big, big)"))
    assert (line, column) == (7, 14)
    assert f"lists expand to more than {MAX_CONDITION_ITEMS} items" in message


def test_ruleset_wide_budgets_stop_many_conditions_each_within_its_own_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loader, "ExpansionBudget", lambda: ExpansionBudget(1000, 5000))
    text = "- macro: big\n  condition: '" + " or ".join(f"a = {n}" for n in range(300)) + "'\n"
    text += "- list: l\n  items: [" + ", ".join(f"i{n}" for n in range(2000)) + "]\n"
    for n in range(5):
        text += _correlation("big").replace("correlation: c", f"correlation: big{n}")
        text += _correlation("x in (l)").replace("correlation: c", f"correlation: list{n}")
    errors = _errors(tmp_path, text)
    # big0..big2 fit (900 comparisons), big3 and big4 not; list0 fits (2,000 items walked to
    # expand it, 2,000 used), list1..list4 not.
    assert len(errors) == 6
    assert {message for _, _, message in errors} == {
        "condition: the rules expand to more than 5000 list items in all (ruleset limit; lists "
        "are expanded where they are used) (at offset 6: 'l)')",
        "condition: the rules expand to more than 1000 comparisons in all (ruleset limit; macros "
        "are expanded where they are used)",
    }


# -- templates -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("timed")
@pytest.mark.parametrize(
    "output",
    [
        "{{ 'x' * 2000000000 }}",
        "{{ 9**(9**9) }}",
        "{{ 'x'|center(2000000000) }}",
        "{{ ('x' * 100)|replace('', 'y' * 1000000) }}",
    ],
)
def test_templates_are_not_evaluated_at_load_time(tmp_path: Path, output: str) -> None:
    [correlation] = _load(
        tmp_path, _correlation("rule = x", f'  output: "{output}"\n')
    ).correlations
    assert correlation.output_source == output


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("{{ " + "(" * 300 + "1" + ")" * 300 + " }}",
         "output: template error: template nested too deeply (line 1)"),
        ("x" * 70_000,
         "output: template error: template longer than 65536 characters (line 1)"),
    ],
)  # fmt: skip
def test_template_too_big_to_compile_is_a_located_rule_error(
    tmp_path: Path, output: str, message: str
) -> None:
    assert _errors(tmp_path, _correlation("rule = x", f'  output: "{output}"\n')) == [
        (6, 11, message)
    ]
