"""The ingest stage, pure: a batch of Falco messages in, correlate batches and dead letters out.

Decode (orjson), validate, take the event time, refuse events dated too far in the future, match
the rules (indexed by Falco rule name) and group the matches by destination correlate partition:
one `CorrelateBatch` per destination partition per input batch (split only when it would exceed
`max_record_bytes`). No Kafka here; `streams/runtime/ingest_service.py` drives it with a
confluent-kafka consumer and producer.

Lateness is not decided here: only the correlate partition knows the merged watermark of every
source partition, and an event late for this consumer's partitions may not be late for the
stream as a whole.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from streams.core.engine import Engine, KeyTuple, StepMatch
from streams.core.events import MAX_EVENT_BYTES, Event, event_from_bytes, too_far_ahead
from streams.core.rules import Ruleset
from streams.errors import EventError
from streams.runtime.records import (
    CorrelateBatch,
    EventRecord,
    MatchRef,
    destination_partition,
    encode_batch,
)

__all__ = ["DeadLetter", "IngestBatch", "Ingestor", "SourceMessage", "encode_records"]


@dataclass(frozen=True, slots=True)
class SourceMessage:
    """What the ingest stage needs of a Kafka message (a confluent-kafka Message, copied)."""

    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    timestamp_ms: float | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    message: SourceMessage
    reason: str


@dataclass
class IngestBatch:
    """The outcome of one input batch."""

    records: dict[int, list[EventRecord]] = field(default_factory=dict)
    sizes: dict[int, list[int]] = field(default_factory=dict)  # source bytes of each event
    dead_letters: list[DeadLetter] = field(default_factory=list)
    observed: list[tuple[int, int]] = field(default_factory=list)  # (source partition, time)
    consumed: Counter[int] = field(default_factory=Counter)  # messages per source partition
    next_offsets: dict[int, int] = field(default_factory=dict)  # source partition -> offset + 1
    future: Counter[str] = field(default_factory=Counter)  # too far ahead, per hostname
    matched: int = 0


class Ingestor:
    """Decode, validate, match and route one batch of source messages."""

    def __init__(
        self,
        ruleset: Ruleset,
        correlate_partitions: int,
        *,
        max_future_skew_ns: int | None = None,
        max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        self.correlate_partitions = correlate_partitions
        self.max_future_skew_ns = max_future_skew_ns
        self.max_event_bytes = max_event_bytes
        self._matcher = Engine(ruleset)
        self._routes: dict[tuple[str, KeyTuple], int] = {}

    @property
    def ruleset(self) -> Ruleset:
        return self._matcher.ruleset

    def reload(self, ruleset: Ruleset) -> None:
        self._matcher = Engine(ruleset)

    def process(
        self,
        messages: Iterable[SourceMessage],
        wall_ns: int,
        seeds: Mapping[int, int] | None = None,
    ) -> IngestBatch:
        """`seeds` (source partition -> offset): messages processed before a restart or a
        rebalance, re-read only so that their event time seeds the partition's progress; they
        are neither forwarded nor dead-lettered again."""
        out = IngestBatch()
        matcher = self._matcher
        horizon = None if self.max_future_skew_ns is None else wall_ns + self.max_future_skew_ns
        for message in messages:
            partition = message.partition
            out.next_offsets[partition] = message.offset + 1
            value = message.value
            if seeds and seeds.get(partition) == message.offset:
                try:
                    seed = event_from_bytes(value or b"", message.offset)
                except (EventError, RecursionError, OverflowError, TypeError, ValueError):
                    continue
                if horizon is None or seed.time_ns <= horizon:
                    out.observed.append((partition, seed.time_ns))
                continue
            out.consumed[partition] += 1
            if value is None:
                out.dead_letters.append(DeadLetter(message, "empty message (no value)"))
                continue
            try:
                event = event_from_bytes(value, message.offset, max_bytes=self.max_event_bytes)
            except EventError as exc:
                out.dead_letters.append(DeadLetter(message, str(exc)))
                continue
            except (RecursionError, OverflowError, TypeError, ValueError) as exc:
                # defensive: the event reader answers bad input with EventError; anything else
                # is dead-lettered with its type rather than stopping the stream
                out.dead_letters.append(DeadLetter(message, f"unreadable event: {exc!r:.200}"))
                continue
            if horizon is not None and event.time_ns > horizon:
                assert self.max_future_skew_ns is not None
                future = too_far_ahead(event, wall_ns, self.max_future_skew_ns)
                if future is not None:
                    out.dead_letters.append(DeadLetter(message, future.reason))
                    out.future[future.hostname] += 1
                    continue
            out.observed.append((partition, event.time_ns))
            matches = matcher.match(event)
            if matches:
                out.matched += 1
                self._route(event, message, matches, len(value), out)
        return out

    def _route(
        self,
        event: Event,
        message: SourceMessage,
        matches: list[StepMatch],
        size: int,
        out: IngestBatch,
    ) -> None:
        """Add the event to the record of each correlate partition one of its keys lives on."""
        correlations = self._matcher.correlations
        grouped: dict[tuple[int, KeyTuple], list[int]] = {}
        for ci, si, key in matches:
            grouped.setdefault((ci, key), []).append(si)
        by_destination: dict[int, list[MatchRef]] = {}
        routes = self._routes
        for (ci, key), steps in grouped.items():
            name = correlations[ci].name
            destination = routes.get((name, key))
            if destination is None:
                destination = destination_partition(name, key, self.correlate_partitions)
                if len(routes) > 100_000:
                    routes.clear()
                routes[(name, key)] = destination
            by_destination.setdefault(destination, []).append(MatchRef(name, key, tuple(steps)))
        for destination, refs in by_destination.items():
            out.records.setdefault(destination, []).append(
                EventRecord(
                    payload=event.raw,
                    time_ns=event.time_ns,
                    source_partition=message.partition,
                    source_offset=message.offset,
                    produced_ms=message.timestamp_ms,
                    matches=tuple(refs),
                    payload_json=message.value,
                )
            )
            out.sizes.setdefault(destination, []).append(size)


def encode_records(
    batch: IngestBatch,
    *,
    digest: str,
    source_partitions: int,
    progress: Mapping[int, int],
    wall_ns: int,
    max_record_bytes: int,
    all_partitions: Sequence[int] = (),
) -> list[tuple[int, bytes, int]]:
    """(destination partition, record, events) for a batch: one record per destination, split
    when the events' source bytes exceed `max_record_bytes`; `all_partitions` also get a tick
    (a record without events) when they have no events, so every partition learns the progress."""
    out: list[tuple[int, bytes, int]] = []
    for destination, events in batch.records.items():
        chunks: list[list[EventRecord]] = [[]]
        size = 0
        for event, approx in zip(events, batch.sizes[destination], strict=True):
            if chunks[-1] and size + approx > max_record_bytes:
                chunks.append([])
                size = 0
            chunks[-1].append(event)
            size += approx
        for number, chunk in enumerate(chunks, 1):
            # Only the last record of a destination reports the batch's progress: a reader
            # applies progress after a record's events, and the progress covers the whole batch.
            reported = progress if number == len(chunks) else {}
            out.append(
                (destination, _encode(digest, source_partitions, reported, wall_ns, chunk),
                 len(chunk))
            )
    for destination in all_partitions:
        if destination not in batch.records:
            out.append((destination, _encode(digest, source_partitions, progress, wall_ns, []), 0))
    return out


def _encode(
    digest: str,
    source_partitions: int,
    progress: Mapping[int, int],
    wall_ns: int,
    events: list[EventRecord],
) -> bytes:
    return encode_batch(
        CorrelateBatch(
            digest=digest,
            source_partitions=source_partitions,
            progress=progress,
            wall_ns=wall_ns,
            events=tuple(events),
        )
    )
