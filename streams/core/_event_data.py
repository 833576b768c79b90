"""Events as JSON-able data inside state snapshots: `[payload, time_ns, seq]`, or for a derived
event `[payload, time_ns, seq, derived, position tail]` (streams/core/derived.py)."""

from __future__ import annotations

from typing import Any

from streams.core.derived import DerivedSeq, position_tail
from streams.core.events import Event

__all__ = ["event_from_data", "event_to_data", "kept_event_from_data"]


def event_to_data(event: Event) -> list[Any]:
    if event.derived is not None:  # a derived event: its C2 fields and its position's tail
        return [
            event.raw,
            event.time_ns,
            int(event.seq),
            event.derived,
            list(position_tail(event.seq)),
        ]
    return [event.raw, event.time_ns, event.seq]


def event_from_data(data: list[Any]) -> Event:
    if len(data) == 5:
        seq = DerivedSeq(int(data[2]), tuple(str(t) for t in data[4]))
        return Event(data[0], int(data[1]), seq, dict(data[3]))
    return Event(data[0], int(data[1]), int(data[2]))


def kept_event_from_data(data: list[Any]) -> Event:
    """An event of a state machine: packed, as the engine keeps it (Event.packed)."""
    return event_from_data(data).packed()
