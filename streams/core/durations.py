"""Durations as rule files and settings write them: an integer and a unit."""

from __future__ import annotations

import re

from streams._text import short

__all__ = ["NS_PER_UNIT", "format_duration", "parse_compound_duration", "parse_duration"]

NS_PER_UNIT: dict[str, int] = {
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
}

_DURATION = re.compile(r"([0-9]+)(ms|s|m|h|d)")


def parse_duration(text: object) -> int:
    """Nanoseconds of `10s`, `5m`, `250ms`...; ValueError with a readable reason otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"duration must be a string like '10m', got {short(text)}")
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"invalid duration {short(text)}: expected an integer and a unit ms|s|m|h|d"
        )
    return int(match.group(1)) * NS_PER_UNIT[match.group(2)]


def format_duration(ns: int) -> str:
    """The largest exact unit: 600_000_000_000 -> '10m'."""
    for unit in ("d", "h", "m", "s", "ms"):
        size = NS_PER_UNIT[unit]
        if ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns}ns"


_COMPOUND = re.compile(r"(?:[0-9]+(?:ms|s|m|h|d))+")


def parse_compound_duration(text: object) -> int:
    """`1h30m`, `10m1s`: a sum of durations, for test fixtures and offsets (not for rules)."""
    if not isinstance(text, str) or _COMPOUND.fullmatch(text.strip()) is None:
        raise ValueError(f"invalid duration {short(text)}: expected e.g. 30s, 10m1s, 1h30m")
    return sum(int(n) * NS_PER_UNIT[unit] for n, unit in _DURATION.findall(text.strip()))
