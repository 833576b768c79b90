"""Records on the internal `<app>-correlate` topic: typed, versioned, one codec.

The ingest stage (streams/runtime/ingest.py) sends one `CorrelateBatch` per destination partition
per batch of Falco messages it read, not one record per event: Faust's cost is per Kafka message,
so the hot path carries hundreds of events per message. A batch carries, for each event, the
payload, its time in nanoseconds (a repartition keeps the send time, not the event time), its
source partition/offset (redelivery de-duplication), the source message's produce time (latency
metric) and the (correlation, group key, steps) it matched at ingest. It also carries the sender's
event-time progress per source partition (see `streams/runtime/progress.py`): each correlate
partition takes the minimum over all source partitions as its high-water mark. A batch without
events is a tick: it only reports progress.

Wire format (orjson): `{"v": 1, "d": digest, "n": source partitions, "p": [[partition, time],
...], "w": wall_ns, "e": [[payload, time_ns, src_partition, src_offset, produced_ms,
[[correlation, key, steps], ...]], ...]}`, and with shadow rules (`app.shadow_rules`) also
`"sd": shadow digest, "sm": [[event index, [[correlation, key, steps], ...]], ...]`: the shadow
matches of the events of `e` (an event that matches only shadow rules has no live matches). These
two keys are optional and written only when there are shadow matches, so a record without them is
byte for byte what this version always wrote, and a reader that predates them ignores them (it
correlates the live matches, and an event without live matches is skipped), which is why they did
not need a new version. Readers accept every version up to `RECORD_VERSION`
and the unversioned records of 0.1 (one record per (correlation, key), ticks keyed `\\x00tick`),
so a rolling upgrade reads what the previous version left in the topic; a newer version is
refused with a clear error (and counted) rather than misread.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.core.engine import KeyTuple

__all__ = [
    "BATCH_KEY",
    "RECORD_VERSION",
    "SHADOW_PREFIX",
    "TICK_KEY",
    "CorrelateBatch",
    "EventRecord",
    "MatchRef",
    "RecordError",
    "decode_batch",
    "destination_partition",
    "encode_batch",
    "entry_key",
    "meta_key",
    "shadow_incidents_topic",
]

RECORD_VERSION = 1
BATCH_KEY = b"\x00batch"
TICK_KEY = b"\x00tick"  # version 0 ticks
_SEPARATOR = b"\x1f"
#: Prefix of every state entry of the shadow rules (their entries, held events and meta entry):
#: the same correlation name and key in both sets never share an entry, and a reader that
#: predates shadow rules skips it (keys starting with NUL are not entries for it).
SHADOW_PREFIX = b"\x00shadow" + _SEPARATOR


def shadow_incidents_topic(incidents_topic: str) -> str:
    """Where the incidents of the shadow rules go (never to the notifiers)."""
    return f"{incidents_topic}-shadow"


class RecordError(ValueError):
    """A correlate record this worker cannot read (corrupt, or written by a newer version)."""


def entry_key(correlation: str, key: KeyTuple) -> bytes:
    """The state table's key of a (correlation, group key)."""
    return correlation.encode() + _SEPARATOR + orjson.dumps(list(key))


def destination_partition(correlation: str, key: KeyTuple, partitions: int) -> int:
    """The correlate partition that owns a (correlation, group key): stable across versions.

    CRC-32 of the entry key: every worker and every release agrees, which is what keeps a key's
    state on the partition whose changelog holds it.
    """
    return zlib.crc32(entry_key(correlation, key)) % partitions


def meta_key(partition: int) -> bytes:
    return b"\x00meta:%d" % partition


@dataclass(frozen=True, slots=True)
class MatchRef:
    """One (correlation, group key) an event takes part in, with the steps it matched."""

    correlation: str
    key: KeyTuple
    steps: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class EventRecord:
    payload: dict[str, Any]
    time_ns: int
    source_partition: int
    source_offset: int
    produced_ms: float | None
    matches: tuple[MatchRef, ...]
    # the payload's JSON as read from Kafka (already validated by orjson): written as is
    # instead of encoding `payload` again
    payload_json: bytes | None = field(default=None, compare=False, repr=False)
    # what the event matched in the shadow rules (`app.shadow_rules`), with their own names
    shadow_matches: tuple[MatchRef, ...] = ()


@dataclass(frozen=True, slots=True)
class CorrelateBatch:
    """A batch of matched events for one correlate partition, or (no events) a tick.

    `progress` maps source partitions to event-time progress (nanoseconds) as the sender knows
    them; `source_partitions` is how many partitions the events topic has, so a reader can tell
    when every one of them has reported. `legacy_high_water` is set only for version-0 records,
    which carried one high-water mark instead.
    """

    digest: str
    source_partitions: int
    progress: Mapping[int, int]
    wall_ns: int
    events: tuple[EventRecord, ...] = ()
    version: int = RECORD_VERSION
    legacy_high_water: int | None = field(default=None)
    shadow_digest: str = ""  # the shadow ruleset's digest, when the record has shadow matches

    @property
    def is_tick(self) -> bool:
        return not self.events


def encode_batch(batch: CorrelateBatch) -> bytes:
    data: dict[str, Any] = {
        "v": RECORD_VERSION,
        "d": batch.digest,
        "n": batch.source_partitions,
        "p": [[partition, time_ns] for partition, time_ns in batch.progress.items()],
        "w": batch.wall_ns,
        "e": [_encode_event(event) for event in batch.events],
    }
    if batch.shadow_digest:  # only with shadow rules configured: no cost otherwise
        shadow = [
            [index, _encode_refs(event.shadow_matches)]
            for index, event in enumerate(batch.events)
            if event.shadow_matches
        ]
        if shadow:
            data["sd"] = batch.shadow_digest
            data["sm"] = shadow
    return orjson.dumps(data)


def _encode_refs(refs: tuple[MatchRef, ...]) -> list[Any]:
    return [[m.correlation, list(m.key), list(m.steps)] for m in refs]


def _encode_event(event: EventRecord) -> list[Any]:
    return [
        event.payload if event.payload_json is None else orjson.Fragment(event.payload_json),
        event.time_ns,
        event.source_partition,
        event.source_offset,
        event.produced_ms,
        _encode_refs(event.matches),
    ]


def decode_batch(key: bytes | None, value: bytes | None) -> CorrelateBatch:
    """Read a correlate record of any known version; RecordError when it cannot be read."""
    if value is None:
        raise RecordError("correlate record without a value")
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"correlate record is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RecordError("correlate record is not a JSON object")
    try:
        if "v" in data:
            version = data["v"]
            if not isinstance(version, int) or version < 1:
                raise RecordError(f"correlate record has an invalid version {version!r:.20}")
            if version > RECORD_VERSION:
                raise RecordError(
                    f"correlate record version {version} is newer than this worker reads "
                    f"(up to {RECORD_VERSION}): upgrade every worker of the group"
                )
            return _decode_v1(data)
        return _decode_v0(key, data)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        if isinstance(exc, RecordError):
            raise
        raise RecordError(f"malformed correlate record: {type(exc).__name__}: {exc}") from None


def _decode_refs(refs: Any) -> tuple[MatchRef, ...]:
    return tuple(MatchRef(str(c), tuple(k), tuple(int(s) for s in st)) for c, k, st in refs)


def _decode_v1(data: dict[str, Any]) -> CorrelateBatch:
    events = tuple(
        EventRecord(
            payload=payload,
            time_ns=int(time_ns),
            source_partition=int(partition),
            source_offset=int(offset),
            produced_ms=None if produced is None else float(produced),
            matches=_decode_refs(m),
        )
        for payload, time_ns, partition, offset, produced, m in data["e"]
    )
    shadow = data.get("sm")
    if shadow:
        with_shadow = list(events)
        for index, refs in shadow:
            at = int(index)
            if not 0 <= at < len(with_shadow):
                raise RecordError("correlate record has shadow matches for an event it lacks")
            refs_at = _decode_refs(refs)
            with_shadow[at] = dataclasses.replace(with_shadow[at], shadow_matches=refs_at)
        events = tuple(with_shadow)
    return CorrelateBatch(
        digest=str(data["d"]),
        source_partitions=int(data["n"]),
        progress={int(p): int(t) for p, t in data["p"]},
        wall_ns=int(data["w"]),
        events=events,
        version=int(data["v"]),
        shadow_digest=str(data.get("sd") or ""),
    )


def _decode_v0(key: bytes | None, data: dict[str, Any]) -> CorrelateBatch:
    """0.1's records: a tick `{"tick", "hw"}` or one event for one (correlation, key)."""
    if key == TICK_KEY:
        return CorrelateBatch(
            digest="",
            source_partitions=0,
            progress={},
            wall_ns=int(data["tick"]),
            version=0,
            legacy_high_water=int(data["hw"]),
        )
    partition, offset = data["src"]
    event = EventRecord(
        payload=data["e"],
        time_ns=int(data["t"]),
        source_partition=int(partition),
        source_offset=int(offset),
        produced_ms=data.get("ts"),
        matches=(MatchRef(str(data["c"]), tuple(data["k"]), tuple(int(s) for s in data["s"])),),
    )
    return CorrelateBatch(
        digest=str(data.get("d", "")),
        source_partitions=0,
        progress={},
        wall_ns=0,
        events=(event,),
        version=0,
        legacy_high_water=int(data["hw"]),
    )
