"""Falco events: Falco's `json_output` or falcosidekick's payload, with nanosecond time.

Event content is attacker-controlled: it is only ever read as data here.
"""

from __future__ import annotations

import calendar
import hashlib
import re
from functools import lru_cache
from typing import Any

import orjson

from streams.core.priority import canonical_priority, priority_rank
from streams.errors import EventError

__all__ = [
    "TOP_LEVEL_FIELDS",
    "Event",
    "event_from_bytes",
    "event_from_dict",
    "format_time",
    "parse_time",
]

# Names that refer to the payload's own keys; any other field name is looked up in output_fields.
TOP_LEVEL_FIELDS = frozenset(
    {"rule", "priority", "source", "hostname", "output", "tags", "time", "uuid"}
)

_TIME = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(Z|z|[+-][0-9]{2}:?[0-9]{2})"
)
_NS = 1_000_000_000


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
        return int(value)
    return None


class Event:
    """One valid Falco alert. `seq` is its arrival position, which breaks ties in time."""

    __slots__ = ("_identity", "_rank", "fields", "raw", "rule", "seq", "time_ns")

    def __init__(self, raw: dict[str, Any], time_ns: int, seq: int) -> None:
        self.raw = raw
        fields = raw.get("output_fields")
        self.fields: dict[str, Any] = fields if isinstance(fields, dict) else {}
        self.rule: str = raw["rule"]
        self._rank: int | None = -1  # -1: not computed yet
        self.time_ns = time_ns
        self.seq = seq
        self._identity: str | None = None

    def get(self, name: str) -> Any:
        """The value of a field (section 3 of the spec); None when missing or null.

        falcosidekick's bracket replacer turns `proc.aname[2]` into `proc.aname_2`; a lookup of
        the bracketed name falls back to that spelling so rules work on both payloads.
        """
        if name in TOP_LEVEL_FIELDS:
            return self.raw.get(name)
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


def event_from_dict(raw: object, seq: int) -> Event:
    """Validate a decoded payload; EventError says why it is not a usable event."""
    if not isinstance(raw, dict):
        raise EventError(f"not a JSON object ({type(raw).__name__})")
    rule = raw.get("rule")
    if not isinstance(rule, str) or not rule:
        raise EventError("no 'rule'")
    time_ns = parse_time(raw.get("time"))
    if time_ns is None:
        fields = raw.get("output_fields")
        if isinstance(fields, dict):
            time_ns = _int_ns(fields.get("evt.time"))
            if time_ns is None:
                time_ns = _int_ns(fields.get("evt.time.iso8601"))
    if time_ns is None:
        raise EventError("no usable time ('time' nor output_fields 'evt.time')")
    return Event(raw, time_ns, seq)


def event_from_bytes(data: bytes | str, seq: int) -> Event:
    """Decode one JSON document and validate it."""
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise EventError(f"not JSON: {exc}") from None
    return event_from_dict(raw, seq)
