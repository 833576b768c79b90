"""The ingest stage, pure: a batch of Falco messages in, correlate batches and dead letters out.

Decode (orjson), validate, take the event time, refuse events dated too far in the future, match
the rules (indexed by Falco rule name) and group the matches by destination correlate partition:
one `CorrelateBatch` per destination partition per input batch (split only when it would exceed
`max_record_bytes`). No Kafka here; `streams/runtime/ingest_service.py` drives it with a
confluent-kafka consumer and producer.

With shadow rules (`app.shadow_rules`) a second matcher runs on every valid event; its matches
travel in the same records, apart from the live ones (`EventRecord.shadow_matches`), routed by the
same function of (correlation, key), so an event matched by both sets is carried once. A failure
of the shadow matcher only loses that event's shadow matches (counted in `shadow_errors`, logged
once): the live matches are taken first and never depend on it. Without shadow rules nothing of
this runs.

Lateness is not decided here: only the correlate partition knows the merged watermark of every
source partition, and an event late for this consumer's partitions may not be late for the
stream as a whole.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from streams.core.engine import KeyTuple, StepMatch
from streams.core.events import MAX_EVENT_BYTES, Event, event_from_bytes, too_far_ahead
from streams.core.matcher import Matcher
from streams.core.rules import Ruleset
from streams.errors import EventError
from streams.runtime.records import (
    CorrelateBatch,
    EventRecord,
    MatchRef,
    encode_batch,
)
from streams.runtime.routing import Router

__all__ = ["DeadLetter", "IngestBatch", "Ingestor", "SourceMessage", "encode_records"]

log = logging.getLogger("streams.worker.ingest")


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
    shadow_matched: int = 0  # events that matched a shadow rule
    shadow_errors: int = 0  # events whose shadow matching failed (their live matches stand)


class Ingestor:
    """Decode, validate, match and route one batch of source messages."""

    def __init__(
        self,
        ruleset: Ruleset,
        correlate_partitions: int,
        *,
        max_future_skew_ns: int | None = None,
        max_event_bytes: int = MAX_EVENT_BYTES,
        shadow: Ruleset | None = None,
    ) -> None:
        self.correlate_partitions = correlate_partitions
        self.max_future_skew_ns = max_future_skew_ns
        self.max_event_bytes = max_event_bytes
        self._matcher = Matcher(ruleset)
        self._router = Router(ruleset.correlations, correlate_partitions)
        self._shadow: Matcher | None = None
        self._shadow_router: Router | None = None
        if shadow is not None:
            self.reload_shadow(shadow)
        self._shadow_failed = False  # the shadow matcher's first failure was logged

    @property
    def ruleset(self) -> Ruleset:
        return self._matcher.ruleset

    @property
    def shadow_ruleset(self) -> Ruleset | None:
        return None if self._shadow is None else self._shadow.ruleset

    def reload(self, ruleset: Ruleset) -> None:
        self._matcher = Matcher(ruleset)
        self._router = Router(ruleset.correlations, self.correlate_partitions)

    def reload_shadow(self, ruleset: Ruleset) -> None:
        """New shadow rules (only when the worker was started with `app.shadow_rules`)."""
        self._shadow = Matcher(ruleset)
        self._shadow_router = Router(
            ruleset.correlations, self.correlate_partitions, pin_chains=True
        )
        self._shadow_failed = False

    def _match_shadow(self, shadow: Matcher, event: Event, out: IngestBatch) -> list[StepMatch]:
        try:
            return shadow.match(event)
        except Exception as exc:  # a defect of the shadow rules must not touch the live ones
            out.shadow_errors += 1
            if not self._shadow_failed:
                self._shadow_failed = True
                log.error(
                    "shadow rules: matching failed (%r); events whose shadow matching fails "
                    "are not correlated by the shadow rules (counted in "
                    "fc_shadow_errors_total, logged once per ruleset); the live rules go on",
                    exc,
                )
            return []

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
        shadow = self._shadow
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
            if shadow is None:
                if matches:
                    out.matched += 1
                    self._route(event, message, matches, len(value), out)
                continue
            shadow_matches = self._match_shadow(shadow, event, out)
            if matches:
                out.matched += 1
            if shadow_matches:
                out.shadow_matched += 1
            if matches or shadow_matches:
                self._route(event, message, matches, len(value), out, shadow_matches=shadow_matches)
        return out

    def _route(
        self,
        event: Event,
        message: SourceMessage,
        matches: list[StepMatch],
        size: int,
        out: IngestBatch,
        *,
        shadow_matches: list[StepMatch] | None = None,
    ) -> None:
        """Add the event to the record of each correlate partition one of its keys lives on.

        Shadow matches go by the same function of (correlation, key) as live ones: an event
        whose live and shadow keys land on one partition is carried there once."""
        by_destination = self._destinations(self._matcher, self._router, matches)
        shadow_by: dict[int, list[MatchRef]] = {}
        if shadow_matches:
            assert self._shadow is not None
            assert self._shadow_router is not None
            shadow_by = self._destinations(self._shadow, self._shadow_router, shadow_matches)
            for destination in shadow_by:
                by_destination.setdefault(destination, [])
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
                    shadow_matches=tuple(shadow_by.get(destination, ())),
                )
            )
            out.sizes.setdefault(destination, []).append(size)

    @staticmethod
    def _destinations(
        matcher: Matcher, router: Router, matches: list[StepMatch]
    ) -> dict[int, list[MatchRef]]:
        correlations = matcher.correlations
        grouped: dict[tuple[int, KeyTuple], list[int]] = {}
        for ci, si, key in matches:
            grouped.setdefault((ci, key), []).append(si)
        by_destination: dict[int, list[MatchRef]] = {}
        for (ci, key), steps in grouped.items():
            name = correlations[ci].name
            destination = router.destination(name, key)
            by_destination.setdefault(destination, []).append(MatchRef(name, key, tuple(steps)))
        return by_destination


def encode_records(
    batch: IngestBatch,
    *,
    digest: str,
    source_partitions: int,
    progress: Mapping[int, int],
    wall_ns: int,
    max_record_bytes: int,
    all_partitions: Sequence[int] = (),
    shadow_digest: str = "",
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
                (
                    destination,
                    _encode(
                        digest,
                        source_partitions,
                        reported,
                        wall_ns,
                        chunk,
                        shadow_digest=shadow_digest,
                    ),
                    len(chunk),
                )
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
    *,
    shadow_digest: str = "",
) -> bytes:
    return encode_batch(
        CorrelateBatch(
            digest=digest,
            source_partitions=source_partitions,
            progress=progress,
            wall_ns=wall_ns,
            events=tuple(events),
            shadow_digest=shadow_digest,
        )
    )
