"""`explain`'s analysis: every stop reason, per correlation type, and the near-miss ranking."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import S, iso, load, payload

from streams.core.engine import Engine
from streams.core.events import event_from_dict
from streams.core.explain import Attempt, Explanation, explain_trace, rank_near_misses
from streams.core.rules import Ruleset
from streams.core.trace import CorrelationTrace

M = 60 * S

SEQ = """
- correlation: Seq
  type: sequence
  by: [container.id]
  within: 10m
  steps:
    - {name: shell, condition: rule = Shell}
    - {name: download, condition: rule = Download}
    - {name: exec, condition: rule = Exec}
  suppress: 30m
"""

PAIR = """
- correlation: Pair
  type: sequence
  by: [container.id]
  within: 10m
  steps:
    - {name: shell, condition: rule = Shell}
    - {name: egress, condition: rule = Egress}
"""

WINDOWED = """
- correlation: Both
  type: all
  by: [container.id]
  within: 10m
  steps:
    - {name: miner, condition: rule = Miner}
    - {name: pool, condition: rule = Pool}
- correlation: Three
  type: count
  by: [container.id]
  condition: rule = Read
  threshold: 3
  within: 2m
- correlation: Spread
  type: distinct
  by: [container.id]
  condition: rule = Conn
  field: fd.sip
  threshold: 3
  within: 1m
- correlation: Silent
  type: absence
  by: [hostname]
  within: 5m
  trigger: {condition: rule = Beat}
  expect: {condition: rule = Beat}
"""


def run(
    ruleset: Ruleset,
    name: str,
    events: list[dict[str, Any]],
    *,
    lateness_ns: int = 0,
    max_pending: int = 10_000,
    flush: bool = False,
) -> tuple[Explanation, list[dict[str, Any]]]:
    ci = next(i for i, c in enumerate(ruleset.correlations) if c.name == name)
    trace = CorrelationTrace(ci, ruleset.correlations[ci])
    engine = Engine(ruleset, lateness_ns=lateness_ns, max_pending=max_pending, observer=trace)
    trace.matcher = engine.match
    incidents: list[dict[str, Any]] = []
    for seq, raw in enumerate(events):
        incidents.extend(engine.submit(event_from_dict(raw, seq)))
    incidents.extend(engine.finish(flush=flush))
    return explain_trace(trace, end_ns=engine.max_time_ns), incidents


def ev(rule: str, at_ns: int, cid: str | None = "c1", **fields: Any) -> dict[str, Any]:
    return payload(rule, at_ns, **{"container.id": cid, **fields})


def attempts(ex: Explanation, key: tuple[Any, ...] = ("c1",)) -> list[Attempt]:
    [found] = [k for k in ex.keys if k.key == key]
    return found.attempts


def times(attempt: Attempt) -> list[str]:
    return [e.raw["time"] for _, e in attempt.hits]


# -- sequence ------------------------------------------------------------------------------


def test_a_fired_match_is_reported_with_its_incident(tmp_path: Path) -> None:
    ex, incidents = run(
        load(tmp_path, SEQ), "Seq", [ev("Shell", 0), ev("Download", S), ev("Exec", 2 * S)]
    )
    [attempt] = attempts(ex)
    assert attempt.reason == "fired"
    assert attempt.record is not None
    assert attempt.record["id"] == incidents[0]["id"]
    assert [step for step, _ in attempt.hits] == ["shell", "download", "exec"]
    assert attempt.progress == 1.0
    assert not attempt.near_miss


def test_a_match_within_suppress_is_reported_as_suppressed_into_an_update(tmp_path: Path) -> None:
    chain = [ev("Shell", 0), ev("Download", S), ev("Exec", 2 * S)]
    again = [ev("Shell", M), ev("Download", M + S), ev("Exec", M + 2 * S)]
    ex, incidents = run(load(tmp_path, SEQ), "Seq", chain + again)
    first, second = attempts(ex)
    assert (first.reason, second.reason) == ("fired", "suppressed")
    assert second.record is not None
    assert second.record["status"] == "update"
    assert second.record["count"] == 2
    assert second.record["id"] == incidents[0]["id"]


def test_events_consumed_by_an_incident_of_other_events_are_reported_consumed(
    tmp_path: Path,
) -> None:
    events = [ev("Shell", 0), ev("Shell", S), ev("Egress", 2 * S)]
    ex, incidents = run(load(tmp_path, PAIR), "Pair", events)
    consumed, fired = attempts(ex)
    assert fired.reason == "fired"
    assert times(fired) == [iso(S), iso(2 * S)]
    assert consumed.reason == "consumed"
    assert times(consumed) == [iso(0)]
    assert consumed.record is not None
    assert consumed.record["id"] == incidents[0]["id"]
    assert not consumed.near_miss


def test_a_partial_match_whose_event_was_evicted_by_the_cap_is_reported_evicted(
    tmp_path: Path,
) -> None:
    events = [ev("Shell", 0), ev("Shell", S), ev("Shell", 2 * S)]
    ex, _ = run(load(tmp_path, PAIR), "Pair", events, max_pending=2)
    reasons = [(times(a)[0], a.reason) for a in attempts(ex)]
    assert reasons == [
        (iso(0), "evicted"),
        (iso(S), "never_matched"),
        (iso(2 * S), "never_matched"),
    ]


def test_a_late_event_that_would_have_filled_the_next_step_is_the_reason(
    tmp_path: Path,
) -> None:
    events = [
        ev("Shell", 0),
        ev("Other", 100 * S, cid="zz"),  # moves the watermark to 90 s
        ev("Download", 50 * S),  # late
    ]
    ex, _ = run(load(tmp_path, SEQ), "Seq", events, lateness_ns=10 * S)
    [attempt] = attempts(ex)
    assert attempt.reason == "late"
    assert attempt.step == "download"
    assert attempt.other is not None
    assert attempt.other.raw["time"] == iso(50 * S)
    [key] = [k for k in ex.keys if k.key == ("c1",)]
    assert [e.raw["time"] for e in key.late] == [iso(50 * S)]


def test_an_event_of_the_next_step_without_its_by_field_is_the_reason(tmp_path: Path) -> None:
    ex, _ = run(load(tmp_path, PAIR), "Pair", [ev("Shell", 0), ev("Egress", 10 * S, cid=None)])
    [attempt] = attempts(ex)
    assert attempt.reason == "by_field_missing"
    assert attempt.step == "egress"
    assert attempt.detail["missing"] == ["container.id"]
    [unkeyed] = ex.unkeyed
    assert unkeyed.missing == ("container.id",)
    assert unkeyed.steps == frozenset({1})


def test_the_next_step_after_the_window_is_reported_outside_within(tmp_path: Path) -> None:
    ex, incidents = run(load(tmp_path, PAIR), "Pair", [ev("Shell", 0), ev("Egress", 11 * M)])
    assert incidents == []
    [attempt] = attempts(ex)
    assert attempt.reason == "outside_within"
    assert attempt.step == "egress"
    assert attempt.delta_ns == 11 * M
    assert attempt.detail["overshoot_ns"] == M


def test_a_step_that_never_came_is_never_matched_and_says_the_window_was_open(
    tmp_path: Path,
) -> None:
    events = [ev("Shell", 0), ev("Download", S), ev("Noise", 60 * S, cid="other")]
    ex, _ = run(load(tmp_path, SEQ), "Seq", events)
    [attempt] = attempts(ex)
    assert attempt.reason == "never_matched"
    assert attempt.step == "exec"
    assert attempt.progress == pytest.approx(2 / 3)
    assert attempt.detail.get("window_open_at_end") is True


def test_a_step_that_matched_only_before_the_previous_one_is_said_so(tmp_path: Path) -> None:
    events = [ev("Egress", 0), ev("Shell", S), ev("Noise", 20 * M, cid="other")]
    ex, _ = run(load(tmp_path, PAIR), "Pair", events)
    [attempt] = attempts(ex)
    assert attempt.reason == "never_matched"
    assert attempt.detail["matched_before"] is True
    assert "window_open_at_end" not in attempt.detail
    assert attempt.other is not None
    assert attempt.other.rule == "Egress"


def test_a_key_where_only_later_steps_matched_has_an_empty_attempt(tmp_path: Path) -> None:
    ex, _ = run(load(tmp_path, PAIR), "Pair", [ev("Egress", 0)])
    [attempt] = attempts(ex)
    assert attempt.hits == []
    assert attempt.reason == "never_matched"
    assert attempt.step == "shell"
    assert attempt.detail["matched_steps"] == ["egress"]
    assert attempt.progress == 0.0


# -- all, count, distinct, absence -----------------------------------------------------------


def test_all_reports_the_missing_step_outside_the_window(tmp_path: Path) -> None:
    ex, _ = run(load(tmp_path, WINDOWED), "Both", [ev("Miner", 0), ev("Pool", 15 * M)])
    first, second = attempts(ex)
    assert (first.reason, first.step) == ("outside_within", "pool")
    assert first.delta_ns == 15 * M
    assert (second.reason, second.step) == ("outside_within", "miner")
    assert second.delta_ns == -15 * M


def test_all_reports_a_step_that_never_matched(tmp_path: Path) -> None:
    ex, _ = run(load(tmp_path, WINDOWED), "Both", [ev("Miner", 0)])
    [attempt] = attempts(ex)
    assert (attempt.reason, attempt.step, attempt.progress) == ("never_matched", "pool", 0.5)


def test_count_below_the_threshold_reports_how_many_of_how_many(tmp_path: Path) -> None:
    events = [ev("Read", 0), ev("Read", 10 * S), ev("Read", 30 * S)]
    ex, _ = run(load(tmp_path, WINDOWED), "Three", events[:2])
    [attempt] = attempts(ex)
    assert attempt.reason == "threshold_not_reached"
    assert (attempt.detail["got"], attempt.detail["needed"]) == (2, 3)
    assert attempt.progress == pytest.approx(2 / 3)
    ex, incidents = run(load(tmp_path, WINDOWED), "Three", events)
    assert len(incidents) == 1
    assert [a.reason for a in attempts(ex)] == ["fired"]


def test_count_over_a_longer_span_than_within_is_outside_within_and_windows_are_not_repeated(
    tmp_path: Path,
) -> None:
    events = [ev("Read", 0), ev("Read", 60 * S), ev("Read", 150 * S)]
    ex, incidents = run(load(tmp_path, WINDOWED), "Three", events)
    assert incidents == []
    first, second = attempts(ex)  # the window opened at 150 s lies inside the one opened at 60 s
    assert first.reason == "outside_within"
    assert first.other is not None
    assert first.other.raw["time"] == iso(150 * S)
    assert first.detail["overshoot_ns"] == 30 * S
    assert times(second) == [iso(60 * S), iso(150 * S)]
    assert second.reason == "threshold_not_reached"


def test_count_that_late_events_would_have_completed_is_late(tmp_path: Path) -> None:
    events = [ev("Read", 0), ev("Read", S), ev("Other", 40 * S, cid="x"), ev("Read", 20 * S)]
    ex, _ = run(load(tmp_path, WINDOWED), "Three", events, lateness_ns=10 * S)
    [attempt] = attempts(ex)
    assert attempt.reason == "late"


def test_distinct_counts_distinct_values_and_lists_them(tmp_path: Path) -> None:
    events = [
        ev("Conn", 0, **{"fd.sip": "10.0.0.1"}),
        ev("Conn", S, **{"fd.sip": "10.0.0.1"}),
        ev("Conn", 2 * S, **{"fd.sip": "10.0.0.2"}),
        ev("Conn", 3 * S, **{"fd.sip": None}),
    ]
    ex, _ = run(load(tmp_path, WINDOWED), "Spread", events)
    [attempt] = attempts(ex)
    assert attempt.reason == "threshold_not_reached"
    assert attempt.detail["got"] == 2
    assert attempt.detail["values"] == ["10.0.0.1", "10.0.0.2"]


def test_absence_cleared_by_an_expect_in_time_is_a_near_miss_by_its_margin(
    tmp_path: Path,
) -> None:
    beats = [payload("Beat", 0, hostname="h1"), payload("Beat", 4 * M, hostname="h1")]
    ex, _ = run(load(tmp_path, WINDOWED), "Silent", beats)
    first, second = attempts(ex, ("h1",))
    assert first.reason == "cleared"
    assert first.delta_ns == 4 * M
    assert first.progress == pytest.approx(0.8)
    assert second.reason == "pending_at_end"
    assert second.detail["deadline_ns"] == second.hits[0][1].time_ns + 5 * M


def test_absence_pending_at_the_end_fires_with_flush(tmp_path: Path) -> None:
    beat = [payload("Beat", 0, hostname="h1")]
    ex, _ = run(load(tmp_path, WINDOWED), "Silent", beat)
    assert [a.reason for a in attempts(ex, ("h1",))] == ["pending_at_end"]
    ex, incidents = run(load(tmp_path, WINDOWED), "Silent", beat, flush=True)
    [attempt] = attempts(ex, ("h1",))
    assert attempt.reason == "fired"
    assert attempt.record is not None
    assert attempt.record["id"] == incidents[0]["id"]


# -- near misses ------------------------------------------------------------------------------


def test_near_misses_rank_by_progress_then_by_what_was_seen_then_by_overshoot(
    tmp_path: Path,
) -> None:
    events = [
        # A: two of three steps, the third never came. B: one of three. C and D: two of three,
        # then exec 1 and 5 minutes after the window. E: fired.
        *[ev("Shell", 0, cid=cid) for cid in "ABCDE"],
        *[ev("Download", S, cid=cid) for cid in "ACDE"],
        ev("Exec", 2 * S, cid="E"),
        ev("Exec", 11 * M, cid="C"),
        ev("Exec", 15 * M, cid="D"),
    ]
    ex, _ = run(load(tmp_path, SEQ), "Seq", events)
    ranked = [(a.key[0], a.reason) for a in rank_near_misses(ex)]
    assert ranked == [
        ("C", "outside_within"),
        ("D", "outside_within"),
        ("A", "never_matched"),
        ("B", "never_matched"),
    ]


def test_an_observer_does_not_change_what_the_engine_emits(tmp_path: Path) -> None:
    ruleset = load(tmp_path, SEQ + PAIR.replace("- correlation: Pair", "- correlation: P2"))
    events = [
        ev(rule, (i * 37 % 50) * S, cid=f"c{i % 3}")
        for i, rule in enumerate(["Shell", "Download", "Exec", "Egress", "Shell", "Exec"] * 8)
    ]
    plain = Engine(ruleset, lateness_ns=20 * S)
    traced_ex, traced = run(ruleset, "Seq", events, lateness_ns=20 * S)
    expected: list[dict[str, Any]] = []
    late_of_seq = 0
    for seq, raw in enumerate(events):
        before = plain.stats.late
        expected.extend(plain.submit(event_from_dict(raw, seq)))
        late_of_seq += plain.stats.late > before and raw["rule"] in ("Shell", "Download", "Exec")
    expected.extend(plain.finish())
    assert traced == expected
    assert late_of_seq > 0
    assert sum(len(k.late) for k in traced_ex.keys) == late_of_seq
