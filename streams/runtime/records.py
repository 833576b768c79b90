"""Records on the internal `<app>-correlate` topic, and the stage that produces them.

The ingest stage decodes each Falco message, validates it, matches it against the rules and
sends one record per (correlation, group key) it takes part in, keyed so that every record of a
key lands on the same partition (falcosidekick's messages are unkeyed and round-robin). The
event time travels inside the value (a repartition loses the original timestamp), with the
ingest stage's high-water event time so that partitions which see few matching events still
advance their watermark as the whole stream does.
"""

from __future__ import annotations

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
    "entry_key",
    "meta_key",
    "tick_value",
]

TICK_KEY = b"\x00tick"
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


class Ingestor:
    """Decode, validate, match and re-key one source message. Pure: no Kafka here."""

    def __init__(self, ruleset: Ruleset, lateness_ns: int) -> None:
        self.lateness_ns = lateness_ns
        self.high_water_ns = -(2**63)
        self._matcher = Engine(ruleset, lateness_ns=lateness_ns)

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
        if event.time_ns < self.high_water_ns - self.lateness_ns:
            return IngestResult(late=True)
        self.high_water_ns = max(self.high_water_ns, event.time_ns)
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
                "hw": self.high_water_ns,
                "src": [partition, offset],
                "ts": timestamp_ms,
            }
            result.records.append((entry_key(name, key), orjson.dumps(record)))
        return result
