"""Loading rule files (spec section 2): global lists and macros, overrides, file order."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from streams.core.events import event_from_dict
from streams.core.loader import load_rules, rule_files
from streams.core.rules import Correlation, Ruleset
from streams.errors import RuleLoadError

MINUTE = 60_000_000_000

BASE_CORRELATION = """
- correlation: Reads
  type: count
  condition: proc.name in (readers)
  threshold: 3
  within: 1m
  severity: Notice
  suppress: 5m
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load(*paths: Path) -> Ruleset:
    ruleset: Ruleset = load_rules(paths)
    return ruleset


def only(ruleset: Ruleset, name: str) -> Correlation:
    [found] = [c for c in ruleset.correlations if c.name == name]
    return found


def matches(correlation: Correlation, step: int = 0, **fields: Any) -> bool:
    event = event_from_dict(
        {"rule": fields.pop("rule", "r"), "time": "2024-01-01T00:00:00Z", "output_fields": fields},
        0,
    )
    return correlation.steps[step].condition.predicate(event)


def error_messages(*paths: Path) -> list[str]:
    with pytest.raises(RuleLoadError) as caught:
        load_rules(paths)
    return [str(error) for error in caught.value.errors]


# -- lists and macros ----------------------------------------------------------------------


def test_lists_and_macros_are_global_and_usable_before_definition(tmp_path: Path) -> None:
    uses = write(
        tmp_path,
        "a.yaml",
        """
        - correlation: Shells
          type: count
          condition: interactive and proc.name in (shells)
          threshold: 2
          within: 1m
        - macro: interactive
          condition: proc.tty != 0 and in_container
        """,
    )
    defines = write(
        tmp_path,
        "b.yaml",
        """
        - macro: in_container
          condition: container.id exists and container.id != host
        - list: shells
          items: [bash, sh]
        """,
    )
    shells = only(load(uses, defines), "Shells")
    assert matches(shells, **{"proc.name": "sh", "proc.tty": 1, "container.id": "c1"})
    assert not matches(shells, **{"proc.name": "sh", "proc.tty": 1, "container.id": "host"})
    assert not matches(shells, **{"proc.name": "sh", "proc.tty": 0, "container.id": "c1"})
    assert not matches(shells, **{"proc.name": "vi", "proc.tty": 1, "container.id": "c1"})


def test_nested_list_names_expand_recursively_in_any_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "rules.yaml",
        "- list: readers\n  items: [cat, more_readers]\n"
        "- list: more_readers\n  items: [less, pagers]\n"
        "- list: pagers\n  items: [more, most]\n" + BASE_CORRELATION,
    )
    reads = only(load(path), "Reads")
    for name in ("cat", "less", "more", "most"):
        assert matches(reads, **{"proc.name": name}), name
    assert not matches(reads, **{"proc.name": "pagers"})
    assert not matches(reads, **{"proc.name": "vi"})


def test_same_name_for_a_list_and_a_macro_is_allowed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "rules.yaml",
        """
        - list: readers
          items: [cat]
        - macro: readers
          condition: proc.name = tac
        - correlation: Both
          type: count
          condition: readers or proc.name in (readers)
          threshold: 2
          within: 1m
        """,
    )
    both = only(load(path), "Both")
    assert matches(both, **{"proc.name": "cat"})
    assert matches(both, **{"proc.name": "tac"})


# -- overrides -----------------------------------------------------------------------------


def test_list_items_append_from_a_second_file(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", "- list: readers\n  items: [cat]\n" + BASE_CORRELATION)
    user = write(
        tmp_path,
        "user.yaml",
        """
        - list: readers
          items: [tac, extra]
          override: {items: append}
        - list: extra
          items: [nl]
        """,
    )
    reads = only(load(base, user), "Reads")
    for name in ("cat", "tac", "nl"):
        assert matches(reads, **{"proc.name": name}), name


def test_list_items_replace_drops_the_old_items(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", "- list: readers\n  items: [cat]\n" + BASE_CORRELATION)
    user = write(
        tmp_path, "user.yaml", "- list: readers\n  items: [tac]\n  override: {items: replace}\n"
    )
    reads = only(load(base, user), "Reads")
    assert matches(reads, **{"proc.name": "tac"})
    assert not matches(reads, **{"proc.name": "cat"})


def test_macro_condition_append_adds_text_after_a_space(tmp_path: Path) -> None:
    base = write(
        tmp_path,
        "base.yaml",
        """
        - list: readers
          items: [cat]
        - macro: trusted
          condition: proc.name = backup
        - correlation: Reads
          type: count
          condition: proc.name in (readers) and not trusted
          threshold: 2
          within: 1m
        """,
    )
    user = write(
        tmp_path,
        "user.yaml",
        """
        - macro: trusted
          condition: or proc.pname = cron
          override: {condition: append}
        """,
    )
    reads = only(load(base, user), "Reads")
    assert matches(reads, **{"proc.name": "cat", "proc.pname": "bash"})
    assert not matches(reads, **{"proc.name": "cat", "proc.pname": "cron"})


def test_macro_condition_append_is_textual_like_falco(tmp_path: Path) -> None:
    # "a = 1 or b = 1" + "and c = 1" reads "a = 1 or (b = 1 and c = 1)": no parentheses added.
    base = write(
        tmp_path,
        "base.yaml",
        """
        - macro: m
          condition: a = 1 or b = 1
        - correlation: M
          type: count
          condition: m
          threshold: 2
          within: 1m
        """,
    )
    user = write(
        tmp_path,
        "user.yaml",
        "- macro: m\n  condition: and c = 1\n  override: {condition: append}\n",
    )
    m = only(load(base, user), "M")
    assert matches(m, a=1, c=0)
    assert matches(m, b=1, c=1)
    assert not matches(m, b=1, c=0)


def test_macro_condition_replace(tmp_path: Path) -> None:
    base = write(
        tmp_path,
        "base.yaml",
        """
        - macro: m
          condition: a = 1
        - correlation: M
          type: count
          condition: m
          threshold: 2
          within: 1m
        """,
    )
    user = write(
        tmp_path, "user.yaml", "- macro: m\n  condition: b = 1\n  override: {condition: replace}\n"
    )
    m = only(load(base, user), "M")
    assert matches(m, b=1)
    assert not matches(m, a=1)


def test_correlation_keys_replace_from_a_second_file(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", "- list: readers\n  items: [cat]\n" + BASE_CORRELATION)
    user = write(
        tmp_path,
        "user.yaml",
        """
        - correlation: Reads
          within: 10m
          suppress: 1h
          severity: critical
          override: {within: replace, suppress: replace, severity: replace}
        """,
    )
    before = only(load(base), "Reads")
    after = only(load(base, user), "Reads")
    assert (before.within_ns, before.suppress_ns, before.severity) == (MINUTE, 5 * MINUTE, "Notice")
    assert (after.within_ns, after.suppress_ns, after.severity) == (
        10 * MINUTE,
        60 * MINUTE,
        "Critical",
    )
    assert after.threshold == 3  # keys not overridden are kept


def test_correlation_enabled_replace_disables_it(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", "- list: readers\n  items: [cat]\n" + BASE_CORRELATION)
    user = write(
        tmp_path,
        "user.yaml",
        "- correlation: Reads\n  enabled: false\n  override: {enabled: replace}\n",
    )
    ruleset = load(base, user)
    assert [c.name for c in ruleset.correlations] == []
    assert ruleset.disabled == ("Reads",)


def test_correlation_enabled_replace_can_enable_a_disabled_one(tmp_path: Path) -> None:
    base = write(
        tmp_path,
        "base.yaml",
        "- list: readers\n  items: [cat]\n" + BASE_CORRELATION + "  enabled: false\n",
    )
    user = write(
        tmp_path,
        "user.yaml",
        "- correlation: Reads\n  enabled: true\n  override: {enabled: replace}\n",
    )
    assert load(base).correlations == ()
    assert [c.name for c in load(base, user).correlations] == ["Reads"]


@pytest.mark.parametrize(
    "item",
    [
        "- list: readers\n  items: [tac]\n",
        "- macro: m\n  condition: a = 2\n",
        "- correlation: Reads\n  type: count\n  condition: a = 1\n  threshold: 2\n  within: 1m\n",
    ],
)
def test_duplicate_name_of_the_same_kind_without_override_is_an_error(
    tmp_path: Path, item: str
) -> None:
    base = write(
        tmp_path,
        "base.yaml",
        "- list: readers\n  items: [cat]\n- macro: m\n  condition: a = 1\n" + BASE_CORRELATION,
    )
    user = write(tmp_path, "user.yaml", item)
    messages = error_messages(base, user)
    assert len(messages) == 1
    assert messages[0].startswith(f"{user}:1:")
    assert "duplicate" in messages[0]


def test_duplicate_name_in_one_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "- list: l\n  items: [a]\n- list: l\n  items: [b]\n")
    assert error_messages(path) == [
        f"{path}:3:9: duplicate list name 'l' (first defined at {path}:1:3); "
        "use 'override' to change it"
    ]


# -- files and directories -----------------------------------------------------------------


def test_directory_files_load_in_lexical_path_order(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    write(rules, "10-base.yaml", "- list: readers\n  items: [cat]\n" + BASE_CORRELATION)
    write(
        rules,
        "20-user.yaml",
        "- list: readers\n  items: [tac]\n  override: {items: append}\n",
    )
    write(
        rules,
        "3-late.yaml",  # "3-" sorts after "20-": the override sees the append already applied
        "- correlation: Reads\n  severity: Error\n  override: {severity: replace}\n",
    )
    ruleset = load(rules)
    reads = only(ruleset, "Reads")
    assert matches(reads, **{"proc.name": "tac"})
    assert reads.severity == "Error"
    assert [Path(f).name for f in ruleset.files] == ["10-base.yaml", "20-user.yaml", "3-late.yaml"]


def test_override_in_a_file_that_sorts_first_finds_nothing_to_override(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    write(rules, "b-base.yaml", "- list: readers\n  items: [cat]\n" + BASE_CORRELATION)
    user = write(
        rules, "a-user.yaml", "- list: readers\n  items: [tac]\n  override: {items: append}\n"
    )
    messages = error_messages(rules)
    assert len(messages) == 1
    assert messages[0].startswith(f"{user}:1:")
    assert "override of unknown list 'readers'" in messages[0]


def test_directory_walk_skips_test_fixtures_and_other_files(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    write(rules, "main.yaml", "- list: readers\n  items: [cat]\n" + BASE_CORRELATION)
    write(rules, "extra.yml", "- list: other\n  items: [x]\n")
    write(rules, "sub/nested.yaml", "- macro: nested\n  condition: a = 1\n")
    write(rules, "tests/main.test.yaml", "tests: [this is: not a rules file\n")
    write(rules, "other.test.yml", "tests: []\n")
    write(rules, "README.md", "# not rules\n")
    write(rules, "notes.txt", "- list: [broken\n")
    ruleset = load(rules)
    assert [Path(f).relative_to(rules).as_posix() for f in ruleset.files] == [
        "extra.yml",
        "main.yaml",
        "sub/nested.yaml",
    ]


def test_rule_files_keeps_argument_order_and_sorts_inside_directories(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    write(rules, "b.yaml", "[]\n")
    write(rules, "a.yaml", "[]\n")
    single = write(tmp_path, "z-single.yaml", "[]\n")
    assert [p.name for p in rule_files([single, rules])] == ["z-single.yaml", "a.yaml", "b.yaml"]


def test_empty_and_comment_only_files_load_nothing(tmp_path: Path) -> None:
    empty = write(tmp_path, "empty.yaml", "")
    comment = write(tmp_path, "comment.yaml", "# nothing here\n")
    ruleset = load(empty, comment)
    assert ruleset.correlations == ()


def test_shipped_rules_load(tmp_path: Path) -> None:
    shipped = Path(__file__).resolve().parents[2] / "rules"
    ruleset = load(shipped)
    assert {c.name for c in ruleset.correlations} >= {
        "Shell then outbound connection",
        "Repeated sensitive file reads",
        "Falco sensor went silent",
    }
    assert not any(f.endswith(".test.yaml") for f in ruleset.files)


def test_a_configmap_volume_loads_each_rule_file_once(tmp_path: Path) -> None:
    # The layout the kubelet writes for a ConfigMap volume: visible symlinks into `..data`,
    # itself a symlink to a timestamped directory.
    rules = tmp_path / "rules"
    stamped = rules / "..2026_12_01_10_00_00.123"
    stamped.mkdir(parents=True)
    (stamped / "overrides.yaml").write_text("- list: l\n  items: [a]\n", encoding="utf-8")
    (stamped / ".hidden.yaml").write_text("- list: l\n  items: [b]\n", encoding="utf-8")
    (rules / "..data").symlink_to(stamped.name)
    (rules / "overrides.yaml").symlink_to("..data/overrides.yaml")
    assert rule_files([rules]) == [rules / "overrides.yaml"]
    assert load_rules([rules]).files == (str(rules / "overrides.yaml"),)
