"""Broken rule files (spec section 2): every error located as PATH:LINE:COL, all at once.

Where each kind points (1-based line and column, as the loader reports them):
- YAML syntax error: where PyYAML detects the problem (its problem mark).
- duplicate YAML key: the second occurrence of the key.
- unknown key: the key itself.
- wrong type, bad duration, bad severity, threshold < 2, unknown type: the value.
- unknown macro, bad operator, invalid regex: the start of the condition's value node (the first
  character of the scalar, or the `>`/`|` of a block scalar), not the offending word; the message
  carries the offset inside the condition text.
- steps < 2: the `steps` value (the first `-` of a block sequence, the `[` of a flow one).
- duplicate name: the name value of the later item.
- a value that safe YAML loading cannot build (`!foo`, `!!python/...`, `!!int abc`): that node.
- an error in an overriding value: in the overriding file, at that value.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from streams.core.loader import load_rules
from streams.errors import RuleLoadError

COUNT = """\
- correlation: c
  type: count
  condition: a = b
  threshold: 2
  within: 1m
"""

SEQUENCE = """\
- correlation: s
  type: sequence
  within: 1m
  steps:
    - name: a
      condition: x = 1
    - name: b
      condition: y = 1
"""


def _count(**lines: str) -> str:
    """The COUNT item with some lines replaced or added (key -> full line text)."""
    text = COUNT
    for key, line in lines.items():
        old = next((row for row in text.splitlines() if row.startswith(f"  {key}:")), None)
        text = text.replace(old + "\n", line + "\n") if old else text + line + "\n"
    return text


def located(*paths: Path) -> list[tuple[str, int, int, str]]:
    with pytest.raises(RuleLoadError) as caught:
        load_rules(paths)
    return [
        (e.location.path, e.location.line, e.location.column, e.message)
        for e in caught.value.errors
    ]


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


# fmt: off
CASES = [
    # YAML syntax: where the parser notices it.
    ("yaml-indentation", "- macro: bad\n   condition: x\n", 2, 13, "YAML syntax error"),
    ("yaml-unclosed-flow", "- list: l\n  items: [a, b\n- macro: m\n  condition: x = y\n",
     3, 8, "YAML syntax error"),
    ("yaml-tab", "- list: l\n\titems: [a]\n", 2, 1, "YAML syntax error"),
    ("yaml-unclosed-quote", '- macro: m\n  condition: "x = y\n', 3, 1, "YAML syntax error"),
    # Duplicate YAML key: the second key.
    ("duplicate-yaml-key", _count(threshold="  threshold: 2\n  threshold: 3"),
     5, 3, "duplicate key 'threshold'"),
    ("duplicate-yaml-key-nested",
     SEQUENCE.replace("    - name: a\n", "    - name: a\n      name: z\n"),
     6, 7, "duplicate key 'name'"),
    # Unknown key: the key.
    ("unknown-key-correlation", _count(bogus="  bogus: 1"), 6, 3, "unknown key 'bogus'"),
    ("unknown-key-list", "- list: l\n  items: [a]\n  append: true\n", 3, 3,
     "unknown key 'append'"),
    ("unknown-key-macro", "- macro: m\n  condition: a = b\n  desc: x\n", 3, 3,
     "unknown key 'desc'"),
    ("unknown-key-step", SEQUENCE.replace("x = 1\n", "x = 1\n      when: z\n"), 7, 7,
     "unknown key 'when'"),
    ("key-of-another-type", _count(steps="  steps: []"), 6, 3, "'steps'"),
    # Wrong type: the value.
    ("wrong-type-within", _count(within="  within: 10"), 5, 11, "within"),
    ("wrong-type-by", _count(by="  by: container.id"), 6, 7, "by must be a list"),
    ("wrong-type-enabled", _count(enabled='  enabled: "yes"'), 6, 12, "enabled"),
    ("wrong-type-tags", _count(tags="  tags: notalist"), 6, 9, "tags"),
    ("wrong-type-threshold", _count(threshold='  threshold: "5"'), 4, 14, "threshold"),
    ("wrong-type-items", "- list: l\n  items: a\n", 2, 10, "items"),
    ("wrong-type-macro-condition", "- macro: m\n  condition: [a]\n", 2, 14, "condition"),
    ("wrong-type-condition", _count(condition="  condition: {a: b}"), 3, 14, "condition"),
    # Unknown macro: the condition value.
    ("unknown-macro", _count(condition="  condition: a = b and nosuch"), 3, 14,
     "unknown macro 'nosuch'"),
    ("unknown-macro-in-macro", "- macro: m\n  condition: a = b or nosuch\n", 2, 14,
     "unknown macro 'nosuch'"),
    ("unknown-macro-in-step", SEQUENCE.replace("y = 1", "y = 1 and nosuch"), 8, 18,
     "unknown macro 'nosuch'"),
    ("unknown-macro-block-scalar",
     _count(condition="  condition: >\n    a = b and\n    nosuch"), 3, 14,
     "unknown macro 'nosuch'"),
    # Bad operator: the condition value.
    ("bad-operator", _count(condition="  condition: proc.name ~~ x"), 3, 14, "operator"),
    ("bad-operator-in-step", SEQUENCE.replace("x = 1", "x ~= 1"), 6, 18, "operator"),
    ("bad-operator-in-macro", "- macro: m\n  condition: proc.name === x\n", 2, 14, ""),
    ("upper-case-keyword", _count(condition="  condition: a = b AND c = d"), 3, 14, "AND"),
    # Bad duration: the value.
    ("within-bad-unit", _count(within="  within: 10x"), 5, 11, "10x"),
    ("within-over-7d", _count(within="  within: 8d"), 5, 11, "7d"),
    ("within-just-over-7d", _count(within="  within: 604800001ms"), 5, 11, "7d"),
    ("within-zero", _count(within="  within: 0s"), 5, 11, "greater than 0"),
    ("within-fraction", _count(within="  within: 1.5s"), 5, 11, "1.5s"),
    ("within-negative", _count(within="  within: -1s"), 5, 11, "-1s"),
    ("suppress-bad", _count(suppress="  suppress: soon"), 6, 13, "suppress"),
    # Invalid regex: the condition value.
    ("invalid-regex", _count(condition='  condition: proc.name regex "([a-"'), 3, 14, "regex"),
    # Bad severity: the value.
    ("bad-severity", _count(severity="  severity: Loud"), 6, 13, "Loud"),
    # threshold < 2: the value.
    ("threshold-1", _count(threshold="  threshold: 1"), 4, 14, "threshold"),
    ("threshold-0", _count(threshold="  threshold: 0"), 4, 14, "threshold"),
    ("threshold-bool", _count(threshold="  threshold: true"), 4, 14, "threshold"),
    # steps < 2: the steps value.
    ("one-step", SEQUENCE.replace("    - name: b\n      condition: y = 1\n", ""), 5, 5, "steps"),
    ("one-step-flow",
     "- correlation: s\n  type: all\n  within: 1m\n  steps: [{name: a, condition: x = 1}]\n",
     4, 10, "steps"),
    # Unknown type: the value.
    ("unknown-type", _count(type="  type: counter"), 2, 9, "counter"),
    ("type-wrong-case", _count(type="  type: Count"), 2, 9, "Count"),
    # Duplicate name: the later item's name.
    ("duplicate-correlation", COUNT + COUNT, 6, 16, "duplicate correlation name 'c'"),
    ("duplicate-macro", "- macro: m\n  condition: a = b\n- macro: m\n  condition: a = c\n",
     3, 10, "duplicate macro name 'm'"),
]
# fmt: on


@pytest.mark.parametrize(
    ("text", "line", "column", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_each_error_kind_is_located_at_path_line_column(
    tmp_path: Path, text: str, line: int, column: int, fragment: str
) -> None:
    path = write(tmp_path, "broken.yaml", text)
    errors = located(path)
    assert [(p, ln, col) for p, ln, col, _ in errors] == [(str(path), line, column)], errors
    assert fragment in errors[0][3]


def test_error_text_reads_path_line_column_message(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", _count(within="  within: 10x"))
    with pytest.raises(RuleLoadError) as caught:
        load_rules([path])
    [error] = caught.value.errors
    assert str(error) == f"{path}:5:11: {error.message}"
    assert str(caught.value) == str(error)


def test_every_error_of_every_file_is_reported_and_nothing_is_loaded(tmp_path: Path) -> None:
    syntax = write(tmp_path, "a-syntax.yaml", "- macro: bad\n   condition: x\n")
    several = write(
        tmp_path,
        "b-several.yaml",
        textwrap.dedent(
            """\
            - correlation: c1
              type: count
              condition: a = b and nosuch
              threshold: 1
              within: 8d
              severity: Loud
              bogus: 1
            - correlation: c2
              type: nope
              within: 10x
            - macro: m
              condition: proc.name ~~ x
            """
        ),
    )
    valid = write(tmp_path, "c-valid.yaml", COUNT.replace("correlation: c", "correlation: ok"))
    duplicate = write(tmp_path, "d-dup.yaml", COUNT.replace("correlation: c", "correlation: c1"))
    errors = located(syntax, several, valid, duplicate)
    where = sorted((Path(p).name, ln, col) for p, ln, col, _ in errors)
    assert where == sorted(
        [
            ("a-syntax.yaml", 2, 13),  # YAML syntax
            ("b-several.yaml", 3, 14),  # unknown macro
            ("b-several.yaml", 4, 14),  # threshold < 2
            ("b-several.yaml", 5, 11),  # within > 7d
            ("b-several.yaml", 6, 13),  # severity
            ("b-several.yaml", 7, 3),  # unknown key
            ("b-several.yaml", 9, 9),  # unknown type
            ("b-several.yaml", 10, 11),  # bad duration
            ("b-several.yaml", 12, 14),  # bad operator in a macro
            ("d-dup.yaml", 1, 16),  # duplicate name
        ]
    )


def test_a_directory_with_one_broken_file_loads_nothing(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    write(rules, "good.yaml", COUNT)
    bad = write(rules, "zz-bad.yaml", "- list: l\n  items: [a\n")
    errors = located(rules)
    assert [(p, ln) for p, ln, _, _ in errors] == [(str(bad), 3)]


def test_key_given_in_an_override_without_an_entry_for_it_is_an_error(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", COUNT)
    user = write(
        tmp_path,
        "user.yaml",
        "- correlation: c\n  severity: Error\n  within: 5m\n  override: {within: replace}\n",
    )
    errors = located(base, user)
    assert [(p, ln, col) for p, ln, col, _ in errors] == [(str(user), 2, 3)]
    assert "severity" in errors[0][3]


@pytest.mark.parametrize(
    ("override", "line", "column", "fragment"),
    [
        (
            "- macro: nosuch\n  condition: a = b\n  override: {condition: append}\n",
            1,
            10,
            "override of unknown macro",
        ),
        (
            "- correlation: c\n  within: 5m\n  override: {within: append}\n",
            3,
            13,
            "must be replace",
        ),
        (
            "- correlation: c\n  within: 5m\n  override: {within: replace, severity: replace}\n",
            3,
            13,
            "'severity' is listed but not given",
        ),
        ("- correlation: c\n  within: 5m\n  override: within\n", 3, 13, "override must be"),
    ],
)
def test_malformed_overrides_are_errors(
    tmp_path: Path, override: str, line: int, column: int, fragment: str
) -> None:
    base = write(tmp_path, "base.yaml", COUNT)
    user = write(tmp_path, "user.yaml", override)
    errors = located(base, user)
    assert [(p, ln, col) for p, ln, col, _ in errors] == [(str(user), line, column)]
    assert fragment in errors[0][3]


@pytest.mark.parametrize(
    ("override", "line", "column"),
    [
        pytest.param(
            "- correlation: c\n  within: 10x\n  override: {within: replace}\n",
            2,
            11,
            id="within-replace",
        ),
        pytest.param(
            "- correlation: c\n  severity: Loud\n  override: {severity: replace}\n",
            2,
            13,
            id="severity-replace",
        ),
        pytest.param(
            "- macro: m\n  condition: and a ~~ b\n  override: {condition: append}\n",
            2,
            14,
            id="condition-append",
        ),
    ],
)
def test_error_in_an_overriding_value_is_reported_in_the_overriding_file(
    tmp_path: Path, override: str, line: int, column: int
) -> None:
    base = write(tmp_path, "base.yaml", "- macro: m\n  condition: a = b\n" + COUNT)
    user = write(tmp_path, "user.yaml", override)
    errors = located(base, user)
    assert (str(user), line, column) in [(p, ln, col) for p, ln, col, _ in errors], errors
    assert all(p == str(user) for p, _, _, _ in errors), errors


def test_duplicate_yaml_key_does_not_hide_other_errors_of_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "r.yaml",
        _count(threshold="  threshold: 2\n  threshold: 3", within="  within: 10x") + "  bogus: 1\n",
    )
    where = {(ln, col) for _, ln, col, _ in located(path)}
    assert where == {(5, 3), (6, 11), (7, 3)}


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        pytest.param("- list: l\n  items: !!python/object:os.system [a]\n", 2, 10, id="python-tag"),
        pytest.param(
            "- macro: !!python/name:os.system m\n  condition: a = b\n", 1, 10, id="python-tag-name"
        ),
        pytest.param("- list: l\n  items: !foo [a]\n", 2, 10, id="unknown-local-tag"),
        pytest.param(_count(threshold="  threshold: !!int abc"), 4, 14, id="bad-int"),
        pytest.param(_count(desc="  desc: !!timestamp notatime"), 6, 9, id="bad-timestamp"),
    ],
)
def test_unconstructible_yaml_tag_is_a_located_error(
    tmp_path: Path, text: str, line: int, column: int
) -> None:
    path = write(tmp_path, "tagged.yaml", text)
    errors = located(path)
    assert [(p, ln, col) for p, ln, col, _ in errors] == [(str(path), line, column)]
