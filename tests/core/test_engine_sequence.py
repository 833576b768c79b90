"""`sequence` correlations (RULES-SPEC section 4): order, window, joins, consumption."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import NS, Feed, S, iso, load

from streams.core.rules import Ruleset

TWO_STEPS = """
- correlation: A then B
  type: sequence
  by: [container.id]
  within: 10s
  steps:
    - name: a
      condition: rule = A
    - name: b
      condition: rule = B
  output: "A then B in {{ key['container.id'] }}"
"""

THREE_STEPS = """
- correlation: A then B then C
  type: sequence
  by: [container.id]
  within: 10s
  steps:
    - name: a
      condition: rule = A
    - name: b
      condition: rule = B
    - name: c
      condition: rule = C
  output: "abc"
"""


def cid(value: object) -> dict[str, object]:
    return {"container.id": value}


@pytest.fixture
def two(tmp_path: Path) -> Ruleset:
    return load(tmp_path, TWO_STEPS)


@pytest.fixture
def three(tmp_path: Path) -> Ruleset:
    return load(tmp_path, THREE_STEPS)


def test_sequence_fires_when_last_step_follows_first_in_same_key(two: Ruleset) -> None:
    feed = Feed(two)
    assert feed.send("A", 0, **cid("c1")) == []
    out = feed.send("B", 5 * S, **cid("c1"))
    assert len(out) == 1
    incident = out[0]
    assert incident["correlation"] == "A then B"
    assert incident["type"] == "sequence"
    assert incident["key"] == {"container.id": "c1"}
    assert [(e["step"], e["rule"]) for e in incident["events"]] == [("a", "A"), ("b", "B")]
    assert incident["first_seen"] == iso(0)
    assert incident["last_seen"] == iso(5 * S)
    assert incident["output"] == "A then B in c1"


def test_sequence_does_not_fire_across_keys(two: Ruleset) -> None:
    feed = Feed(two)
    feed.send("A", 0, **cid("c1"))
    feed.send("B", 1 * S, **cid("c2"))
    feed.finish(flush=True)
    assert feed.incidents == []


def test_sequence_does_not_fire_when_steps_come_in_reverse_order(two: Ruleset) -> None:
    feed = Feed(two)
    feed.send("B", 0, **cid("c1"))
    feed.send("A", 1 * S, **cid("c1"))
    feed.finish(flush=True)
    assert feed.incidents == []


def test_sequence_fires_at_exactly_within(two: Ruleset) -> None:
    feed = Feed(two)
    feed.send("A", 0, **cid("c1"))
    out = feed.send("B", 10 * S, **cid("c1"))
    assert len(out) == 1
    assert out[0]["first_seen"] == iso(0)
    assert out[0]["last_seen"] == iso(10 * S)


def test_sequence_does_not_fire_one_nanosecond_after_within(two: Ruleset) -> None:
    feed = Feed(two)
    feed.send("A", 0, **cid("c1"))
    assert feed.send("B", 10 * S + 1 * NS, **cid("c1")) == []
    feed.finish(flush=True)
    assert feed.incidents == []


def test_sequence_window_slides_to_a_later_first_step(two: Ruleset) -> None:
    feed = Feed(two)
    feed.send("A", 0, **cid("c1"))
    feed.send("A", 8 * S, output="second A", **cid("c1"))
    out = feed.send("B", 15 * S, **cid("c1"))
    assert len(out) == 1
    assert out[0]["events"][0]["output"] == "second A"


def test_sequence_equal_times_follow_arrival_order(two: Ruleset) -> None:
    feed = Feed(two)
    feed.send("A", 3 * S, **cid("c1"))
    feed.send("B", 3 * S, **cid("c1"))
    feed.finish()
    assert len(feed.incidents) == 1
    assert feed.incidents[0]["first_seen"] == feed.incidents[0]["last_seen"] == iso(3 * S)


def test_sequence_equal_times_in_reverse_arrival_do_not_fire(two: Ruleset) -> None:
    feed = Feed(two)
    feed.send("B", 3 * S, **cid("c1"))
    feed.send("A", 3 * S, **cid("c1"))
    feed.finish(flush=True)
    assert feed.incidents == []


def test_sequence_arrival_out_of_order_within_lateness_is_sorted_by_time(two: Ruleset) -> None:
    feed = Feed(two, lateness_ns=10 * S)
    feed.send("B", 5 * S, **cid("c1"))
    feed.send("A", 1 * S, **cid("c1"))  # arrives later, but happened earlier
    feed.finish()
    assert len(feed.incidents) == 1
    assert feed.rules_of(0) == ["A", "B"]


def test_sequence_consumes_events_of_a_match(two: Ruleset) -> None:
    feed = Feed(two)
    feed.send("A", 0, **cid("c1"))
    assert len(feed.send("B", 1 * S, **cid("c1"))) == 1
    # The A was consumed: a second B alone completes nothing.
    assert feed.send("B", 2 * S, **cid("c1")) == []


def test_sequence_consumes_unused_earlier_candidates_too(two: Ruleset) -> None:
    feed = Feed(two)
    feed.send("A", 0, output="old A", **cid("c1"))
    feed.send("A", 1 * S, output="new A", **cid("c1"))
    out = feed.send("B", 2 * S, **cid("c1"))
    assert out[0]["events"][0]["output"] == "new A"
    # "old A" is before the match's last event: consumed, it cannot start another chain.
    assert feed.send("B", 3 * S, **cid("c1")) == []


def test_sequence_fires_again_for_a_later_complete_chain(two: Ruleset) -> None:
    feed = Feed(two)
    feed.send("A", 0, **cid("c1"))
    feed.send("B", 1 * S, **cid("c1"))
    feed.send("A", 2 * S, output="A2", **cid("c1"))
    out = feed.send("B", 3 * S, output="B2", **cid("c1"))
    assert len(out) == 1
    assert [e["output"] for e in out[0]["events"]] == ["A2", "B2"]
    assert len(feed.incidents) == 2
    assert feed.incidents[0]["id"] != feed.incidents[1]["id"]


def test_sequence_consumption_is_per_key(two: Ruleset) -> None:
    feed = Feed(two)
    feed.send("A", 0, **cid("c1"))
    feed.send("A", 0, **cid("c2"))
    feed.send("B", 1 * S, **cid("c1"))
    out = feed.send("B", 2 * S, **cid("c2"))
    assert len(out) == 1
    assert out[0]["key"] == {"container.id": "c2"}


def test_sequence_reports_the_tightest_chain(three: Ruleset) -> None:
    feed = Feed(three)
    feed.send("A", 0, output="a0", **cid("c1"))
    feed.send("A", 1 * S, output="a1", **cid("c1"))
    feed.send("B", 2 * S, output="b2", **cid("c1"))
    feed.send("A", 3 * S, output="a3", **cid("c1"))  # after the chosen b: not eligible for it
    feed.send("B", 4 * S, output="b4", **cid("c1"))
    out = feed.send("C", 5 * S, output="c5", **cid("c1"))
    assert len(out) == 1
    assert [e["output"] for e in out[0]["events"]] == ["a3", "b4", "c5"]
    assert out[0]["first_seen"] == iso(3 * S)


def test_sequence_tightest_chain_takes_latest_first_step_before_the_chosen_second(
    three: Ruleset,
) -> None:
    feed = Feed(three)
    feed.send("A", 0, output="a0", **cid("c1"))
    feed.send("A", 1 * S, output="a1", **cid("c1"))
    feed.send("B", 2 * S, output="b2", **cid("c1"))
    feed.send("B", 3 * S, output="b3", **cid("c1"))
    out = feed.send("C", 4 * S, output="c4", **cid("c1"))
    assert [e["output"] for e in out[0]["events"]] == ["a1", "b3", "c4"]


def test_sequence_three_steps_need_every_step_in_order(three: Ruleset) -> None:
    feed = Feed(three)
    feed.send("A", 0, **cid("c1"))
    assert feed.send("C", 1 * S, **cid("c1")) == []
    feed.send("B", 2 * S, **cid("c1"))
    out = feed.send("C", 3 * S, **cid("c1"))
    assert len(out) == 1
    assert feed.rules_of() == ["A", "B", "C"]
    assert [e["step"] for e in out[0]["events"]] == ["a", "b", "c"]


def test_sequence_three_steps_window_measured_first_to_last(three: Ruleset) -> None:
    feed = Feed(three)
    feed.send("A", 0, **cid("c1"))
    feed.send("B", 9 * S, **cid("c1"))
    assert feed.send("C", 10 * S + 1, **cid("c1")) == []
    feed.send("A", 11 * S, **cid("c1"))
    feed.send("B", 12 * S, **cid("c1"))
    assert len(feed.send("C", 21 * S, **cid("c1"))) == 1


def test_sequence_three_steps_out_of_order_middle_does_not_fire(three: Ruleset) -> None:
    feed = Feed(three)
    feed.send("B", 0, **cid("c1"))
    feed.send("A", 1 * S, **cid("c1"))
    feed.send("C", 2 * S, **cid("c1"))
    feed.finish(flush=True)
    assert feed.incidents == []


@pytest.mark.parametrize("value", [None, "", "missing"])
def test_sequence_ignores_events_whose_by_field_is_null_missing_or_empty(
    two: Ruleset, value: object
) -> None:
    feed = Feed(two)
    fields = {} if value == "missing" else cid(value)
    feed.send("A", 0, **fields)
    feed.send("B", 1 * S, **fields)
    feed.finish(flush=True)
    assert feed.incidents == []
    assert feed.engine.state_entries == 0


@pytest.mark.parametrize("value", [None, ""])
def test_sequence_null_key_last_step_does_not_complete_a_keyed_chain(
    two: Ruleset, value: object
) -> None:
    feed = Feed(two)
    feed.send("A", 0, **cid("c1"))
    feed.send("B", 1 * S, **cid(value))
    assert feed.incidents == []
    assert len(feed.send("B", 2 * S, **cid("c1"))) == 1


def test_sequence_integer_key_values_are_kept_as_given(tmp_path: Path) -> None:
    rules = load(
        tmp_path,
        """
        - correlation: by pid
          type: sequence
          by: [proc.pid]
          within: 10s
          steps:
            - {name: a, condition: rule = A}
            - {name: b, condition: rule = B}
          output: "x"
        """,
    )
    feed = Feed(rules)
    feed.send("A", 0, **{"proc.pid": 0})
    out = feed.send("B", 1 * S, **{"proc.pid": 0})
    assert len(out) == 1
    assert out[0]["key"] == {"proc.pid": 0}


def test_sequence_without_by_is_one_global_group(tmp_path: Path) -> None:
    rules = load(
        tmp_path,
        """
        - correlation: global
          type: sequence
          within: 10s
          steps:
            - {name: a, condition: rule = A}
            - {name: b, condition: rule = B}
          output: "x"
        """,
    )
    feed = Feed(rules)
    feed.send("A", 0, hostname="h1")
    out = feed.send("B", 1 * S, hostname="h2")
    assert len(out) == 1
    assert out[0]["key"] == {}


# -- per-step `by` --------------------------------------------------------------------------------

JOIN = """
- correlation: inbound then outbound
  type: sequence
  by: [fd.sip]
  within: 1m
  steps:
    - name: inbound
      condition: rule = Inbound
    - name: outbound
      condition: rule = Outbound
      by: [fd.cip]
  output: "pivot via {{ key['fd.sip'] }}"
"""


def test_sequence_step_by_joins_different_fields(tmp_path: Path) -> None:
    feed = Feed(load(tmp_path, JOIN))
    feed.send("Inbound", 0, **{"fd.sip": "10.0.0.5", "fd.cip": "1.2.3.4"})
    out = feed.send("Outbound", 1 * S, **{"fd.cip": "10.0.0.5", "fd.sip": "8.8.8.8"})
    assert len(out) == 1
    assert out[0]["key"] == {"fd.sip": "10.0.0.5"}
    assert out[0]["output"] == "pivot via 10.0.0.5"


def test_sequence_step_by_uses_the_steps_own_field_not_the_rules(tmp_path: Path) -> None:
    feed = Feed(load(tmp_path, JOIN))
    feed.send("Inbound", 0, **{"fd.sip": "10.0.0.5"})
    # Same fd.sip as the first step, but the step's key is fd.cip, which differs.
    assert feed.send("Outbound", 1 * S, **{"fd.sip": "10.0.0.5", "fd.cip": "10.9.9.9"}) == []
    feed.finish(flush=True)
    assert feed.incidents == []


def test_sequence_step_by_with_missing_own_field_takes_no_part(tmp_path: Path) -> None:
    feed = Feed(load(tmp_path, JOIN))
    feed.send("Inbound", 0, **{"fd.sip": "10.0.0.5"})
    assert feed.send("Outbound", 1 * S, **{"fd.sip": "10.0.0.5"}) == []


def test_sequence_step_by_key_is_named_by_rule_by_with_several_fields(tmp_path: Path) -> None:
    rules = load(
        tmp_path,
        """
        - correlation: two fields
          type: sequence
          by: [fd.sip, fd.sport]
          within: 1m
          steps:
            - {name: a, condition: rule = A}
            - {name: b, condition: rule = B, by: [fd.cip, fd.cport]}
          output: "x"
        """,
    )
    feed = Feed(rules)
    feed.send("A", 0, **{"fd.sip": "10.0.0.5", "fd.sport": 22})
    assert feed.send("B", 1 * S, **{"fd.cip": "10.0.0.5", "fd.cport": 23}) == []
    out = feed.send("B", 2 * S, **{"fd.cip": "10.0.0.5", "fd.cport": 22})
    assert len(out) == 1
    assert out[0]["key"] == {"fd.sip": "10.0.0.5", "fd.sport": 22}


# -- events matching several steps ----------------------------------------------------------------

OVERLAP = """
- correlation: overlap
  type: sequence
  by: [container.id]
  within: 10s
  steps:
    - name: first
      condition: rule in (A, X)
    - name: second
      condition: rule in (B, X)
  output: "x"
"""


def test_sequence_event_matching_two_steps_does_not_fill_both(tmp_path: Path) -> None:
    feed = Feed(load(tmp_path, OVERLAP))
    assert feed.send("X", 0, **cid("c1")) == []
    feed.finish(flush=True)
    assert feed.incidents == []


def test_sequence_two_events_matching_both_steps_form_a_chain(tmp_path: Path) -> None:
    feed = Feed(load(tmp_path, OVERLAP))
    feed.send("X", 0, output="x1", **cid("c1"))
    out = feed.send("X", 1 * S, output="x2", **cid("c1"))
    assert len(out) == 1
    assert [(e["step"], e["output"]) for e in out[0]["events"]] == [
        ("first", "x1"),
        ("second", "x2"),
    ]


def test_sequence_last_step_event_that_completes_nothing_stays_a_candidate(tmp_path: Path) -> None:
    feed = Feed(load(tmp_path, OVERLAP))
    feed.send("X", 0, output="x0", **cid("c1"))  # could be `second`, but nothing precedes it
    out = feed.send("B", 1 * S, output="b1", **cid("c1"))
    assert len(out) == 1
    assert [(e["step"], e["output"]) for e in out[0]["events"]] == [
        ("first", "x0"),
        ("second", "b1"),
    ]


def test_sequence_equal_time_events_matching_both_steps_chain_by_arrival(tmp_path: Path) -> None:
    feed = Feed(load(tmp_path, OVERLAP))
    feed.send("X", 2 * S, output="x-first", **cid("c1"))
    feed.send("X", 2 * S, output="x-second", **cid("c1"))
    feed.finish()
    assert feed.outputs_of(0) == ["x-first", "x-second"]


def test_sequence_three_steps_one_event_fills_at_most_one_step(tmp_path: Path) -> None:
    rules = load(
        tmp_path,
        """
        - correlation: abc overlap
          type: sequence
          by: [container.id]
          within: 10s
          steps:
            - {name: a, condition: "rule in (A, X)"}
            - {name: b, condition: "rule in (B, X)"}
            - {name: c, condition: rule = C}
          output: "x"
        """,
    )
    feed = Feed(rules)
    feed.send("X", 0, **cid("c1"))
    assert feed.send("C", 1 * S, **cid("c1")) == []
    feed.send("X", 2 * S, output="x2", **cid("c1"))
    out = feed.send("C", 3 * S, **cid("c1"))
    assert len(out) == 1
    assert [(e["step"], e["rule"]) for e in out[0]["events"]] == [
        ("a", "X"),
        ("b", "X"),
        ("c", "C"),
    ]


def test_sequence_last_step_event_completing_a_chain_is_consumed(tmp_path: Path) -> None:
    feed = Feed(load(tmp_path, OVERLAP))
    feed.send("A", 0, **cid("c1"))
    assert len(feed.send("X", 1 * S, **cid("c1"))) == 1
    # X filled `second`; it is consumed and cannot be `first` of another chain.
    assert feed.send("B", 2 * S, **cid("c1")) == []


def test_sequence_reports_events_with_step_names_in_chain_order(three: Ruleset) -> None:
    feed = Feed(three, lateness_ns=10 * S)
    feed.send("C", 3 * S, **cid("c1"))
    feed.send("B", 2 * S, **cid("c1"))
    feed.send("A", 1 * S, **cid("c1"))
    feed.finish()
    assert len(feed.incidents) == 1
    assert [e["step"] for e in feed.incidents[0]["events"]] == ["a", "b", "c"]
