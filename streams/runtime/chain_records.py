"""Chain records on `<app>-correlate`: derived events and level progress between partitions.

A correlation that references another (RULES-SPEC section 7, C3) is keyed by its own `by`, so
the records of an upstream correlated on partition P become derived events of a dependent key
that may live on partition Q. P sends them to Q in a chain record, together with P's level
watermarks: everything of level L that P will still emit is at or after `levels[L]` (derived
events of level L with an earlier time were sent already, in this record or an earlier one).
Q releases its level L+1 only up to the lowest level L watermark of all partitions (C5), so its
dependents see their upstreams' records in position order whatever the partitioning.

Wire format (orjson), key `CHAIN_KEY`: `{"v": 1, "from": P, "d": digest, "lw": [level
watermark, ...], "e": [[derived event data, [[correlation, key, steps], ...]], ...]}`, the
derived event as `streams.core.derived.derived_to_data` writes it. A record without events only
reports progress. Partitions of the same worker exchange them through Kafka like any other:
one path, durable, ordered per sender and partition (the output producer is idempotent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from streams.core.derived import derived_from_data, derived_to_data
from streams.core.events import Event
from streams.runtime.records import RECORD_VERSION, MatchRef, RecordError

__all__ = ["CHAIN_KEY", "ChainRecord", "decode_chain", "encode_chain"]

CHAIN_KEY = b"\x00chain"


@dataclass(frozen=True, slots=True)
class ChainRecord:
    sender: int
    digest: str
    levels: tuple[int, ...]
    events: tuple[tuple[Event, tuple[MatchRef, ...]], ...] = ()


def encode_chain(record: ChainRecord) -> bytes:
    return orjson.dumps(
        {
            "v": RECORD_VERSION,
            "from": record.sender,
            "d": record.digest,
            "lw": list(record.levels),
            "e": [
                [
                    derived_to_data(event),
                    [[m.correlation, list(m.key), list(m.steps)] for m in refs],
                ]
                for event, refs in record.events
            ],
        }
    )


def decode_chain(value: bytes | None) -> ChainRecord:
    """A chain record; RecordError when it cannot be read."""
    if value is None:
        raise RecordError("chain record without a value")
    try:
        data: Any = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"chain record is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RecordError("chain record is not a JSON object")
    version = data.get("v")
    if not isinstance(version, int) or not 1 <= version <= RECORD_VERSION:
        raise RecordError(f"chain record of an unknown version {version!r:.20}")
    try:
        events = tuple(
            (
                derived_from_data(event),
                tuple(MatchRef(str(c), tuple(k), tuple(int(s) for s in st)) for c, k, st in refs),
            )
            for event, refs in data["e"]
        )
        return ChainRecord(
            sender=int(data["from"]),
            digest=str(data["d"]),
            levels=tuple(int(t) for t in data["lw"]),
            events=events,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordError(f"malformed chain record: {type(exc).__name__}: {exc}") from None
