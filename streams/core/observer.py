"""What an engine can tell an observer at its decision points (used by `explain`).

The engine calls an observer only when one is given (`Engine(..., observer=...)`); without one the
hot path pays nothing but a `None` test per correlated (correlation, key). An observer must not
change the engine, its states or the events it is shown: it records, the engine decides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from streams.core.correlators import KeyState, Match
    from streams.core.events import Event

__all__ = ["EngineObserver", "ObservedKey"]

ObservedKey = tuple[Any, ...]


class EngineObserver(Protocol):
    def late(self, event: Event) -> None:
        """A valid event arrived with a time below the watermark: it is not correlated."""

    def unkeyed(self, event: Event, ci: int, si: int) -> None:
        """The event matched step `si` of correlation `ci`, but a `by` field of that step is
        missing, null, empty or not a scalar: it takes no part (spec section 4)."""

    def fed(
        self,
        ci: int,
        key: ObservedKey,
        steps: set[int],
        event: Event,
        *,
        state: KeyState,
        match: Match | None,
    ) -> None:
        """The event was correlated for (correlation `ci`, `key`) as a candidate of `steps`.

        `state` is that key's state after the event. `match` is what it completed (for an absence:
        the trigger that became pending), else None. On a match of any other type the engine then
        drops the whole state: every event it held was consumed.

        States hold packed twins of the events they keep (`Event.packed()`; `event.twin` is the
        fed event's), so `state.held()` and `match` may show twins, not the fed objects."""

    def emitted(self, ci: int, key: ObservedKey, match: Match, record: dict[str, Any]) -> None:
        """A match became an incident record (`status` new, or update when suppressed).

        `match` holds the unpacked copies the record was built from (new objects)."""
