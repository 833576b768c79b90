"""Suppression (RULES-SPEC section 4): `update` records, count, anchor, first_seen."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import NS, Feed, S, iso, load

from streams.core.rules import Ruleset

SUPPRESSED = """
- correlation: pair
  type: count
  by: [container.id]
  within: 10s
  condition: rule = X
  threshold: 2
  suppress: 60s
  output: "pair #{{ count }} of {{ events|length }}"
"""

C1 = {"container.id": "c1"}
C2 = {"container.id": "c2"}


@pytest.fixture
def rules(tmp_path: Path) -> Ruleset:
    return load(tmp_path, SUPPRESSED)


def pair(feed: Feed, at_ns: int, tag: str = "", **fields: object) -> list[dict]:
    """Two X events ending at at_ns: one match."""
    fields = fields or C1
    feed.send("X", at_ns - 1 * S, output=f"{tag}a", **fields)
    return feed.send("X", at_ns, output=f"{tag}b", **fields)


def test_first_match_is_new_with_count_one(rules: Ruleset) -> None:
    feed = Feed(rules)
    out = pair(feed, 1 * S)
    assert [(i["status"], i["count"]) for i in out] == [("new", 1)]
    assert out[0]["output"] == "pair #1 of 2"


def test_match_within_suppress_is_an_update_of_the_same_incident(rules: Ruleset) -> None:
    feed = Feed(rules)
    first = pair(feed, 1 * S)[0]
    update = pair(feed, 20 * S, tag="u")[0]
    assert update["status"] == "update"
    assert update["id"] == first["id"]
    assert update["count"] == 2
    assert update["output"] == "pair #2 of 2"


def test_update_keeps_first_seen_and_reports_the_new_match_only(rules: Ruleset) -> None:
    feed = Feed(rules)
    pair(feed, 1 * S)
    update = pair(feed, 20 * S, tag="u")[0]
    assert update["first_seen"] == iso(0)
    assert update["last_seen"] == iso(20 * S)
    assert [e["output"] for e in update["events"]] == ["ua", "ub"]


def test_updates_count_up(rules: Ruleset) -> None:
    feed = Feed(rules)
    for at in (1, 11, 21, 31):
        pair(feed, at * S)
    assert [(i["status"], i["count"]) for i in feed.incidents] == [
        ("new", 1),
        ("update", 2),
        ("update", 3),
        ("update", 4),
    ]
    assert len({i["id"] for i in feed.incidents}) == 1
    assert feed.engine.stats.incidents["pair"] == 1
    assert feed.engine.stats.updates["pair"] == 3


def test_match_just_under_suppress_after_the_anchor_is_an_update(rules: Ruleset) -> None:
    feed = Feed(rules)
    pair(feed, 1 * S)  # anchor: last event at 1s
    out = pair(feed, 61 * S - 1 * NS)
    assert out[0]["status"] == "update"


def test_match_exactly_suppress_after_the_anchor_opens_a_new_incident(rules: Ruleset) -> None:
    feed = Feed(rules)
    first = pair(feed, 1 * S)[0]
    out = pair(feed, 61 * S)
    assert out[0]["status"] == "new"
    assert out[0]["count"] == 1
    assert out[0]["id"] != first["id"]
    assert out[0]["first_seen"] == iso(60 * S)


def test_updates_do_not_move_the_anchor(rules: Ruleset) -> None:
    feed = Feed(rules)
    pair(feed, 1 * S)
    pair(feed, 30 * S)
    pair(feed, 60 * S)
    out = pair(feed, 61 * S + 5 * S)  # < 60s after the 60s update, but >= 60s after the anchor
    assert [(i["status"], i["count"]) for i in feed.incidents] == [
        ("new", 1),
        ("update", 2),
        ("update", 3),
        ("new", 1),
    ]
    assert out[0]["first_seen"] == iso(65 * S)


def test_new_incident_after_suppress_becomes_the_new_anchor(rules: Ruleset) -> None:
    feed = Feed(rules)
    pair(feed, 1 * S)
    second = pair(feed, 70 * S)[0]
    third = pair(feed, 100 * S)[0]
    assert third["status"] == "update"
    assert third["id"] == second["id"]
    assert third["count"] == 2
    assert third["first_seen"] == iso(69 * S)


def test_suppression_is_per_key(rules: Ruleset) -> None:
    feed = Feed(rules)
    pair(feed, 1 * S, **C1)
    out = pair(feed, 5 * S, **C2)
    assert out[0]["status"] == "new"
    assert out[0]["key"] == {"container.id": "c2"}


def test_without_suppress_every_match_is_new_with_count_one(tmp_path: Path) -> None:
    feed = Feed(load(tmp_path, SUPPRESSED.replace("  suppress: 60s\n", "")))
    for at in (1, 3, 5):
        pair(feed, at * S)
    assert [(i["status"], i["count"]) for i in feed.incidents] == [("new", 1)] * 3
    assert len({i["id"] for i in feed.incidents}) == 3
    assert [i["first_seen"] for i in feed.incidents] == [iso(0), iso(2 * S), iso(4 * S)]


def test_suppressed_update_still_consumes(rules: Ruleset) -> None:
    feed = Feed(rules)
    pair(feed, 1 * S)
    pair(feed, 20 * S)
    assert feed.send("X", 21 * S, **C1) == []


def test_sequence_updates_under_suppression(tmp_path: Path) -> None:
    rules = load(
        tmp_path,
        """
        - correlation: ab
          type: sequence
          by: [container.id]
          within: 10s
          suppress: 1m
          steps:
            - {name: a, condition: rule = A}
            - {name: b, condition: rule = B}
          output: "{{ count }}: {{ first.time }} .. {{ last.time }}"
        """,
    )
    feed = Feed(rules)
    feed.send("A", 0, **C1)
    feed.send("B", 1 * S, **C1)
    feed.send("A", 5 * S, **C1)
    out = feed.send("B", 6 * S, **C1)
    assert out[0]["status"] == "update"
    assert out[0]["count"] == 2
    assert out[0]["first_seen"] == iso(0)
    assert out[0]["output"] == f"2: {iso(5 * S)} .. {iso(6 * S)}"


# -- absence under suppression ----------------------------------------------------------------

SILENT = """
- correlation: silent
  type: absence
  by: [hostname]
  within: 10s
  suppress: 100s
  trigger: {condition: rule = Beat}
  expect: {condition: rule = Beat}
  output: "silent"
"""


def test_absence_within_suppress_is_an_update(tmp_path: Path) -> None:
    feed = Feed(load(tmp_path, SILENT))
    feed.send("Beat", 0, hostname="h1")
    feed.send("Beat", 50 * S, hostname="h1")  # fires the 0s trigger, pending at 50s
    feed.finish(flush=True)
    assert [(i["status"], i["count"], i["last_seen"]) for i in feed.incidents] == [
        ("new", 1, iso(0)),
        ("update", 2, iso(50 * S)),
    ]
    assert feed.incidents[1]["first_seen"] == iso(0)


def test_absence_update_does_not_depend_on_intermediate_watermarks(tmp_path: Path) -> None:
    rules = load(tmp_path, SILENT)

    def run(ticks: list[int]) -> list[tuple[str, int]]:
        feed = Feed(rules)
        feed.send("Beat", 0, hostname="h1")  # pending; fires when watermark > 10s
        feed.send("Other", 11 * S, hostname="h9")  # fires it: new, anchor 0s
        feed.send("Beat", 95 * S, hostname="h1")  # new pending; 95s - 0s < 100s: an update
        for tick in ticks:
            feed.advance(tick * S)
        feed.finish(flush=True)
        return [(i["status"], i["count"]) for i in feed.incidents]

    assert run([]) == [("new", 1), ("update", 2)]
    assert run([106]) == [("new", 1), ("update", 2)]
    assert run([101, 106]) == [("new", 1), ("update", 2)]
