"""Input events (spec section 1): times, fallbacks, invalid input, priorities, fields, identity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.events import (
    Event,
    _parse_time_slow,
    event_from_bytes,
    event_from_dict,
    parse_time,
)
from streams.core.priority import PRIORITY_NAMES, canonical_priority, priority_rank
from streams.errors import EventError

EXAMPLES = Path(__file__).resolve().parent.parent / "fixtures" / "falco-examples.jsonl"
NS = 1_000_000_000
# 2023-05-25T13:44:05Z
BASE_S = 1685022245


def _event(**raw: Any) -> Event:
    raw.setdefault("rule", "Some rule")
    return event_from_dict(raw, 0)


def _examples() -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in EXAMPLES.read_bytes().splitlines() if line.strip()]


# -- time ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fraction", "nanos"),
    [
        ("", 0),
        (".4", 400_000_000),
        (".47", 470_000_000),
        (".478", 478_000_000),
        (".4784", 478_400_000),
        (".47844", 478_440_000),
        (".478445", 478_445_000),
        (".4784459", 478_445_900),
        (".47844599", 478_445_990),
        (".478445995", 478_445_995),
        (".000000001", 1),
        (".000000000", 0),
    ],
)
def test_time_accepts_zero_to_nine_fractional_digits(fraction: str, nanos: int) -> None:
    assert parse_time(f"2023-05-25T13:44:05{fraction}Z") == BASE_S * NS + nanos


def test_time_with_trailing_zeros_dropped_by_falcosidekick_is_right_padded() -> None:
    # falcosidekick writes 20.90104586 for 20.901045860: the digits are the high ones.
    assert parse_time("2025-05-18T10:18:20.90104586Z") == 1747563500_901045860


def test_time_is_integer_nanoseconds_without_float_rounding() -> None:
    ns = parse_time("2023-05-25T13:44:05.478445995Z")
    assert type(ns) is int
    assert ns == 1685022245478445995
    assert ns % 1000 == 995  # a float would have lost the last digits


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [
        (".5", 500_000_000),
        (".1234567890", None),
        (".12a4", None),
        (".", None),
        (".000000007", 7),
    ],
)
def test_time_parses_the_same_when_its_second_was_seen_before(
    fraction: str, expected: int | None
) -> None:
    # A second already parsed (in any shape) must not make a malformed fraction acceptable.
    second = "2031-02-03T04:05:06"
    assert parse_time(f"{second}Z") is not None
    assert parse_time(f"{second}.1Z") is not None
    base = parse_time(f"{second}Z")
    assert base is not None
    result = parse_time(f"{second}{fraction}Z")
    assert result == (None if expected is None else base + expected)


@pytest.mark.parametrize(
    "text",
    ["2031-02-03T04:05:06.\uff11Z", "2031-02-03T04:05:0\u0666Z", "\uff12031-02-03T04:05:06Z"],
    ids=["fullwidth-fraction", "arabic-indic-second", "fullwidth-year"],
)
def test_time_with_non_ascii_digits_is_unparsable(text: str) -> None:
    assert parse_time(text) is None


# Falco-shaped times with every character possibly swapped for a look-alike.
_TIME_CHARS = "0123456789-:.TtZz +\u0666\uff11x"


@st.composite
def _time_like(draw: st.DrawFn) -> str:
    text = list(
        draw(
            st.sampled_from(
                [
                    "2024-05-01T12:00:05.478445995Z",
                    "2023-02-28T23:59:60Z",
                    "2024-02-29T00:00:00.1Z",
                    "1999-12-31t23:59:59.123456789z",
                    "2024-05-01 12:00:05.4Z",
                    "2024-05-01T12:00:05+02:00",
                    "2023-02-28T23:59:61.5Z",
                    "2024-05-01T24:00:00Z",
                    "2024-05-01T23:60:00.0Z",
                    "2023-02-29T00:00:00Z",
                ]
            )
        )
    )
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        char = draw(st.sampled_from(_TIME_CHARS))
        action = draw(st.sampled_from(["replace", "insert", "delete"]))
        if action == "insert" or not text:
            text.insert(at, char)
        elif action == "replace":
            text[min(at, len(text) - 1)] = char
        else:
            del text[min(at, len(text) - 1)]
    return "".join(text)


@settings(max_examples=2000, deadline=None)
@given(texts=st.lists(_time_like(), min_size=1, max_size=4))
def test_time_fast_path_agrees_with_the_full_pattern(texts: list[str]) -> None:
    # The per-minute cache is shared: earlier texts of the list warm it for later ones.
    for text in texts:
        assert parse_time(text) == _parse_time_slow(text), text


def test_time_with_more_than_nine_fractional_digits_is_unparsable() -> None:
    assert parse_time("2023-05-25T13:44:05.4784459951Z") is None


@pytest.mark.parametrize(
    "text",
    [
        "2023-05-25T15:44:05.478445995+02:00",
        "2023-05-25T08:44:05.478445995-05:00",
        "2023-05-25T13:44:05.478445995+00:00",
        "2023-05-25T13:14:05.478445995-00:30",
        "2023-05-25T13:44:05.478445995z",
    ],
)
def test_time_offsets_are_converted_to_utc(text: str) -> None:
    assert parse_time(text) == 1685022245478445995


@pytest.mark.parametrize(
    "text",
    [
        None,
        1685022245,
        "",
        "yesterday",
        "2023-05-25",
        "2023-05-25T13:44:05",  # no zone
        "2023-05-25T13:44Z",
        "2023-05-25T25:44:05Z",
        "2023-13-25T13:44:05Z",
        "2023-05-25T13:44:05.Z",
    ],
)
def test_time_that_is_not_rfc3339_is_unparsable(text: object) -> None:
    assert parse_time(text) is None


@pytest.mark.parametrize("day", ["2025-02-30", "2025-02-29", "2025-05-32", "2025-04-31"])
def test_time_with_impossible_calendar_date_is_unparsable(day: str) -> None:
    assert parse_time(f"{day}T10:00:00Z") is None


def test_event_time_comes_from_time_when_it_parses() -> None:
    event = _event(
        time="2023-05-25T13:44:05.478445995Z", output_fields={"evt.time": 5, "evt.time.iso8601": 7}
    )
    assert event.time_ns == 1685022245478445995


@pytest.mark.parametrize("time", [None, "not a time", "", 12, "2023-05-25T13:44:05"])
def test_missing_or_unparsable_time_falls_back_to_evt_time(time: object) -> None:
    raw: dict[str, Any] = {"output_fields": {"evt.time": 1685022245478445995}}
    if time is not None:
        raw["time"] = time
    event = _event(**raw)
    assert event.time_ns == 1685022245478445995
    assert type(event.time_ns) is int


def test_evt_time_is_preferred_to_evt_time_iso8601() -> None:
    event = _event(output_fields={"evt.time": 2_000, "evt.time.iso8601": 1_000})
    assert event.time_ns == 2_000


@pytest.mark.parametrize("evt_time", [None, "absent"])
def test_time_falls_back_to_evt_time_iso8601_without_evt_time(evt_time: object) -> None:
    fields: dict[str, Any] = {"evt.time.iso8601": 1783710627228348323}
    if evt_time is None:
        fields["evt.time"] = None
    event = _event(time="garbage", output_fields=fields)
    assert event.time_ns == 1783710627228348323


def test_container_plugin_payload_uses_its_time_not_evt_time_iso8601() -> None:
    example = _examples()[1]
    assert "evt.time.iso8601" in example["output_fields"]
    event = event_from_dict(example, 0)
    assert event.time_ns == 1783710627228348323


# -- invalid events ------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"{", b"not json", b'{"rule": "x",}', b"NaN", b"\xff\xfe"])
def test_bytes_that_are_not_json_raise_event_error(data: bytes) -> None:
    with pytest.raises(EventError):
        event_from_bytes(data, 0)


@pytest.mark.parametrize(
    "data", [b"[]", b'[{"rule": "x", "time": "2023-05-25T13:44:05Z"}]', b'"x"', b"42", b"null"]
)
def test_json_that_is_not_an_object_raises_event_error(data: bytes) -> None:
    with pytest.raises(EventError):
        event_from_bytes(data, 0)


@pytest.mark.parametrize("rule", ["absent", None, 42, ["a"]])
def test_event_without_rule_raises_event_error(rule: object) -> None:
    raw: dict[str, Any] = {"time": "2023-05-25T13:44:05Z"}
    if rule != "absent":
        raw["rule"] = rule
    with pytest.raises(EventError):
        event_from_dict(raw, 0)


@pytest.mark.parametrize(
    "raw",
    [
        {"rule": "r"},
        {"rule": "r", "time": "garbage"},
        {"rule": "r", "time": None, "output_fields": {}},
        {"rule": "r", "output_fields": {"evt.time": None, "evt.time.iso8601": None}},
        {"rule": "r", "output_fields": {"evt.time": "soon"}},
        {"rule": "r", "output_fields": None},
        {"rule": "r", "time": "garbage", "output_fields": "evt.time=5"},
    ],
)
def test_event_without_usable_time_raises_event_error(raw: dict[str, Any]) -> None:
    with pytest.raises(EventError):
        event_from_dict(raw, 0)


@pytest.mark.parametrize("key", ["evt.time", "evt.time.iso8601"])
def test_evt_time_string_of_digit_like_characters_raises_event_error(key: str) -> None:
    with pytest.raises(EventError):
        event_from_dict({"rule": "r", "output_fields": {key: "\u00b2"}}, 0)


def test_event_from_bytes_accepts_a_line_with_its_newline() -> None:
    event = event_from_bytes(b'{"rule": "r", "time": "2023-05-25T13:44:05Z"}\n', 3)
    assert event.rule == "r"
    assert event.seq == 3
    assert event.time_ns == BASE_S * NS


# -- priority ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("Emergency", "Emergency"),
        ("ALERT", "Alert"),
        ("critical", "Critical"),
        ("Error", "Error"),
        ("WARNING", "Warning"),
        ("warning", "Warning"),
        ("notice", "Notice"),
        ("Informational", "Informational"),
        ("info", "Informational"),
        ("INFO", "Informational"),
        ("Info", "Informational"),
        ("debug", "Debug"),
    ],
)
def test_priority_is_parsed_case_insensitively_with_info(text: str, canonical: str) -> None:
    event = _event(time="2023-05-25T13:44:05Z", priority=text)
    assert event.priority == canonical
    assert canonical_priority(text) == canonical
    assert event.priority_rank == priority_rank(canonical)


def test_priorities_rank_from_emergency_down_to_debug() -> None:
    order = [
        "Emergency",
        "Alert",
        "Critical",
        "Error",
        "Warning",
        "Notice",
        "Informational",
        "Debug",
    ]
    ranks = [priority_rank(name) for name in order]
    assert ranks == sorted(ranks, reverse=True)
    assert len(set(ranks)) == 8
    assert set(PRIORITY_NAMES) == set(order)


@pytest.mark.parametrize("value", ["Loud", "", None, 3])
def test_unknown_priority_has_no_rank_and_the_event_stays_valid(value: object) -> None:
    event = _event(time="2023-05-25T13:44:05Z", priority=value)
    assert event.priority_rank is None


# -- fields --------------------------------------------------------------------------------


def test_bracketed_output_field_is_looked_up_by_its_exact_name() -> None:
    event = event_from_dict(_examples()[1], 0)
    assert event.get("proc.aname[2]") == "systemd"
    assert event.get("proc.aname[3]") is None


def test_bracketed_lookup_falls_back_to_falcosidekick_underscore_spelling() -> None:
    event = event_from_dict(_examples()[3], 0)
    assert event.get("proc.aname[2]") == "containerd"


def test_null_and_missing_output_fields_read_as_none() -> None:
    event = event_from_dict(_examples()[1], 0)
    assert event.get("k8s.ns.name") is None
    assert event.get("no.such.field") is None
    assert event.get("proc.aname[9]") is None


def test_integer_output_fields_keep_their_type() -> None:
    event = event_from_dict(_examples()[0], 0)
    assert event.get("proc.tty") == 34816
    assert event.get("user.loginuid") == -1


def test_top_level_names_read_the_payload_not_output_fields() -> None:
    event = _event(
        time="2023-05-25T13:44:05Z",
        hostname="node-1",
        source="syscall",
        output="text",
        priority="Notice",
        tags=["a", "b"],
        uuid="u-1",
        output_fields={"hostname": "wrong", "rule": "wrong"},
    )
    assert event.get("rule") == "Some rule"
    assert event.get("hostname") == "node-1"
    assert event.get("source") == "syscall"
    assert event.get("output") == "text"
    assert event.get("tags") == ["a", "b"]
    assert event.get("uuid") == "u-1"
    assert event.get("time") == "2023-05-25T13:44:05Z"


def test_missing_output_fields_mean_no_fields() -> None:
    event = _event(time="2023-05-25T13:44:05Z")
    assert event.get("container.id") is None
    assert event.tags == []


# -- identity ------------------------------------------------------------------------------


def test_identity_is_the_falcosidekick_uuid() -> None:
    event = event_from_dict(_examples()[3], 0)
    assert event.identity == "5b1f3ac2-8c1e-4b3e-9a57-1c2d3e4f5a6b"


def test_identity_without_uuid_is_a_stable_hash() -> None:
    raw = _examples()[0]
    first = event_from_dict(raw, 0).identity
    again = event_from_bytes(orjson.dumps(raw), 99).identity
    assert first == again
    assert first
    assert first != raw.get("uuid")


def test_identity_hash_ignores_arrival_fields_and_priority() -> None:
    base = {"rule": "r", "time": "2023-05-25T13:44:05Z", "hostname": "h", "output": "o"}
    one = event_from_dict({**base, "output_fields": {"a": 1}, "priority": "Notice"}, 0)
    two = event_from_dict({**base, "output_fields": {"a": 2}, "priority": "Error"}, 5)
    assert one.identity == two.identity


@pytest.mark.parametrize(
    "change",
    [
        {"time": "2023-05-25T13:44:06Z"},
        {"rule": "other"},
        {"hostname": "other"},
        {"output": "other"},
    ],
)
def test_identity_hash_changes_with_time_rule_hostname_or_output(change: dict[str, str]) -> None:
    base = {"rule": "r", "time": "2023-05-25T13:44:05Z", "hostname": "h", "output": "o"}
    assert event_from_dict(base, 0).identity != event_from_dict({**base, **change}, 0).identity


# -- real payloads -------------------------------------------------------------------------


def test_every_example_payload_parses() -> None:
    lines = [line for line in EXAMPLES.read_bytes().splitlines() if line.strip()]
    assert len(lines) == 5
    times = [event_from_bytes(line, seq).time_ns for seq, line in enumerate(lines)]
    assert times == [
        1685022245478445995,
        1783710627228348323,
        1747563495901045861,
        1747563500901045860,
        1747563600000000000,
    ]


def test_example_payloads_expose_rule_priority_and_fields() -> None:
    events = [event_from_dict(raw, seq) for seq, raw in enumerate(_examples())]
    assert [e.rule for e in events] == [
        "Terminal shell in container",
        "Read sensitive file untrusted",
        "Contact K8S API Server From Container",
        "Contact K8S API Server From Container",
        "Falco internal: metrics snapshot",
    ]
    assert [e.priority for e in events] == [
        "Critical",
        "Warning",
        "Notice",
        "Notice",
        "Informational",
    ]
    assert events[0].get("container.id") == "ee97d9c4186f"
    assert events[4].get("source") == "internal"
    assert "mitre_execution" in events[0].tags
