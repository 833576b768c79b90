"""`count` and `distinct` correlations (RULES-SPEC section 4): thresholds, windows, consumption."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import NS, Feed, S, iso, load

from streams.core.rules import Ruleset

COUNT = """
- correlation: burst
  type: count
  by: [container.id]
  within: 10s
  condition: rule = X
  threshold: 3
  output: "{{ events|length }} X in {{ key['container.id'] }}"
"""

DISTINCT = """
- correlation: spray
  type: distinct
  by: [container.id]
  within: 10s
  condition: rule = Conn
  field: fd.sip
  threshold: 3
  output: "{{ events|length }} targets"
"""


def cid(value: object) -> dict[str, object]:
    return {"container.id": value}


def sip(value: object, container: str = "c1") -> dict[str, object]:
    return {"container.id": container, "fd.sip": value}


@pytest.fixture
def count(tmp_path: Path) -> Ruleset:
    return load(tmp_path, COUNT)


@pytest.fixture
def distinct(tmp_path: Path) -> Ruleset:
    return load(tmp_path, DISTINCT)


# -- count ----------------------------------------------------------------------------------------


def test_count_fires_at_threshold_and_reports_the_events(count: Ruleset) -> None:
    feed = Feed(count)
    assert feed.send("X", 0, output="x0", **cid("c1")) == []
    assert feed.send("X", 1 * S, output="x1", **cid("c1")) == []
    out = feed.send("X", 2 * S, output="x2", **cid("c1"))
    assert len(out) == 1
    incident = out[0]
    assert incident["type"] == "count"
    assert incident["count"] == 1  # matches merged, not events
    assert [e["output"] for e in incident["events"]] == ["x0", "x1", "x2"]
    assert incident["output"] == "3 X in c1"
    assert incident["first_seen"] == iso(0)
    assert incident["last_seen"] == iso(2 * S)


def test_count_below_threshold_does_not_fire(count: Ruleset) -> None:
    feed = Feed(count)
    feed.send("X", 0, **cid("c1"))
    feed.send("X", 1 * S, **cid("c1"))
    feed.send("Y", 2 * S, **cid("c1"))
    feed.finish(flush=True)
    assert feed.incidents == []


def test_count_is_per_key(count: Ruleset) -> None:
    feed = Feed(count)
    feed.send("X", 0, **cid("c1"))
    feed.send("X", 1 * S, **cid("c2"))
    feed.send("X", 2 * S, **cid("c1"))
    feed.finish(flush=True)
    assert feed.incidents == []


def test_count_fires_at_exactly_within(count: Ruleset) -> None:
    feed = Feed(count)
    feed.send("X", 0, **cid("c1"))
    feed.send("X", 5 * S, **cid("c1"))
    out = feed.send("X", 10 * S, **cid("c1"))
    assert len(out) == 1
    assert out[0]["first_seen"] == iso(0)


def test_count_does_not_fire_one_nanosecond_after_within(count: Ruleset) -> None:
    feed = Feed(count)
    feed.send("X", 0, **cid("c1"))
    feed.send("X", 5 * S, **cid("c1"))
    assert feed.send("X", 10 * S + 1 * NS, **cid("c1")) == []


def test_count_window_slides_past_expired_events(count: Ruleset) -> None:
    feed = Feed(count)
    feed.send("X", 0, output="old", **cid("c1"))
    feed.send("X", 5 * S, output="x5", **cid("c1"))
    feed.send("X", 10 * S + 1 * NS, output="x10", **cid("c1"))
    out = feed.send("X", 11 * S, output="x11", **cid("c1"))
    assert len(out) == 1
    assert [e["output"] for e in out[0]["events"]] == ["x5", "x10", "x11"]


def test_count_consumes_then_fires_a_second_incident(count: Ruleset) -> None:
    feed = Feed(count)
    for i in range(3):
        feed.send("X", i * S, **cid("c1"))
    assert len(feed.incidents) == 1
    assert feed.send("X", 3 * S, output="x3", **cid("c1")) == []
    assert feed.send("X", 4 * S, output="x4", **cid("c1")) == []
    out = feed.send("X", 5 * S, output="x5", **cid("c1"))
    assert len(out) == 1
    assert [e["output"] for e in out[0]["events"]] == ["x3", "x4", "x5"]
    assert out[0]["id"] != feed.incidents[0]["id"]
    assert out[0]["status"] == "new"
    assert out[0]["count"] == 1


def test_count_equal_times_count_separately(count: Ruleset) -> None:
    feed = Feed(count)
    for i in range(3):
        feed.send("X", 4 * S, output=f"x{i}", **cid("c1"))
    feed.finish()
    assert len(feed.incidents) == 1
    assert [e["output"] for e in feed.incidents[0]["events"]] == ["x0", "x1", "x2"]


@pytest.mark.parametrize("value", [None, "", "missing"])
def test_count_ignores_events_whose_by_field_is_null_missing_or_empty(
    count: Ruleset, value: object
) -> None:
    feed = Feed(count)
    fields = {} if value == "missing" else cid(value)
    for i in range(4):
        feed.send("X", i * S, **fields)
    feed.finish(flush=True)
    assert feed.incidents == []


def test_count_out_of_order_arrival_within_lateness(count: Ruleset) -> None:
    feed = Feed(count, lateness_ns=10 * S)
    feed.send("X", 9 * S, output="x9", **cid("c1"))
    feed.send("X", 0, output="x0", **cid("c1"))
    feed.send("X", 4 * S, output="x4", **cid("c1"))
    feed.finish()
    assert len(feed.incidents) == 1
    assert [e["output"] for e in feed.incidents[0]["events"]] == ["x0", "x4", "x9"]


def test_count_threshold_two(tmp_path: Path) -> None:
    rules = load(tmp_path, COUNT.replace("threshold: 3", "threshold: 2"))
    feed = Feed(rules)
    feed.send("X", 0, **cid("c1"))
    assert len(feed.send("X", 1, **cid("c1"))) == 1


# -- distinct -------------------------------------------------------------------------------------


def test_distinct_fires_at_threshold_distinct_values(distinct: Ruleset) -> None:
    feed = Feed(distinct)
    feed.send("Conn", 0, **sip("10.0.0.1"))
    feed.send("Conn", 1 * S, **sip("10.0.0.2"))
    out = feed.send("Conn", 2 * S, **sip("10.0.0.3"))
    assert len(out) == 1
    assert out[0]["type"] == "distinct"
    assert [e["output_fields"]["fd.sip"] for e in out[0]["events"]] == [
        "10.0.0.1",
        "10.0.0.2",
        "10.0.0.3",
    ]
    assert out[0]["output"] == "3 targets"


def test_distinct_repeated_values_count_once(distinct: Ruleset) -> None:
    feed = Feed(distinct)
    for i in range(5):
        feed.send("Conn", i * S, **sip("10.0.0.1"))
    feed.send("Conn", 5 * S, **sip("10.0.0.2"))
    feed.finish(flush=True)
    assert feed.incidents == []


def test_distinct_reports_the_latest_event_per_value(distinct: Ruleset) -> None:
    feed = Feed(distinct)
    feed.send("Conn", 0, output="one-old", **sip("10.0.0.1"))
    feed.send("Conn", 1 * S, output="two", **sip("10.0.0.2"))
    feed.send("Conn", 2 * S, output="one-new", **sip("10.0.0.1"))
    out = feed.send("Conn", 3 * S, output="three", **sip("10.0.0.3"))
    assert len(out) == 1
    outputs = [e["output"] for e in out[0]["events"]]
    assert sorted(outputs) == ["one-new", "three", "two"]
    assert outputs == ["two", "one-new", "three"]  # time order
    assert out[0]["first_seen"] == iso(1 * S)


@pytest.mark.parametrize("value", [None, "missing"])
def test_distinct_null_or_missing_value_adds_no_value(distinct: Ruleset, value: object) -> None:
    feed = Feed(distinct)
    fields = {"container.id": "c1"} if value == "missing" else sip(value)
    feed.send("Conn", 0, **sip("10.0.0.1"))
    feed.send("Conn", 1 * S, **fields)
    feed.send("Conn", 2 * S, **fields)
    feed.send("Conn", 3 * S, **sip("10.0.0.2"))
    assert feed.incidents == []
    out = feed.send("Conn", 4 * S, **sip("10.0.0.3"))
    assert len(out) == 1
    assert len(out[0]["events"]) == 3
    assert all(e["output_fields"].get("fd.sip") for e in out[0]["events"])


def test_distinct_fires_at_exactly_within(distinct: Ruleset) -> None:
    feed = Feed(distinct)
    feed.send("Conn", 0, **sip("a"))
    feed.send("Conn", 5 * S, **sip("b"))
    out = feed.send("Conn", 10 * S, **sip("c"))
    assert len(out) == 1
    assert out[0]["first_seen"] == iso(0)


def test_distinct_does_not_fire_one_nanosecond_after_within(distinct: Ruleset) -> None:
    feed = Feed(distinct)
    feed.send("Conn", 0, **sip("a"))
    feed.send("Conn", 5 * S, **sip("b"))
    assert feed.send("Conn", 10 * S + 1 * NS, **sip("c")) == []


def test_distinct_value_refreshed_inside_window_stays_counted(distinct: Ruleset) -> None:
    feed = Feed(distinct)
    feed.send("Conn", 0, **sip("a"))
    feed.send("Conn", 6 * S, output="a again", **sip("a"))
    feed.send("Conn", 7 * S, **sip("b"))
    out = feed.send("Conn", 15 * S, **sip("c"))
    assert len(out) == 1
    assert "a again" in [e["output"] for e in out[0]["events"]]


def test_distinct_consumes_then_needs_new_values(distinct: Ruleset) -> None:
    feed = Feed(distinct)
    for i, value in enumerate("abc"):
        feed.send("Conn", i * S, **sip(value))
    assert len(feed.incidents) == 1
    feed.send("Conn", 3 * S, **sip("a"))
    assert feed.send("Conn", 4 * S, **sip("b")) == []
    out = feed.send("Conn", 5 * S, **sip("c"))
    assert len(out) == 1
    assert out[0]["first_seen"] == iso(3 * S)


def test_distinct_is_per_key(distinct: Ruleset) -> None:
    feed = Feed(distinct)
    feed.send("Conn", 0, **sip("a", "c1"))
    feed.send("Conn", 1 * S, **sip("b", "c2"))
    feed.send("Conn", 2 * S, **sip("c", "c1"))
    feed.finish(flush=True)
    assert feed.incidents == []


def test_distinct_integer_values(distinct: Ruleset) -> None:
    feed = Feed(distinct)
    for i, port in enumerate([22, 80, 443]):
        feed.send("Conn", i * S, **sip(port))
    assert len(feed.incidents) == 1


def test_distinct_without_by_is_global(tmp_path: Path) -> None:
    rules = load(tmp_path, DISTINCT.replace("  by: [container.id]\n", ""))
    feed = Feed(rules)
    feed.send("Conn", 0, **sip("a", "c1"))
    feed.send("Conn", 1 * S, **sip("b", "c2"))
    out = feed.send("Conn", 2 * S, **{"fd.sip": "c"})
    assert len(out) == 1
    assert out[0]["key"] == {}
