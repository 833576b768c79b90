"""Hostile events (issue 10): out-of-range times, deep nesting, huge records, future dates.

Each is invalid input with a reason (EventError), never an exception from deeper down: replay
skips the line and the worker dead-letters the record with that reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import load

from streams.core.engine import Engine
from streams.core.events import (
    MAX_EVENT_BYTES,
    MAX_EVENT_DEPTH,
    MAX_EVENT_TIME_NS,
    event_from_bytes,
    event_from_dict,
    format_time,
    hostname_label,
    too_far_ahead,
)
from streams.core.rules import Ruleset
from streams.errors import EventError

NS = 1_000_000_000
NOW = 1_685_022_245 * NS  # 2023-05-25T13:44:05Z


CHAIN = """
- correlation: chain
  type: sequence
  by: [container.id]
  within: 10m
  steps:
    - {name: a, condition: rule = A}
    - {name: b, condition: rule = B}
"""


@pytest.fixture
def chain(tmp_path: Path) -> Ruleset:
    return load(tmp_path, CHAIN)


def _line(**raw: Any) -> bytes:
    raw.setdefault("rule", "A")
    return json.dumps(raw).encode()


def _nested(depth: int, leaf: object = "x") -> object:
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.mark.parametrize(
    "time",
    ["9999-05-25T13:44:05Z", "2600-01-01T00:00:00.5Z", "2200-01-01T00:00:00Z",
     "1969-12-31T23:59:59Z", "0001-01-01T00:00:00Z"],
)  # fmt: skip
def test_time_outside_the_int64_range_is_invalid_with_the_reason(time: str) -> None:
    with pytest.raises(EventError, match="event time out of range"):
        event_from_bytes(_line(time=time), 0)


def test_last_nanosecond_before_2200_is_accepted() -> None:
    event = event_from_bytes(_line(time="2199-12-31T23:59:59.999999999Z"), 0)
    assert event.time_ns == MAX_EVENT_TIME_NS - 1
    assert format_time(event.time_ns) == "2199-12-31T23:59:59.999999999Z"


@pytest.mark.parametrize(
    "evt_time", [10**19, 2**64 - 1, "1" * 30, "9" * 5000, str(MAX_EVENT_TIME_NS)]
)
def test_huge_evt_time_is_invalid_with_the_reason(evt_time: object) -> None:
    line = _line(uuid="u1", output_fields={"evt.time": evt_time})
    with pytest.raises(EventError, match=r"out of range \(evt.time "):
        event_from_bytes(line, 0)


def test_out_of_range_time_falls_back_to_a_usable_evt_time() -> None:
    # Like an unparsable `time` (spec section 1): the fallback decides.
    event = event_from_bytes(_line(time="9999-01-01T00:00:00Z", output_fields={"evt.time": NOW}), 0)
    assert event.time_ns == NOW


def test_reason_quotes_only_a_short_escaped_prefix_of_the_value() -> None:
    with pytest.raises(EventError) as info:
        event_from_bytes(_line(output_fields={"evt.time": "7" * 100_000}), 0)
    assert len(str(info.value)) < 200


def test_events_of_year_9999_never_reach_the_engine_identity(chain: Ruleset) -> None:
    # Before: `Event.identity` raised TypeError (integer over 64 bits) when the chain fired.
    engine = Engine(chain)
    for rule, second in (("A", 5), ("B", 6)):
        with pytest.raises(EventError):
            event_from_bytes(_line(rule=rule, time=f"9999-05-25T13:44:0{second}Z"), 0)
    assert engine.finish() == []


@pytest.mark.parametrize("where", ["output_fields", "hostname", "output", "tags"])
def test_value_nested_deeper_than_the_limit_is_invalid(where: str) -> None:
    deep = _nested(300)
    raw: dict[str, Any] = {"rule": "A", "time": "2023-05-25T13:44:05Z"}
    raw[where] = {"deep": deep} if where == "output_fields" else deep
    line = json.dumps(raw).encode()
    with pytest.raises(EventError, match=f"nested deeper than {MAX_EVENT_DEPTH} levels"):
        event_from_bytes(line, 0)
    with pytest.raises(EventError, match="nested deeper"):
        event_from_dict(orjson.loads(line), 0)


def test_nesting_up_to_the_limit_is_accepted_and_its_incident_serialises(chain: Ruleset) -> None:
    # The payload is level 1, output_fields level 2: the value may add MAX_EVENT_DEPTH - 2.
    fields = {"container.id": "c1", "deep": _nested(MAX_EVENT_DEPTH - 2)}
    engine = Engine(chain)
    out = []
    for seq, (rule, second) in enumerate((("A", 5), ("B", 6))):
        line = _line(rule=rule, time=f"2023-05-25T13:44:0{second}Z", output_fields=fields)
        out += engine.submit(event_from_bytes(line, seq))
    out += engine.finish()
    [incident] = out
    assert orjson.loads(orjson.dumps(incident))["events"][1]["output_fields"] == fields
    one_more = {"deep": _nested(MAX_EVENT_DEPTH - 1)}
    with pytest.raises(EventError, match="nested deeper"):
        event_from_bytes(_line(time="2023-05-25T13:44:05Z", output_fields=one_more), 0)


def test_brackets_inside_strings_do_not_make_a_shallow_event_invalid() -> None:
    line = _line(time="2023-05-25T13:44:05Z", output="[" * 10_000 + "{" * 10_000)
    assert event_from_bytes(line, 0).rule == "A"


def test_record_longer_than_the_limit_is_invalid_before_decoding() -> None:
    line = _line(time="2023-05-25T13:44:05Z", output="x" * MAX_EVENT_BYTES)
    with pytest.raises(EventError, match=f"longer than the {MAX_EVENT_BYTES}-byte limit"):
        event_from_bytes(line, 0)
    small = _line(time="2023-05-25T13:44:05Z", output="x" * 100)
    with pytest.raises(EventError, match="longer than the 50-byte limit"):
        event_from_bytes(small, 0, max_bytes=50)


# -- app.max_future_skew: the pure decision the worker's ingest applies ------------------------


def _at(offset_s: float, hostname: object = "node-7") -> Any:
    raw = {"rule": "A", "hostname": hostname, "time": format_time(NOW + int(offset_s * NS))}
    return event_from_dict(raw, 0)


@pytest.mark.parametrize("offset_s", [-3600, 0, 299, 300])
def test_event_up_to_max_future_skew_ahead_is_not_flagged(offset_s: float) -> None:
    assert too_far_ahead(_at(offset_s), NOW, 300 * NS) is None


def test_event_beyond_max_future_skew_gives_reason_and_hostname() -> None:
    found = too_far_ahead(_at(300.001), NOW, 300 * NS)
    assert found is not None
    assert found.hostname == "node-7"
    assert found.ahead_ns == 300_001_000_000
    assert found.reason == (
        "event time 2023-05-25T13:49:05.001000000Z is 300.001s ahead of the wall clock "
        "2023-05-25T13:44:05.000000000Z (app.max_future_skew 300.000s)"
    )


@pytest.mark.parametrize(
    ("hostname", "label"),
    [(None, "<none>"), ("", "<none>"), (["a"], "<none>"), (7, "<none>"),
     ("h" * 500, "h" * 64), ("node-1", "node-1")],
)  # fmt: skip
def test_hostname_label_is_short_text_whatever_the_payload_holds(
    hostname: object, label: str
) -> None:
    assert hostname_label(hostname) == label
    found = too_far_ahead(_at(3600, hostname), NOW, 300 * NS)
    assert found is not None
    assert found.hostname == label
