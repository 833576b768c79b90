"""Derived events (spec section 7, C1-C4): a correlation's records as input of the correlations
that reference it.

A derived event is an `Event` whose `derived` holds `correlation`, `status` and `count` (the
fields C2 reserves: null for every Falco event, whatever its JSON says) and whose `seq` is a
`DerivedSeq`: the position of C4 after the time. Positions compare element by element, a prefix
first, so a derived event sorts right after the event that completed its match and before every
later event, siblings by correlation name then key text, a derived event of a derived event
right after its parent (depth first). An absence's derived event is at
(deadline, +inf, deadline, name, key...), after every event of a time up to its deadline (the
deadline is repeated in the tail so that each one's position is its own).

Since `(time_ns, seq)` is how every state orders its events, the states need no change to take
derived events: `DerivedSeq` is an `int` (its parent's arrival number, or +inf for an absence)
that also compares its tail.
"""

from __future__ import annotations

from typing import Any

from streams.core._condition_parser import as_text
from streams.core.events import DERIVED_FIELDS, TOP_LEVEL_FIELDS, Event, format_time
from streams.core.rules import Correlation

__all__ = [
    "ABSENCE_POSITION",
    "DERIVED_SOURCE",
    "DerivedSeq",
    "build_derived_event",
    "derived_from_data",
    "derived_to_data",
    "key_text",
    "position_tail",
]

#: `source` of every derived event.
DERIVED_SOURCE = "falco-correlator"
#: The arrival part of an absence's derived event: after every event of its time (C4). The
#: largest int64, so positions stay JSON-able; no arrival number gets near it.
ABSENCE_POSITION = 2**63 - 1


class DerivedSeq(int):
    """A position after its base arrival number: (base, *tail), compared element by element.

    Equal bases compare by tail, a plain int having the empty tail (a prefix sorts first)."""

    tail: tuple[str, ...]

    def __new__(cls, base: int, tail: tuple[str, ...]) -> DerivedSeq:
        obj = super().__new__(cls, base)
        obj.tail = tail
        return obj

    def _order(self) -> tuple[int, tuple[str, ...]]:
        return int(self), self.tail

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, int):
            return NotImplemented
        return self._order() < _order(other)

    def __le__(self, other: object) -> bool:
        if not isinstance(other, int):
            return NotImplemented
        return self._order() <= _order(other)

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, int):
            return NotImplemented
        return self._order() > _order(other)

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, int):
            return NotImplemented
        return self._order() >= _order(other)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, int):
            return NotImplemented
        return self._order() == _order(other)

    def __ne__(self, other: object) -> bool:
        if not isinstance(other, int):
            return NotImplemented
        return self._order() != _order(other)

    def __hash__(self) -> int:
        return hash(self._order())

    def __repr__(self) -> str:
        return f"DerivedSeq({int(self)}, {self.tail!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return DerivedSeq, (int(self), self.tail)


def _order(value: int) -> tuple[int, tuple[str, ...]]:
    tail = value.tail if isinstance(value, DerivedSeq) else ()
    return int(value), tail


def key_text(key: tuple[Any, ...]) -> tuple[str, ...]:
    """Key values as text (N1): a string as written, an integer in decimal."""
    return tuple(as_text(value) for value in key)


def position_tail(seq: int) -> tuple[str, ...]:
    return seq.tail if isinstance(seq, DerivedSeq) else ()


def build_derived_event(
    corr: Correlation,
    key: tuple[Any, ...],
    record: dict[str, Any],
    *,
    time_ns: int,
    parent_seq: int | None,
) -> Event:
    """The derived event of one record of `corr` (C1).

    `parent_seq` is the arrival (position) of the event that completed the match, whose time
    is `time_ns`; None for an absence, whose derived event is at its deadline `time_ns`."""
    key_fields = dict(zip(corr.by, key, strict=True))
    context = record.get("context") or {}
    hostname = key_fields["hostname"] if "hostname" in key_fields else context.get("hostname")
    fields: dict[str, Any] = {
        name: value for name, value in context.items() if name != "hostname" and value is not None
    }
    for name, value in key_fields.items():
        if name not in TOP_LEVEL_FIELDS and name not in DERIVED_FIELDS:
            fields[name] = value  # the key wins over the context
    raw: dict[str, Any] = {
        "time": format_time(time_ns),
        "rule": corr.name,
        "priority": record["severity"],
        "source": DERIVED_SOURCE,
        "hostname": hostname,
        "output": record["output"],
        "output_fields": fields,
        "tags": list(corr.tags),
        "uuid": f"{record['id']}:{record['count']}",
    }
    derived = {"correlation": corr.name, "status": record["status"], "count": record["count"]}
    own = (corr.name, *key_text(key))
    if parent_seq is None:
        # the deadline in the tail too: two absences of one key (other deadlines) are other
        # events; it orders nothing, the time is compared first
        seq = DerivedSeq(ABSENCE_POSITION, (str(time_ns), *own))
    else:
        seq = DerivedSeq(int(parent_seq), (*position_tail(parent_seq), *own))
    return Event(raw, time_ns, seq, derived)


def derived_to_data(event: Event) -> list[Any]:
    """A derived event as JSON-able data (`[raw, time_ns, base, tail, derived]`), for a host
    that routes derived events to other partitions or keeps them in a changelog."""
    return [event.raw, event.time_ns, int(event.seq), list(position_tail(event.seq)), event.derived]


def derived_from_data(data: list[Any]) -> Event:
    raw, time_ns, base, tail, derived = data
    return Event(raw, int(time_ns), DerivedSeq(int(base), tuple(tail)), derived)
