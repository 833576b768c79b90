"""Correlate records (codec, versions) and the health checks (watchdog, ownership), pure."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import pytest

from streams.runtime.health import StallWatchdog, describe_tasks, unowned_partitions
from streams.runtime.records import (
    RECORD_VERSION,
    TICK_KEY,
    CorrelateBatch,
    EventRecord,
    MatchRef,
    RecordError,
    decode_batch,
    destination_partition,
    encode_batch,
    entry_key,
)

S = 1_000_000_000


def _batch() -> CorrelateBatch:
    return CorrelateBatch(
        digest="abc",
        source_partitions=3,
        progress={0: 10, 2: 30},
        wall_ns=99,
        events=(
            EventRecord(
                payload={"rule": "Shell", "output_fields": {"container.id": "c1"}},
                time_ns=5,
                source_partition=2,
                source_offset=41,
                produced_ms=1700.5,
                matches=(MatchRef("chain", ("c1",), (0,)), MatchRef("burst", ("c1", None), (0, 1))),
            ),
        ),
    )


def test_a_batch_survives_the_wire_unchanged() -> None:
    batch = _batch()
    assert decode_batch(b"\x00batch", encode_batch(batch)) == batch
    assert orjson.loads(encode_batch(batch))["v"] == RECORD_VERSION


def test_a_tick_is_a_batch_without_events() -> None:
    tick = CorrelateBatch(digest="abc", source_partitions=1, progress={0: 7}, wall_ns=1)
    decoded = decode_batch(None, encode_batch(tick))
    assert decoded.is_tick
    assert decoded.progress == {0: 7}


def test_records_of_the_previous_version_are_read() -> None:
    """0.1 wrote one record per (correlation, key) and ticks keyed \\x00tick: a rolling
    upgrade reads what it left in the topic."""
    old = {
        "e": {"rule": "Shell"},
        "t": 5,
        "c": "chain",
        "k": ["c1"],
        "s": [0],
        "d": "abc",
        "hw": 3,
        "src": [1, 9],
        "ts": 12.0,
    }
    batch = decode_batch(b'chain\x1f["c1"]', orjson.dumps(old))
    assert batch.version == 0
    assert batch.legacy_high_water == 3
    [event] = batch.events
    assert (event.source_partition, event.source_offset, event.time_ns) == (1, 9, 5)
    assert event.matches == (MatchRef("chain", ("c1",), (0,)),)
    tick = decode_batch(TICK_KEY, orjson.dumps({"tick": 100, "hw": 50}))
    assert tick.is_tick
    assert tick.legacy_high_water == 50


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "without a value"),
        (b"{", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"v": 2, "d": "x"}', "newer than this worker reads"),
        (b'{"v": 0}', "invalid version"),
        (b'{"v": 1, "d": "x"}', "malformed"),
        (b'{"v": 1, "d": "x", "n": 1, "p": [[0]], "w": 0, "e": []}', "malformed"),
    ],
)
def test_unreadable_records_raise_a_record_error(value: bytes | None, reason: str) -> None:
    with pytest.raises(RecordError, match=reason):
        decode_batch(None, value)


def test_destination_partitions_are_stable_and_spread() -> None:
    keys = [(f"c{i}",) for i in range(300)]
    spread = {destination_partition("chain", key, 6) for key in keys}
    assert spread == set(range(6))
    # fixed forever: the partition of a key's state must not change between releases
    assert destination_partition("chain", ("c1",), 6) == 4
    assert entry_key("chain", ("c1",)) == b'chain\x1f["c1"]'


@dataclass
class _Health:
    lag: int
    position: int
    progressed_wall_ns: int
    checked_wall_ns: int


def test_the_watchdog_reports_lag_without_progress_for_the_stall_timeout() -> None:
    watchdog = StallWatchdog(stall_timeout_ns=60 * S, fresh_within_ns=5 * S)
    parts = {
        "falco/0": _Health(lag=10, position=5, progressed_wall_ns=0, checked_wall_ns=61 * S),
        "falco/1": _Health(lag=0, position=5, progressed_wall_ns=0, checked_wall_ns=61 * S),
        "falco/2": _Health(lag=10, position=5, progressed_wall_ns=30 * S, checked_wall_ns=61 * S),
        # lag not fresh (the broker does not answer): unreachable, not stalled
        "falco/3": _Health(lag=10, position=5, progressed_wall_ns=0, checked_wall_ns=1 * S),
    }
    watchdog.check(parts, 61 * S, lambda: "context")
    assert watchdog.stalled == ["falco/0"]
    parts["falco/0"].lag = 0
    watchdog.check(parts, 62 * S, lambda: "context")
    assert watchdog.stalled == []


def test_unowned_partitions_are_named() -> None:
    members = [[("falco", 0), ("x-correlate", 1)], [("falco", 2)]]
    assert unowned_partitions({"falco": 3, "x-correlate": 2}, members) == [
        "falco/1",
        "x-correlate/0",
    ]


def test_the_stall_report_names_what_each_stage_waits_on() -> None:
    text = describe_tasks({"ingest": "flush (broker acknowledgement of the batch)"})
    assert "ingest: flush" in text
    assert "thread" in text
