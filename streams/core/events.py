"""Falco events: Falco's `json_output` or falcosidekick's payload, with nanosecond time.

Event content is attacker-controlled: it is only ever read as data here.
"""

from __future__ import annotations

import calendar
import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from streams.core.priority import canonical_priority, priority_rank
from streams.errors import EventError

__all__ = [
    "DERIVED_FIELDS",
    "MAX_EVENT_BYTES",
    "MAX_EVENT_DEPTH",
    "MAX_EVENT_TIME_NS",
    "MIN_EVENT_TIME_NS",
    "TOP_LEVEL_FIELDS",
    "Event",
    "FutureEvent",
    "PackedEvent",
    "event_from_bytes",
    "event_from_dict",
    "format_time",
    "hostname_label",
    "parse_time",
    "too_far_ahead",
]

# Names that refer to the payload's own keys; any other field name is looked up in output_fields.
TOP_LEVEL_FIELDS = frozenset(
    {"rule", "priority", "source", "hostname", "output", "tags", "time", "uuid"}
)
#: Top-level names that only derived events (records of another correlation, spec section 7 C2)
#: carry; for a Falco event they are always null, whatever its JSON holds, so they cannot be
#: spoofed by input.
DERIVED_FIELDS = frozenset({"correlation", "status", "count"})

_TIME = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(Z|z|[+-][0-9]{2}:?[0-9]{2})"
)
_NS = 1_000_000_000

# Limits on what one event may be (docs/rules.md, "Limits"). Event content is attacker-controlled;
# everything past these is invalid input, reported and skipped like a line that is not JSON.
#: The largest record (one JSON line in replay, one Kafka value in the worker).
MAX_EVENT_BYTES = 1 << 20
#: Nesting of objects and lists, the payload itself being level 1. Falco's payloads use 3; the
#: limit keeps every incident that quotes an event within what JSON writers accept (orjson: 254).
MAX_EVENT_DEPTH = 32
#: Event times are kept as signed 64-bit nanoseconds (orjson, the changelog and Kafka all use
#: int64): 1970-01-01T00:00:00Z up to, not including, 2200-01-01T00:00:00Z, which leaves room
#: for windows, lateness and deadlines to be added without leaving that range.
MIN_EVENT_TIME_NS = 0
MAX_EVENT_TIME_NS = 7_258_118_400 * _NS


@lru_cache(maxsize=4096)
def _day_epoch(day: str) -> int:
    year, month, mday = (int(part) for part in day.split("-"))
    if not 1 <= month <= 12 or not 1 <= mday <= calendar.monthrange(year, month)[1]:
        raise ValueError(f"no such day: {day}")
    return calendar.timegm((year, month, mday, 0, 0, 0, 0, 0, 0))


# Minutes already seen (`YYYY-MM-DDTHH:MM:` -> epoch seconds): Falco's events are dense in time,
# so most share a minute with an earlier one, and int() on text is the costly part.
_MINUTE_CACHE: dict[str, int] = {}
_SECOND_OF_MINUTE = {f"{second:02d}": second for second in range(61)}  # 60: a leap second
# 10 ** (9 - digits): a fraction of n digits in nanoseconds.
_FRACTION_SCALE: tuple[int, ...] = tuple(10 ** (9 - digits) for digits in range(10))


def parse_time(text: object) -> int | None:
    """Nanoseconds since the epoch of an RFC 3339 time, or None when it is not one.

    Python's datetime keeps microseconds only; Falco writes nanoseconds, and ordering needs them.
    Falco's and falcosidekick's shape `YYYY-MM-DDTHH:MM:SS[.fff]Z` takes a fast path (slices and a
    per-minute cache); anything else goes through the full pattern.
    """
    if text.__class__ is str and len(text) == 30 and text[19] == "." and text[29] == "Z":
        # Falco's own shape (nine digits), in as few steps as possible: it is every event.
        minute = _MINUTE_CACHE.get(text[:17])
        second = _SECOND_OF_MINUTE.get(text[17:19])
        frac = text[20:29]
        if minute is not None and second is not None and frac.isdigit() and frac.isascii():
            return (minute + second) * _NS + int(frac)
    if not isinstance(text, str):
        return None
    size = len(text)
    if text[-1:] == "Z" and (size == 20 or (size > 21 and text[19] == ".")):
        minute = _MINUTE_CACHE.get(text[:17])
        if minute is None:
            minute = _whole_minutes(text)
        second = _SECOND_OF_MINUTE.get(text[17:19])
        if minute is not None and second is not None:
            if size == 20:
                return (minute + second) * _NS
            frac = text[20:-1]
            if len(frac) <= 9 and frac.isascii() and frac.isdigit():
                return (minute + second) * _NS + int(frac) * _FRACTION_SCALE[len(frac)]
    return _parse_time_slow(text)


def _whole_minutes(text: str) -> int | None:
    """Seconds of `YYYY-MM-DDTHH:MM:` at the start of `text`, cached; None if not that."""
    head = text[:17]
    if not (
        head[4] == "-"
        and head[7] == "-"
        and head[10] in "Tt "
        and head[13] == ":"
        and head[16] == ":"
    ):
        return None
    digits = head[:4] + head[5:7] + head[8:10] + head[11:13] + head[14:16]
    if not (digits.isascii() and digits.isdigit()):
        return None
    hour, minute = int(head[11:13]), int(head[14:16])
    if hour > 23 or minute > 59:
        return None
    try:
        seconds = _day_epoch(head[:10]) + hour * 3600 + minute * 60
    except ValueError:
        return None
    if len(_MINUTE_CACHE) > 100_000:
        _MINUTE_CACHE.clear()
    _MINUTE_CACHE[head] = seconds
    return seconds


def _parse_time_slow(text: str) -> int | None:
    match = _TIME.fullmatch(text)
    if match is None:
        return None
    day, hour, minute, second, frac, zone = match.groups()
    if int(hour) > 23 or int(minute) > 59 or int(second) > 60:
        return None
    try:
        seconds = _day_epoch(day) + int(hour) * 3600 + int(minute) * 60 + int(second)
    except ValueError:
        return None
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        seconds -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    nanos = int(frac.ljust(9, "0")) if frac else 0
    return seconds * _NS + nanos


def format_time(ns: int) -> str:
    """RFC 3339 in UTC with all nine fractional digits: `2023-05-25T13:44:05.478445995Z`."""
    seconds, nanos = divmod(ns, _NS)
    tm = _gmtime(seconds)
    return f"{tm}.{nanos:09d}Z"


@lru_cache(maxsize=65536)
def _gmtime(seconds: int) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def _int_ns(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        # 19 digits hold every int64; longer ones are out of range anyway, and int() refuses
        # (or is slow on) thousands of digits.
        return int(value) if len(value) <= 19 else MAX_EVENT_TIME_NS
    return None


def _in_range(time_ns: int | None) -> bool:
    return time_ns is not None and MIN_EVENT_TIME_NS <= time_ns < MAX_EVENT_TIME_NS


def _clip(value: object, limit: int = 40) -> str:
    """A short, printable rendering of an attacker-controlled value for a reason text."""
    text = value if isinstance(value, str) else repr(value)
    text = text if len(text) <= limit else text[:limit] + "..."
    return text.encode("unicode_escape").decode("ascii")


def _too_deep(value: object, limit: int) -> bool:
    """Whether objects/lists nest deeper than `limit` (the value itself is level 1)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, dict):
            children: Any = current.values()
        elif isinstance(current, list):
            children = current
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


class Event:
    """One valid Falco alert. `seq` is its arrival position, which breaks ties in time."""

    __slots__ = (
        "_identity",
        "_packed",
        "_rank",
        "derived",
        "fields",
        "raw",
        "rule",
        "seq",
        "time_ns",
    )

    def __init__(
        self,
        raw: dict[str, Any],
        time_ns: int,
        seq: int,
        derived: dict[str, Any] | None = None,
    ) -> None:
        self.raw = raw
        # `correlation`, `status`, `count` of a derived event (streams/core/derived.py); None
        # for a Falco event.
        self.derived = derived
        fields = raw.get("output_fields")
        self.fields: dict[str, Any] = fields if isinstance(fields, dict) else {}
        self.rule: str = raw["rule"]
        self._rank: int | None = -1  # -1: not computed yet
        self.time_ns = time_ns
        self.seq = seq
        self._identity: str | None = None
        self._packed: PackedEvent | None = None

    def packed(self) -> Event:
        """This event as correlation state keeps it: the payload as compact JSON bytes (about
        a third of the decoded dicts' memory). One twin per event, shared by every state that
        keeps it; `unpacked()` gives the full event back when an incident is built."""
        twin = self._packed
        if twin is None:
            twin = self._packed = PackedEvent(self)
        return twin

    def unpacked(self) -> Event:
        return self

    @property
    def twin(self) -> Event | None:
        """The packed twin if `packed()` made one, else None (never makes one: for observers,
        which must tell that a state's packed event is this one)."""
        return self._packed

    def get(self, name: str) -> Any:
        """The value of a field (section 3 of the spec); None when missing or null.

        falcosidekick's bracket replacer turns `proc.aname[2]` into `proc.aname_2`; a lookup of
        the bracketed name falls back to that spelling so rules work on both payloads.
        """
        if name in TOP_LEVEL_FIELDS:
            return self.raw.get(name)
        if name in DERIVED_FIELDS:
            derived = self.derived
            return None if derived is None else derived.get(name)
        fields = self.fields
        value = fields.get(name)
        if value is None and name[-1:] == "]" and name not in fields:
            open_at = name.rfind("[")
            if open_at > 0:
                value = fields.get(f"{name[:open_at]}_{name[open_at + 1 : -1]}")
        return value

    @property
    def priority_rank(self) -> int | None:
        """Severity rank of the event's priority (higher is more severe), None if unknown."""
        rank = self._rank
        if rank == -1:
            rank = self._rank = priority_rank(self.raw.get("priority"))
        return rank

    @property
    def tags(self) -> list[Any]:
        tags = self.raw.get("tags")
        return tags if isinstance(tags, list) else []

    @property
    def priority(self) -> str | None:
        """The canonical priority name, or the payload's own text when it is not a priority."""
        value = self.raw.get("priority")
        return canonical_priority(value) or (value if isinstance(value, str) else None)

    @property
    def identity(self) -> str:
        """falcosidekick's uuid, else a hash of time, rule, hostname and output."""
        if self._identity is None:
            uuid = self.raw.get("uuid")
            if isinstance(uuid, str) and uuid:
                self._identity = uuid
            else:
                material = orjson.dumps(
                    [self.time_ns, self.rule, self.raw.get("hostname"), self.raw.get("output")]
                )
                self._identity = hashlib.sha256(material).hexdigest()[:32]
        return self._identity

    def __repr__(self) -> str:
        return f"Event({self.rule!r}, t={self.time_ns}, seq={self.seq})"


class PackedEvent(Event):
    """An Event whose payload is kept as JSON bytes (see `Event.packed`).

    Reading `raw` or `fields` decodes them each time (nothing is cached, or the memory would come
    back); what correlation state reads — time, arrival, rule, priority rank, identity — is kept
    as attributes. Build incidents from `unpacked()`.
    """

    __slots__ = ("_data",)

    def __init__(self, event: Event) -> None:  # not Event.__init__: raw/fields are properties
        # orjson hands back its whole output buffer (8 KiB here for a 0.8 KiB payload): keep an
        # exact-size copy.
        self._data = memoryview(orjson.dumps(event.raw)).tobytes()
        self.rule = event.rule
        self.time_ns = event.time_ns
        self.seq = event.seq
        self.derived = event.derived
        self._rank = event._rank
        self._identity = event._identity
        self._packed = None

    @property
    def raw(self) -> dict[str, Any]:  # type: ignore[override]
        raw: dict[str, Any] = orjson.loads(self._data)
        return raw

    @property
    def fields(self) -> dict[str, Any]:  # type: ignore[override]
        fields = self.raw.get("output_fields")
        return fields if isinstance(fields, dict) else {}

    def packed(self) -> Event:
        return self

    def unpacked(self) -> Event:
        event = Event(self.raw, self.time_ns, self.seq, self.derived)
        event._rank = self._rank
        event._identity = self._identity
        return event


def event_from_dict(raw: object, seq: int, *, check_depth: bool = True) -> Event:
    """Validate a decoded payload; EventError says why it is not a usable event.

    `check_depth=False` skips the nesting check, for callers that know the payload is shallow.
    """
    if not isinstance(raw, dict):
        raise EventError(f"not a JSON object ({type(raw).__name__})")
    rule = raw.get("rule")
    if not isinstance(rule, str) or not rule:
        raise EventError("no 'rule'")
    if check_depth and _too_deep(raw, MAX_EVENT_DEPTH):
        raise EventError(f"nested deeper than {MAX_EVENT_DEPTH} levels")
    raw_time = raw.get("time")
    time_ns = parse_time(raw_time)
    rejected: list[str] = []
    if time_ns is not None and not _in_range(time_ns):
        rejected.append(f"time {_clip(raw_time)}")
        time_ns = None
    if time_ns is None:
        fields = raw.get("output_fields")
        if isinstance(fields, dict):
            for name in ("evt.time", "evt.time.iso8601"):
                value = fields.get(name)
                time_ns = _int_ns(value)
                if time_ns is not None and not _in_range(time_ns):
                    rejected.append(f"{name} {_clip(value)}")
                    time_ns = None
                if time_ns is not None:
                    break
    if time_ns is None:
        if rejected:
            raise EventError(
                f"event time out of range ({', '.join(rejected)}; accepted: "
                f"{format_time(MIN_EVENT_TIME_NS)} to before {format_time(MAX_EVENT_TIME_NS)})"
            )
        raise EventError("no usable time ('time' nor output_fields 'evt.time')")
    return Event(raw, time_ns, seq)


def event_from_bytes(data: bytes | str, seq: int, *, max_bytes: int = MAX_EVENT_BYTES) -> Event:
    """Decode one JSON document and validate it; records over `max_bytes` are invalid."""
    if len(data) > max_bytes:
        raise EventError(f"record longer than the {max_bytes}-byte limit")
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise EventError(f"not JSON: {exc}") from None
    # Counting brackets (in C) is far cheaper than walking every payload; only a record with
    # more brackets than the depth limit (strings included) can nest that deep.
    if isinstance(data, str):
        brackets = data.count("{") + data.count("[")
    else:
        brackets = data.count(b"{") + data.count(b"[")
    return event_from_dict(raw, seq, check_depth=brackets > MAX_EVENT_DEPTH)


# -- events ahead of the wall clock (the worker: `app.max_future_skew`) ---------------------------


@dataclass(frozen=True, slots=True)
class FutureEvent:
    """Why an event is dated too far ahead of the wall clock, and who sent it.

    `reason` is for the dead-letter record; `hostname` is the Falco host as a metric label
    (`hostname_label`): a node with a broken clock is what this usually means.
    """

    reason: str
    hostname: str
    ahead_ns: int


def too_far_ahead(event: Event, now_ns: int, max_skew_ns: int) -> FutureEvent | None:
    """A FutureEvent when `event` is more than `max_skew_ns` after `now_ns` (the wall clock,
    read by the caller: the core reads no clock), else None.

    Such an event would move the watermark ahead of every honest host and make all their
    events late, so the worker treats it as invalid input: dead-lettered, never correlated,
    never moving the watermark.
    """
    ahead = event.time_ns - now_ns
    if ahead <= max_skew_ns:
        return None
    reason = (
        f"event time {format_time(event.time_ns)} is {_seconds(ahead)} ahead of the wall clock "
        f"{format_time(now_ns)} (app.max_future_skew {_seconds(max_skew_ns)})"
    )
    return FutureEvent(reason, hostname_label(event.raw.get("hostname")), ahead)


def _seconds(ns: int) -> str:
    return f"{ns / _NS:.3f}s"


#: Metric label values are cut to this many characters.
MAX_LABEL_CHARS = 64


def hostname_label(hostname: object) -> str:
    """A payload's `hostname` as a metric label: the text cut to 64 characters, or `<none>`."""
    if not isinstance(hostname, str) or not hostname:
        return "<none>"
    return hostname[:MAX_LABEL_CHARS]
