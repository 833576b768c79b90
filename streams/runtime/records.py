"""Records on the internal `<app>-correlate` topic, and the stage that produces them.

The ingest stage decodes each Falco message, validates it, matches it against the rules and
sends one record per (correlation, group key) it takes part in, keyed so that every record of a
key lands on the same partition (falcosidekick's messages are unkeyed and round-robin). The
event time travels inside the value (a repartition loses the original timestamp), with the
ingest stage's high-water event time so that partitions which see few matching events still
advance their watermark as the whole stream does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.core.engine import Engine, KeyTuple
from streams.core.events import event_from_bytes
from streams.core.rules import Ruleset
from streams.errors import EventError

__all__ = [
    "TICK_KEY",
    "IngestResult",
    "Ingestor",
    "SourceProgress",
    "entry_key",
    "meta_key",
    "tick_value",
]

TICK_KEY = b"\x00tick"
_NEG_INF = -(2**63)
_SEPARATOR = b"\x1f"


def entry_key(correlation: str, key: KeyTuple) -> bytes:
    """Kafka key of a (correlation, group key): also the state table's key, so both agree."""
    return correlation.encode() + _SEPARATOR + orjson.dumps(list(key))


def meta_key(partition: int) -> bytes:
    return b"\x00meta:%d" % partition


def tick_value(wall_ns: int, high_water_ns: int) -> bytes:
    return orjson.dumps({"tick": wall_ns, "hw": high_water_ns})


@dataclass
class IngestResult:
    records: list[tuple[bytes, bytes]] = field(default_factory=list)
    invalid: str | None = None  # the reason, when the message goes to the dead-letter topic
    late: bool = False


class SourceProgress:
    """Event-time progress of the source partitions, as a stream processor's watermark needs.

    The high-water mark is the minimum over the source partitions of the highest event time each
    delivered, so a consumer that reads one partition ahead of another (a backlog after downtime,
    uneven fetches) does not make the slower partitions' events late. A partition that delivered
    nothing for `idle_after_ns` of wall time stops holding the mark back, and one that is
    assigned but has delivered nothing holds it at the start for at most that long.
    """

    def __init__(self, idle_after_ns: int, wall_clock: Callable[[], int]) -> None:
        self.idle_after_ns = idle_after_ns
        self.wall_clock = wall_clock
        self._max: dict[int, int] = {}
        self._last_wall: dict[int, int] = {}
        self._assigned: set[int] = set()
        self._assigned_wall = wall_clock()

    def assign(self, partitions: set[int]) -> None:
        self._assigned = set(partitions)
        self._assigned_wall = self.wall_clock()
        for gone in set(self._max) - self._assigned:
            self._max.pop(gone, None)
            self._last_wall.pop(gone, None)

    def observe(self, partition: int, time_ns: int) -> None:
        if time_ns > self._max.get(partition, _NEG_INF):
            self._max[partition] = time_ns
        self._last_wall[partition] = self.wall_clock()

    def high_water_ns(self) -> int:
        now = self.wall_clock()
        horizon = now - self.idle_after_ns
        lowest = None
        for partition in self._assigned | set(self._max):
            if partition not in self._max:
                if self._assigned_wall > horizon:
                    return _NEG_INF  # not heard from yet: wait for it (or its idleness)
                continue
            if self._last_wall[partition] < horizon:
                continue  # idle: does not hold the mark back
            value = self._max[partition]
            lowest = value if lowest is None else min(lowest, value)
        if lowest is None:  # everything idle: the stream as a whole
            return max(self._max.values(), default=_NEG_INF)
        return lowest


class Ingestor:
    """Decode, validate, match and re-key one source message. Pure: no Kafka here."""

    def __init__(
        self,
        ruleset: Ruleset,
        lateness_ns: int,
        *,
        wall_clock: Callable[[], int] = time.time_ns,
        idle_after_ns: int | None = None,
    ) -> None:
        self.lateness_ns = lateness_ns
        self.progress = SourceProgress(
            lateness_ns if idle_after_ns is None else idle_after_ns, wall_clock
        )
        self._matcher = Engine(ruleset, lateness_ns=lateness_ns)

    @property
    def high_water_ns(self) -> int:
        return self.progress.high_water_ns()

    @property
    def ruleset(self) -> Ruleset:
        return self._matcher.ruleset

    def reload(self, ruleset: Ruleset) -> None:
        self._matcher = Engine(ruleset, lateness_ns=self.lateness_ns)

    def ingest(
        self, value: bytes | None, partition: int, offset: int, timestamp_ms: float
    ) -> IngestResult:
        if value is None:
            return IngestResult(invalid="empty message (no value)")
        try:
            event = event_from_bytes(value, offset)
        except EventError as exc:
            return IngestResult(invalid=str(exc))
        self.progress.observe(partition, event.time_ns)
        high_water = self.progress.high_water_ns()
        if event.time_ns < high_water - self.lateness_ns:
            return IngestResult(late=True)
        matches = self._matcher.match(event)
        if not matches:
            return IngestResult()
        grouped: dict[tuple[int, KeyTuple], list[int]] = {}
        for ci, si, key in matches:
            grouped.setdefault((ci, key), []).append(si)
        correlations = self._matcher.correlations
        digest = self._matcher.ruleset.digest
        result = IngestResult()
        for (ci, key), steps in grouped.items():
            name = correlations[ci].name
            record: dict[str, Any] = {
                "e": event.raw,
                "t": event.time_ns,
                "c": name,
                "k": list(key),
                "s": steps,
                "d": digest,
                "hw": high_water,
                "src": [partition, offset],
                "ts": timestamp_ms,
            }
            result.records.append((entry_key(name, key), orjson.dumps(record)))
        return result
