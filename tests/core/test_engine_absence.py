"""`absence` correlations (RULES-SPEC section 4): pending triggers, deadlines, watermark, flush."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import NS, T0, Feed, S, iso, load

from streams.core.rules import Ruleset

ABSENCE = """
- correlation: job never finished
  type: absence
  by: [hostname]
  within: 10s
  trigger:
    condition: rule = Start
  expect:
    condition: rule = Done
  output: "no Done on {{ key['hostname'] }} since {{ first.time }}"
"""

HEARTBEAT = """
- correlation: sensor silent
  type: absence
  by: [hostname]
  within: 10s
  trigger:
    condition: rule = Beat
  expect:
    condition: rule = Beat
  output: "silent {{ key['hostname'] }}"
"""


@pytest.fixture
def absence(tmp_path: Path) -> Ruleset:
    return load(tmp_path, ABSENCE)


@pytest.fixture
def heartbeat(tmp_path: Path) -> Ruleset:
    return load(tmp_path, HEARTBEAT)


def test_absence_does_not_fire_while_watermark_is_at_the_deadline(absence: Ruleset) -> None:
    feed = Feed(absence)
    feed.send("Start", 0, hostname="h1")
    assert feed.send("Other", 10 * S, hostname="h2") == []
    assert feed.engine.watermark_ns == T0 + 10 * S


def test_absence_fires_once_watermark_exceeds_the_deadline(absence: Ruleset) -> None:
    feed = Feed(absence)
    feed.send("Start", 0, hostname="h1", output="started")
    feed.send("Other", 10 * S, hostname="h2")
    out = feed.send("Other", 10 * S + 1 * NS, hostname="h2")
    assert len(out) == 1
    incident = out[0]
    assert incident["type"] == "absence"
    assert incident["key"] == {"hostname": "h1"}
    assert len(incident["events"]) == 1
    assert incident["events"][0]["rule"] == "Start"
    assert incident["events"][0]["output"] == "started"
    assert incident["events"][0]["step"] == "trigger"
    assert incident["first_seen"] == incident["last_seen"] == iso(0)
    assert incident["output"] == f"no Done on h1 since {iso(0)}"


def test_absence_watermark_includes_lateness(absence: Ruleset) -> None:
    feed = Feed(absence, lateness_ns=5 * S)
    feed.send("Start", 0, hostname="h1")
    assert feed.send("Other", 15 * S, hostname="h2") == []  # watermark 10s: not yet
    assert len(feed.send("Other", 15 * S + 1, hostname="h2")) == 1


def test_absence_fires_on_advance_to_without_new_events(absence: Ruleset) -> None:
    feed = Feed(absence)
    feed.send("Start", 0, hostname="h1")
    assert feed.advance(10 * S) == []
    out = feed.advance(10 * S + 1)
    assert len(out) == 1
    assert out[0]["first_seen"] == iso(0)


def test_absence_advance_to_never_moves_the_watermark_back(absence: Ruleset) -> None:
    feed = Feed(absence)
    feed.send("Other", 20 * S, hostname="h2")
    feed.advance(5 * S)
    assert feed.engine.watermark_ns == T0 + 20 * S


def test_absence_not_fired_at_end_of_input_when_deadline_is_not_below_watermark(
    absence: Ruleset,
) -> None:
    feed = Feed(absence)
    feed.send("Start", 0, hostname="h1")
    feed.send("Other", 10 * S, hostname="h2")
    assert feed.finish() == []
    assert feed.incidents == []


def test_absence_not_fired_at_end_of_input_within_lateness(absence: Ruleset) -> None:
    feed = Feed(absence, lateness_ns=10 * S)
    feed.send("Start", 0, hostname="h1")
    feed.send("Other", 15 * S, hostname="h2")  # 15s > deadline, but watermark is 5s
    assert feed.finish() == []


def test_absence_fired_at_end_of_input_with_flush(absence: Ruleset) -> None:
    feed = Feed(absence, lateness_ns=10 * S)
    feed.send("Start", 0, hostname="h1")
    out = feed.finish(flush=True)
    assert len(out) == 1
    assert out[0]["first_seen"] == out[0]["last_seen"] == iso(0)


def test_absence_flush_fires_every_pending_key(absence: Ruleset) -> None:
    feed = Feed(absence)
    feed.send("Start", 0, hostname="h1")
    feed.send("Start", 1 * S, hostname="h2")
    feed.send("Done", 2 * S, hostname="h2")
    feed.send("Start", 3 * S, hostname="h3")
    out = feed.finish(flush=True)
    assert [i["key"]["hostname"] for i in out] == ["h1", "h3"]


def test_absence_cleared_by_expect_exactly_at_the_deadline(absence: Ruleset) -> None:
    feed = Feed(absence)
    feed.send("Start", 0, hostname="h1")
    feed.send("Done", 10 * S, hostname="h1")
    feed.send("Other", 60 * S, hostname="h2")
    assert feed.finish(flush=True) == []
    assert feed.incidents == []


def test_absence_not_cleared_by_expect_one_nanosecond_after_the_deadline(
    absence: Ruleset,
) -> None:
    feed = Feed(absence)
    feed.send("Start", 0, hostname="h1")
    feed.send("Done", 10 * S + 1 * NS, hostname="h1")
    feed.finish(flush=True)
    assert len(feed.incidents) == 1
    assert feed.incidents[0]["first_seen"] == iso(0)


def test_absence_expect_before_the_trigger_does_not_clear_it(absence: Ruleset) -> None:
    feed = Feed(absence)
    feed.send("Done", 0, hostname="h1")
    feed.send("Start", 1 * S, hostname="h1")
    feed.finish(flush=True)
    assert len(feed.incidents) == 1


def test_absence_expect_at_same_time_clears_only_when_it_arrives_after(absence: Ruleset) -> None:
    before = Feed(absence)
    before.send("Done", 1 * S, hostname="h1")
    before.send("Start", 1 * S, hostname="h1")
    before.finish(flush=True)
    assert len(before.incidents) == 1

    after = Feed(absence)
    after.send("Start", 1 * S, hostname="h1")
    after.send("Done", 1 * S, hostname="h1")
    after.finish(flush=True)
    assert after.incidents == []


def test_absence_expect_of_another_key_does_not_clear(absence: Ruleset) -> None:
    feed = Feed(absence)
    feed.send("Start", 0, hostname="h1")
    feed.send("Done", 1 * S, hostname="h2")
    feed.finish(flush=True)
    assert [i["key"] for i in feed.incidents] == [{"hostname": "h1"}]


def test_absence_expect_arriving_late_but_within_lateness_clears(absence: Ruleset) -> None:
    feed = Feed(absence, lateness_ns=10 * S)
    feed.send("Start", 0, hostname="h1")
    feed.send("Other", 15 * S, hostname="h2")  # watermark 5s
    feed.send("Done", 8 * S, hostname="h1")  # after the watermark: accepted, in time order
    feed.finish(flush=True)
    assert feed.incidents == []
    assert feed.engine.stats.late == 0


def test_absence_other_triggers_before_the_deadline_are_ignored(absence: Ruleset) -> None:
    feed = Feed(absence)
    feed.send("Start", 0, hostname="h1", output="first")
    feed.send("Start", 5 * S, hostname="h1", output="second")
    feed.send("Start", 10 * S, hostname="h1", output="at deadline")
    feed.finish(flush=True)
    assert len(feed.incidents) == 1
    assert feed.incidents[0]["events"][0]["output"] == "first"


def test_absence_ignored_trigger_is_not_pending_after_a_clear(absence: Ruleset) -> None:
    feed = Feed(absence)
    feed.send("Start", 0, hostname="h1")
    feed.send("Start", 5 * S, hostname="h1")  # ignored, not queued
    feed.send("Done", 7 * S, hostname="h1")
    feed.finish(flush=True)
    assert feed.incidents == []


def test_absence_trigger_after_the_deadline_starts_a_new_pending(absence: Ruleset) -> None:
    feed = Feed(absence)
    feed.send("Start", 0, hostname="h1", output="first")
    feed.send("Start", 10 * S + 1, hostname="h1", output="second")
    feed.finish(flush=True)
    assert [i["events"][0]["output"] for i in feed.incidents] == ["first", "second"]
    assert feed.incidents[0]["id"] != feed.incidents[1]["id"]


def test_absence_expect_after_the_deadline_finds_nothing_to_clear(absence: Ruleset) -> None:
    feed = Feed(absence)
    feed.send("Start", 0, hostname="h1")
    feed.send("Done", 11 * S, hostname="h1")
    feed.send("Start", 12 * S, hostname="h1")
    feed.send("Done", 13 * S, hostname="h1")
    feed.finish(flush=True)
    assert [i["first_seen"] for i in feed.incidents] == [iso(0)]


def test_absence_trigger_after_a_clear_starts_a_new_pending(absence: Ruleset) -> None:
    feed = Feed(absence)
    feed.send("Start", 0, hostname="h1")
    feed.send("Done", 1 * S, hostname="h1")
    feed.send("Start", 2 * S, hostname="h1")
    feed.finish(flush=True)
    assert [i["first_seen"] for i in feed.incidents] == [iso(2 * S)]


def test_absence_fires_in_deadline_order_before_later_events(absence: Ruleset) -> None:
    feed = Feed(absence)
    feed.send("Start", 0, hostname="h1")
    feed.send("Start", 3 * S, hostname="h2")
    out = feed.send("Other", 30 * S, hostname="h9")
    assert [i["key"]["hostname"] for i in out] == ["h1", "h2"]


@pytest.mark.parametrize("value", [None, ""])
def test_absence_ignores_events_with_null_or_empty_key(absence: Ruleset, value: object) -> None:
    feed = Feed(absence)
    feed.raw(
        {
            "time": iso(0),
            "rule": "Start",
            "priority": "Warning",
            "hostname": value,
            "output": "x",
            "output_fields": {},
        }
    )
    feed.finish(flush=True)
    assert feed.incidents == []


def test_absence_step_by_joins_trigger_and_expect_fields(tmp_path: Path) -> None:
    rules = load(
        tmp_path,
        """
        - correlation: no reply
          type: absence
          by: [fd.cip]
          within: 10s
          trigger: {condition: rule = Request}
          expect: {condition: rule = Reply, by: [fd.sip]}
          output: "x"
        """,
    )
    feed = Feed(rules)
    feed.send("Request", 0, **{"fd.cip": "10.0.0.1"})
    feed.send("Request", 0, **{"fd.cip": "10.0.0.2"})
    feed.send("Reply", 1 * S, **{"fd.sip": "10.0.0.1", "fd.cip": "10.0.0.2"})
    feed.finish(flush=True)
    assert [i["key"] for i in feed.incidents] == [{"fd.cip": "10.0.0.2"}]


# -- heartbeats: an event matching both expect and trigger ---------------------------------------


def test_heartbeat_clears_the_pending_one_and_becomes_the_new_pending(heartbeat: Ruleset) -> None:
    feed = Feed(heartbeat)
    feed.send("Beat", 0, hostname="h1", output="b0")
    feed.send("Beat", 6 * S, hostname="h1", output="b6")
    feed.send("Other", 12 * S, hostname="h2")  # past b0's deadline: b0 was cleared by b6
    assert feed.incidents == []
    feed.finish(flush=True)
    assert len(feed.incidents) == 1
    assert feed.incidents[0]["events"][0]["output"] == "b6"
    assert feed.incidents[0]["first_seen"] == iso(6 * S)


def test_regular_heartbeats_never_fire_until_they_stop(heartbeat: Ruleset) -> None:
    feed = Feed(heartbeat)
    for i in range(20):
        feed.send("Beat", i * 10 * S, hostname="h1")  # exactly at each deadline
    assert feed.incidents == []
    out = feed.advance(190 * S + 10 * S + 1)
    assert len(out) == 1
    assert out[0]["first_seen"] == iso(190 * S)


def test_heartbeat_after_a_gap_fires_the_old_one_and_becomes_pending(heartbeat: Ruleset) -> None:
    feed = Feed(heartbeat)
    feed.send("Beat", 0, hostname="h1")
    out = feed.send("Beat", 10 * S + 1, hostname="h1")
    assert [i["first_seen"] for i in out] == [iso(0)]
    feed.finish(flush=True)
    assert [i["first_seen"] for i in feed.incidents] == [iso(0), iso(10 * S + 1)]


def test_absence_detected_at_does_not_depend_on_when_the_watermark_moved(
    absence: Ruleset,
) -> None:
    slow = Feed(absence)
    slow.send("Start", 0, hostname="h1")
    slow.send("Other", 10 * S + 1, hostname="h2")
    fast = Feed(absence)
    fast.send("Start", 0, hostname="h1")
    fast.send("Other", 500 * S, hostname="h2")
    flushed = Feed(absence)
    flushed.send("Start", 0, hostname="h1")
    flushed.finish(flush=True)
    assert slow.incidents == fast.incidents == flushed.incidents


def test_absence_expect_at_the_deadline_wins_when_released_with_the_deadline(
    absence: Ruleset,
) -> None:
    feed = Feed(absence, lateness_ns=30 * S)
    feed.send("Start", 0, hostname="h1")
    feed.send("Done", 10 * S, hostname="h1")
    # One jump of the watermark releases the expect and passes the deadline together.
    assert feed.send("Other", 100 * S, hostname="h2") == []
    assert feed.finish(flush=True) == []
