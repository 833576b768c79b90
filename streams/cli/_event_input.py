"""Valid events from JSON-lines inputs, for the commands that run engines over files.

The same rules as `replay`: a blank or invalid line is reported on stderr as `FILE:LINE: skipped:
reason`, counted and skipped; arrival numbers (`seq`) count valid events only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO

from streams.core.events import Event, event_from_bytes
from streams.errors import EventError

__all__ = ["InputCounts", "valid_events"]


@dataclass
class InputCounts:
    lines: int = 0
    invalid: int = 0

    @property
    def events(self) -> int:
        return self.lines - self.invalid


def valid_events(
    lines: Iterable[tuple[str, int, bytes]], counts: InputCounts, err: IO[str]
) -> Iterator[tuple[str, int, Event]]:
    """(source, line number, event) for every valid line, in input order."""
    seq = 0
    for source, number, line in lines:
        counts.lines += 1
        if not line.strip():
            counts.invalid += 1
            err.write(f"{source}:{number}: skipped: empty line\n")
            continue
        try:
            event = event_from_bytes(line, seq)
        except EventError as exc:
            counts.invalid += 1
            err.write(f"{source}:{number}: skipped: {exc}\n")
            continue
        seq += 1
        yield source, number, event
