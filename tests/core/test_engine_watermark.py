"""Lateness and the watermark (RULES-SPEC section 4, "Order and time")."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from helpers import NS, T0, Feed, S, iso, load, payload

from streams.cli.replay import replay_lines
from streams.core.rules import Ruleset

PAIR = """
- correlation: pair
  type: count
  by: [container.id]
  within: 1m
  condition: rule = X
  threshold: 2
  output: "pair"
"""


@pytest.fixture
def pair(tmp_path: Path) -> Ruleset:
    return load(tmp_path, PAIR)


C1 = {"container.id": "c1"}


def test_watermark_is_highest_event_time_minus_lateness(pair: Ruleset) -> None:
    feed = Feed(pair, lateness_ns=5 * S)
    feed.send("X", 20 * S, **C1)
    feed.send("X", 3 * S, **C1)
    assert feed.engine.watermark_ns == T0 + 15 * S


def test_unmatched_valid_events_move_the_watermark(pair: Ruleset) -> None:
    feed = Feed(pair, lateness_ns=5 * S)
    feed.send("Unrelated", 20 * S, **C1)
    assert feed.engine.watermark_ns == T0 + 15 * S


def test_event_before_the_watermark_is_late_counted_and_not_correlated(pair: Ruleset) -> None:
    feed = Feed(pair, lateness_ns=5 * S)
    feed.send("X", 20 * S, **C1)
    assert feed.send("X", 15 * S - 1 * NS, **C1) == []
    assert feed.engine.stats.late == 1
    feed.finish(flush=True)
    assert feed.incidents == []


def test_event_exactly_at_the_watermark_is_accepted(pair: Ruleset) -> None:
    feed = Feed(pair, lateness_ns=5 * S)
    feed.send("X", 20 * S, **C1)
    feed.send("X", 15 * S, **C1)
    feed.finish()
    assert feed.engine.stats.late == 0
    assert len(feed.incidents) == 1
    assert feed.incidents[0]["first_seen"] == iso(15 * S)


def test_unmatched_late_event_is_counted_as_late(pair: Ruleset) -> None:
    feed = Feed(pair, lateness_ns=0)
    feed.send("Unrelated", 20 * S, **C1)
    feed.send("Unrelated", 10 * S, **C1)
    assert feed.engine.stats.late == 1


def test_late_event_does_not_move_the_watermark(pair: Ruleset) -> None:
    feed = Feed(pair, lateness_ns=5 * S)
    feed.send("X", 20 * S, **C1)
    feed.send("X", 1 * S, **C1)
    assert feed.engine.watermark_ns == T0 + 15 * S


def test_first_event_is_never_late(pair: Ruleset) -> None:
    feed = Feed(pair, lateness_ns=0)
    feed.send("X", -(10**6) * S, **C1)
    assert feed.engine.stats.late == 0


def test_zero_lateness_rejects_any_older_event(pair: Ruleset) -> None:
    feed = Feed(pair, lateness_ns=0)
    feed.send("X", 10 * S, **C1)
    feed.send("X", 10 * S - 1, **C1)
    assert feed.engine.stats.late == 1


def test_events_within_lateness_are_correlated_in_time_order(pair: Ruleset) -> None:
    feed = Feed(pair, lateness_ns=10 * S)
    feed.send("X", 9 * S, output="later", **C1)
    feed.send("X", 0, output="earlier", **C1)
    feed.finish()
    assert feed.outputs_of(0) == ["earlier", "later"]


def test_incidents_wait_for_the_watermark_then_finish_processes_everything(
    pair: Ruleset,
) -> None:
    feed = Feed(pair, lateness_ns=10 * S)
    assert feed.send("X", 0, **C1) == []
    assert feed.send("X", 1 * S, **C1) == []  # watermark -9s: nothing released yet
    out = feed.finish()
    assert len(out) == 1


def test_incident_emitted_once_watermark_reaches_the_completing_event(pair: Ruleset) -> None:
    feed = Feed(pair, lateness_ns=10 * S)
    feed.send("X", 0, **C1)
    feed.send("X", 1 * S, **C1)
    assert feed.send("Unrelated", 11 * S - 1, **C1) == []
    assert len(feed.send("Unrelated", 11 * S, **C1)) == 1


def test_late_events_after_advance_to(pair: Ruleset) -> None:
    feed = Feed(pair, lateness_ns=10 * S)
    feed.send("X", 0, **C1)
    feed.advance(30 * S)
    feed.send("X", 29 * S, **C1)
    assert feed.engine.stats.late == 1


# -- replay: invalid lines ------------------------------------------------------------------------


def _replay(rules: Ruleset, lines: list[object], lateness_ns: int) -> tuple[list[dict], str, int]:
    encoded = [(line if isinstance(line, str) else json.dumps(line)).encode() for line in lines]
    source = (("events.jsonl", n, line + b"\n") for n, line in enumerate(encoded, 1))
    out, err = io.BytesIO(), io.StringIO()
    _, engine = replay_lines(rules, source, lateness_ns=lateness_ns, flush=False, out=out, err=err)
    incidents = [json.loads(x) for x in out.getvalue().splitlines()]
    return incidents, err.getvalue(), engine.stats.late


def test_invalid_lines_never_move_the_watermark(pair: Ruleset) -> None:
    future = T0 + 10**6 * S
    lines: list[object] = [
        {"time": iso(10**6 * S), "output": "no rule", "output_fields": {}},
        {"rule": "X", "output_fields": {"container.id": "c1", "evt.time.x": future}},
        "not json {",
        [1, 2],
        payload("X", 0, **C1),
        payload("X", 1 * S, **C1),
    ]
    incidents, err, late = _replay(pair, lines, lateness_ns=0)
    assert late == 0
    assert len(incidents) == 1
    assert "events.jsonl:1:" in err
    assert "events.jsonl:2:" in err
    assert "events.jsonl:3:" in err
    assert "events.jsonl:4:" in err


def test_replay_late_line_is_reported_with_its_position(pair: Ruleset) -> None:
    lines: list[object] = [payload("X", 20 * S, **C1), payload("X", 0, **C1)]
    incidents, err, late = _replay(pair, lines, lateness_ns=5 * S)
    assert late == 1
    assert incidents == []
    assert "events.jsonl:2:" in err


def test_event_time_falls_back_to_evt_time(pair: Ruleset) -> None:
    lines: list[object] = [
        {"rule": "X", "output": "a", "output_fields": {"container.id": "c1", "evt.time": T0}},
        {
            "rule": "X",
            "time": "garbage",
            "output": "b",
            "output_fields": {"container.id": "c1", "evt.time": T0 + 5 * S},
        },
    ]
    incidents, _, _ = _replay(pair, lines, lateness_ns=0)
    assert len(incidents) == 1
    assert incidents[0]["first_seen"] == iso(0)
    assert incidents[0]["last_seen"] == iso(5 * S)
