"""Commit bookkeeping of the notify stage: which offset of a partition may be committed."""

from __future__ import annotations

__all__ = ["OffsetTracker"]


class OffsetTracker:
    """Commit bookkeeping of one partition: offsets start and finish in any order; the offset
    to commit (Kafka's "next offset to read") is the lowest one still in flight, or one past
    the highest started when nothing is."""

    def __init__(self) -> None:
        self._pending: set[int] = set()
        self._next: int | None = None
        self._committed: int | None = None

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def start(self, offset: int) -> None:
        self._pending.add(offset)
        self._next = offset + 1 if self._next is None else max(self._next, offset + 1)

    def done(self, offset: int) -> None:
        self._pending.discard(offset)

    def committable(self) -> int | None:
        """The offset to commit now, or None when it would not move the committed position."""
        if self._next is None:
            return None
        candidate = min(self._pending) if self._pending else self._next
        if self._committed is not None and candidate <= self._committed:
            return None
        return candidate

    def committed(self, offset: int) -> None:
        self._committed = offset if self._committed is None else max(self._committed, offset)
