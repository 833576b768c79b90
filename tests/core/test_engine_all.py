"""`all` correlations (RULES-SPEC section 4): any order, first-step assignment, latest per step."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import NS, Feed, S, iso, load

from streams.core.rules import Ruleset

ALL = """
- correlation: recon kit
  type: all
  by: [container.id]
  within: 10s
  steps:
    - name: a
      condition: rule = A
    - name: b
      condition: rule = B
    - name: c
      condition: rule = C
  output: "{{ steps.a.rule }}/{{ steps.b.rule }}/{{ steps.c.rule }}"
"""

OVERLAP = """
- correlation: overlap
  type: all
  by: [container.id]
  within: 10s
  steps:
    - name: shell
      condition: proc.name = bash
    - name: net
      condition: rule = Net
  output: "x"
"""


def cid(value: object) -> dict[str, object]:
    return {"container.id": value}


@pytest.fixture
def rules(tmp_path: Path) -> Ruleset:
    return load(tmp_path, ALL)


@pytest.mark.parametrize("order", ["ABC", "CBA", "BAC", "CAB"])
def test_all_fires_in_any_order(rules: Ruleset, order: str) -> None:
    feed = Feed(rules)
    for i, rule in enumerate(order):
        feed.send(rule, i * S, **cid("c1"))
    assert len(feed.incidents) == 1
    incident = feed.incidents[0]
    assert incident["type"] == "all"
    assert incident["first_seen"] == iso(0)
    assert incident["last_seen"] == iso(2 * S)
    assert incident["output"] == "A/B/C"
    assert {e["step"]: e["rule"] for e in incident["events"]} == {"a": "A", "b": "B", "c": "C"}


def test_all_reports_events_in_time_order(rules: Ruleset) -> None:
    feed = Feed(rules)
    feed.send("C", 0, **cid("c1"))
    feed.send("A", 1 * S, **cid("c1"))
    feed.send("B", 2 * S, **cid("c1"))
    assert [e["rule"] for e in feed.incidents[0]["events"]] == ["C", "A", "B"]


def test_all_does_not_fire_with_a_step_missing(rules: Ruleset) -> None:
    feed = Feed(rules)
    feed.send("A", 0, **cid("c1"))
    feed.send("B", 1 * S, **cid("c1"))
    feed.send("A", 2 * S, **cid("c1"))
    feed.finish(flush=True)
    assert feed.incidents == []


def test_all_does_not_fire_across_keys(rules: Ruleset) -> None:
    feed = Feed(rules)
    feed.send("A", 0, **cid("c1"))
    feed.send("B", 1 * S, **cid("c1"))
    feed.send("C", 2 * S, **cid("c2"))
    feed.finish(flush=True)
    assert feed.incidents == []


def test_all_fires_at_exactly_within(rules: Ruleset) -> None:
    feed = Feed(rules)
    feed.send("B", 0, **cid("c1"))
    feed.send("A", 5 * S, **cid("c1"))
    out = feed.send("C", 10 * S, **cid("c1"))
    assert len(out) == 1
    assert out[0]["first_seen"] == iso(0)
    assert out[0]["last_seen"] == iso(10 * S)


def test_all_does_not_fire_one_nanosecond_after_within(rules: Ruleset) -> None:
    feed = Feed(rules)
    feed.send("B", 0, **cid("c1"))
    feed.send("A", 5 * S, **cid("c1"))
    assert feed.send("C", 10 * S + 1 * NS, **cid("c1")) == []
    feed.finish(flush=True)
    assert feed.incidents == []


def test_all_window_slides_with_a_refreshed_step(rules: Ruleset) -> None:
    feed = Feed(rules)
    feed.send("B", 0, **cid("c1"))
    feed.send("A", 5 * S, **cid("c1"))
    feed.send("B", 8 * S, output="fresh B", **cid("c1"))
    out = feed.send("C", 12 * S, **cid("c1"))
    assert len(out) == 1
    assert out[0]["first_seen"] == iso(5 * S)
    assert "fresh B" in [e["output"] for e in out[0]["events"]]


def test_all_reports_the_latest_event_per_step(rules: Ruleset) -> None:
    feed = Feed(rules)
    feed.send("A", 0, output="a0", **cid("c1"))
    feed.send("A", 1 * S, output="a1", **cid("c1"))
    feed.send("B", 2 * S, output="b2", **cid("c1"))
    feed.send("A", 3 * S, output="a3", **cid("c1"))
    out = feed.send("C", 4 * S, output="c4", **cid("c1"))
    assert len(out[0]["events"]) == 3
    assert {e["step"]: e["output"] for e in out[0]["events"]} == {
        "a": "a3",
        "b": "b2",
        "c": "c4",
    }
    assert out[0]["first_seen"] == iso(2 * S)


def test_all_consumes_events_of_the_match(rules: Ruleset) -> None:
    feed = Feed(rules)
    feed.send("A", 0, **cid("c1"))
    feed.send("B", 1 * S, **cid("c1"))
    assert len(feed.send("C", 2 * S, **cid("c1"))) == 1
    feed.send("C", 3 * S, **cid("c1"))
    assert feed.send("B", 4 * S, **cid("c1")) == []  # no A left
    out = feed.send("A", 5 * S, output="new A", **cid("c1"))
    assert len(out) == 1
    assert {e["step"]: e["time"] for e in out[0]["events"]} == {
        "a": iso(5 * S),
        "b": iso(4 * S),
        "c": iso(3 * S),
    }


def test_all_event_is_assigned_only_to_the_first_matching_step(tmp_path: Path) -> None:
    feed = Feed(load(tmp_path, OVERLAP))
    # Matches both `shell` (proc.name) and `net` (rule): it belongs to `shell` only.
    feed.send("Net", 0, **{"proc.name": "bash"}, **cid("c1"))
    feed.send("Net", 1 * S, **{"proc.name": "bash"}, **cid("c1"))
    feed.finish(flush=True)
    assert feed.incidents == []


def test_all_event_matching_a_later_step_only_fills_it(tmp_path: Path) -> None:
    feed = Feed(load(tmp_path, OVERLAP))
    feed.send("Net", 0, **{"proc.name": "bash"}, **cid("c1"))
    out = feed.send("Net", 1 * S, **{"proc.name": "curl"}, **cid("c1"))
    assert len(out) == 1
    assert [(e["step"], e["output_fields"]["proc.name"]) for e in out[0]["events"]] == [
        ("shell", "bash"),
        ("net", "curl"),
    ]


def test_all_first_step_assignment_follows_declaration_order(tmp_path: Path) -> None:
    rules = load(
        tmp_path,
        """
        - correlation: declared
          type: all
          by: [container.id]
          within: 10s
          steps:
            - {name: net, condition: rule = Net}
            - {name: shell, condition: proc.name = bash}
          output: "x"
        """,
    )
    feed = Feed(rules)
    feed.send("Net", 0, **{"proc.name": "bash"}, **cid("c1"))  # `net` now, declared first
    out = feed.send("Shell", 1 * S, **{"proc.name": "bash"}, **cid("c1"))
    assert len(out) == 1
    assert [e["step"] for e in out[0]["events"]] == ["net", "shell"]


def test_all_single_event_never_fills_two_steps(tmp_path: Path) -> None:
    rules = load(
        tmp_path,
        """
        - correlation: same condition twice
          type: all
          by: [container.id]
          within: 10s
          steps:
            - {name: one, condition: rule = X}
            - {name: two, condition: rule = X}
          output: "x"
        """,
    )
    feed = Feed(rules)
    for i in range(5):
        feed.send("X", i * S, **cid("c1"))
    feed.finish(flush=True)
    assert feed.incidents == []


def test_all_equal_times_fire(rules: Ruleset) -> None:
    feed = Feed(rules)
    for rule in "CAB":
        feed.send(rule, 7 * S, **cid("c1"))
    feed.finish()
    assert len(feed.incidents) == 1
    assert feed.incidents[0]["first_seen"] == feed.incidents[0]["last_seen"] == iso(7 * S)


@pytest.mark.parametrize("value", [None, "", "missing"])
def test_all_ignores_events_whose_by_field_is_null_missing_or_empty(
    rules: Ruleset, value: object
) -> None:
    feed = Feed(rules)
    fields = {} if value == "missing" else cid(value)
    for i, rule in enumerate("ABC"):
        feed.send(rule, i * S, **fields)
    feed.finish(flush=True)
    assert feed.incidents == []


def test_all_step_by_joins_different_fields(tmp_path: Path) -> None:
    rules = load(
        tmp_path,
        """
        - correlation: joined
          type: all
          by: [fd.sip]
          within: 10s
          steps:
            - {name: in, condition: rule = In}
            - {name: out, condition: rule = Out, by: [fd.cip]}
          output: "x"
        """,
    )
    feed = Feed(rules)
    feed.send("Out", 0, **{"fd.cip": "10.0.0.1"})
    out = feed.send("In", 1 * S, **{"fd.sip": "10.0.0.1"})
    assert len(out) == 1
    assert out[0]["key"] == {"fd.sip": "10.0.0.1"}
