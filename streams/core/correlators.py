"""Per-(correlation, key) state machines, one class per correlation type.

Each receives events in (time, arrival) order (the engine's reorder buffer guarantees it), so
everything a state holds is older than the event being processed. A state keeps the event object
it is given: the engine hands in packed events (`Event.packed()`, the payload as JSON bytes) once
its state is large, and unpacks the events of a match when it builds the incident. Consumption
is simple: when a correlation fires for a key, every event of that key up to the match is in the
state, and the whole state is dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from streams.core._event_data import event_to_data, kept_event_from_data
from streams.core.rules import Correlation, CorrelationType

if TYPE_CHECKING:
    from streams.core.events import Event

__all__ = [
    "AbsenceState",
    "AllState",
    "CountState",
    "DistinctState",
    "KeyState",
    "Match",
    "SequenceState",
    "new_state",
]

# A match: (step name, event) pairs in report order.
Match = list[tuple[str, "Event"]]


class KeyState:
    """State of one (correlation, key). `evicted` counts events dropped by the size cap."""

    __slots__ = ("evicted", "newest_ns")
    kind: ClassVar[CorrelationType]
    #: Whether a match consumes the key's state (v1: every type; new_term keeps its history).
    consumes: ClassVar[bool] = True

    def __init__(self) -> None:
        self.newest_ns = 0
        self.evicted = 0

    @classmethod
    def for_correlation(cls, corr: Correlation) -> KeyState:
        """A new, empty state of this type for `corr`."""
        raise NotImplementedError

    def to_data(self) -> dict[str, Any]:
        """The state as JSON-able data (the worker's changelog, streams/core/snapshot.py)."""
        raise NotImplementedError

    @classmethod
    def from_data(cls, corr: Correlation, data: dict[str, Any]) -> KeyState:
        """The state saved by `to_data`; ValueError/KeyError/TypeError when `corr` changed
        shape (the partial state cannot carry over)."""
        raise NotImplementedError

    def on_event(self, corr: Correlation, steps: set[int], event: Event, cap: int) -> Match | None:
        raise NotImplementedError

    def size(self) -> int:
        raise NotImplementedError

    def expire(self, horizon_ns: int) -> None:
        """Drop everything older than horizon (the start of any window still possible)."""
        raise NotImplementedError

    def held(self) -> list[Event]:
        """Every event the state holds, each once (for observers; not on the hot path)."""
        raise NotImplementedError

    # -- what the engine schedules for this type (defaults: no deadline, windows end at the
    # -- watermark) --------------------------------------------------------------------------

    @classmethod
    def inert_steps(cls, corr: Correlation) -> frozenset[int]:
        """Steps whose events leave a new state of `corr` empty and match nothing (the engine
        does not create a state for them)."""
        return frozenset()

    @classmethod
    def deadline(cls, corr: Correlation, event: Event) -> int | None:
        """When a match on `event` is not an incident yet but a deadline (absence)."""
        return None

    def deadlines(self, corr: Correlation) -> list[tuple[int, int]]:
        """(deadline, event seq) of every pending deadline, to schedule again after a restore."""
        return []

    def take(self, seq: int) -> Event | None:
        """The event whose deadline passed, if the state still holds it (absence)."""
        return None

    @classmethod
    def suppression_horizon(cls, corr: Correlation, watermark_ns: int) -> int:
        """Anchors of suppression windows ending at or before this can go: a future match ends
        at or after the watermark."""
        return watermark_ns


class SequenceState(KeyState):
    __slots__ = ("candidates",)
    kind = CorrelationType.SEQUENCE

    def __init__(self, n_steps: int) -> None:
        super().__init__()
        # Candidates of every step but the last (the last step is only ever the current event).
        self.candidates: list[list[Event]] = [[] for _ in range(n_steps - 1)]

    @classmethod
    def for_correlation(cls, corr: Correlation) -> SequenceState:
        return cls(len(corr.steps))

    @classmethod
    def inert_steps(cls, corr: Correlation) -> frozenset[int]:
        # the last step: no chain to complete in a new state
        return frozenset({len(corr.steps) - 1}) if len(corr.steps) > 1 else frozenset()

    def to_data(self) -> dict[str, Any]:
        return {"cands": [[event_to_data(e) for e in c] for c in self.candidates]}

    @classmethod
    def from_data(cls, corr: Correlation, data: dict[str, Any]) -> SequenceState:
        state = cls(len(corr.steps))
        cands = data["cands"]
        if len(cands) != len(state.candidates):
            raise ValueError("number of steps changed")
        state.candidates = [[kept_event_from_data(e) for e in c] for c in cands]
        return state

    def size(self) -> int:
        return sum(len(c) for c in self.candidates)

    def held(self) -> list[Event]:
        unique = {id(e): e for cands in self.candidates for e in cands}
        return sorted(unique.values(), key=lambda e: (e.time_ns, e.seq))

    def expire(self, horizon_ns: int) -> None:
        for cands in self.candidates:
            cut = 0
            while cut < len(cands) and cands[cut].time_ns < horizon_ns:
                cut += 1
            if cut:
                del cands[:cut]

    def on_event(self, corr: Correlation, steps: set[int], event: Event, cap: int) -> Match | None:
        self.newest_ns = event.time_ns
        self.expire(event.time_ns - corr.within_ns)
        last = len(corr.steps) - 1
        if last in steps:
            chain = self._tightest_chain(event)
            if chain is not None:
                return [(corr.steps[i].name, e) for i, e in enumerate(chain)]
        # Not completing a chain: a candidate for every earlier step it matches.
        for index in sorted(steps):
            if index < last:
                self.candidates[index].append(event)
        excess = self.size() - cap
        while excess > 0:
            self._evict_oldest()
            excess -= 1
        return None

    def _tightest_chain(self, last_event: Event) -> list[Event] | None:
        """Backwards from the last event, each earlier step takes the latest eligible event."""
        chain = [last_event]
        bound = (last_event.time_ns, last_event.seq)
        for cands in reversed(self.candidates):
            found = None
            for cand in reversed(cands):
                if (cand.time_ns, cand.seq) < bound:
                    found = cand
                    break
            if found is None:
                return None
            chain.append(found)
            bound = (found.time_ns, found.seq)
        chain.reverse()
        return chain

    def _evict_oldest(self) -> None:
        oldest = min((c for c in self.candidates if c), key=lambda c: (c[0].time_ns, c[0].seq))
        del oldest[0]
        self.evicted += 1


class AllState(KeyState):
    __slots__ = ("latest",)
    kind = CorrelationType.ALL

    def __init__(self, n_steps: int) -> None:
        super().__init__()
        # Only the latest event per step matters: it is what is reported, and older ones leave
        # the window first.
        self.latest: list[Event | None] = [None] * n_steps

    @classmethod
    def for_correlation(cls, corr: Correlation) -> AllState:
        return cls(len(corr.steps))

    def to_data(self) -> dict[str, Any]:
        return {"latest": [None if e is None else event_to_data(e) for e in self.latest]}

    @classmethod
    def from_data(cls, corr: Correlation, data: dict[str, Any]) -> AllState:
        state = cls(len(corr.steps))
        latest = data["latest"]
        if len(latest) != len(state.latest):
            raise ValueError("number of steps changed")
        state.latest = [None if e is None else kept_event_from_data(e) for e in latest]
        return state

    def size(self) -> int:
        return sum(e is not None for e in self.latest)

    def held(self) -> list[Event]:
        return [e for e in self.latest if e is not None]

    def expire(self, horizon_ns: int) -> None:
        for index, event in enumerate(self.latest):
            if event is not None and event.time_ns < horizon_ns:
                self.latest[index] = None

    def on_event(self, corr: Correlation, steps: set[int], event: Event, cap: int) -> Match | None:
        self.newest_ns = event.time_ns
        self.expire(event.time_ns - corr.within_ns)
        self.latest[min(steps)] = event
        if any(e is None for e in self.latest):
            return None
        pairs = [(corr.steps[i].name, e) for i, e in enumerate(self.latest) if e is not None]
        pairs.sort(key=lambda p: (p[1].time_ns, p[1].seq))
        return pairs


class CountState(KeyState):
    __slots__ = ("events",)
    kind = CorrelationType.COUNT

    def __init__(self) -> None:
        super().__init__()
        self.events: list[Event] = []

    @classmethod
    def for_correlation(cls, corr: Correlation) -> CountState:
        return cls()

    def to_data(self) -> dict[str, Any]:
        return {"events": [event_to_data(e) for e in self.events]}

    @classmethod
    def from_data(cls, corr: Correlation, data: dict[str, Any]) -> CountState:
        state = cls()
        state.events = [kept_event_from_data(e) for e in data["events"]]
        return state

    def size(self) -> int:
        return len(self.events)

    def held(self) -> list[Event]:
        return list(self.events)

    def expire(self, horizon_ns: int) -> None:
        cut = 0
        while cut < len(self.events) and self.events[cut].time_ns < horizon_ns:
            cut += 1
        if cut:
            del self.events[:cut]

    def on_event(self, corr: Correlation, steps: set[int], event: Event, cap: int) -> Match | None:
        self.newest_ns = event.time_ns
        self.expire(event.time_ns - corr.within_ns)
        self.events.append(event)
        if len(self.events) >= corr.threshold:
            return [("match", e) for e in self.events]
        if len(self.events) > cap:
            del self.events[0]
            self.evicted += 1
        return None


class DistinctState(KeyState):
    __slots__ = ("values",)
    kind = CorrelationType.DISTINCT

    def __init__(self) -> None:
        super().__init__()
        # value -> latest event carrying it; a value is in the window iff its latest event is.
        self.values: dict[str, Event] = {}

    @classmethod
    def for_correlation(cls, corr: Correlation) -> DistinctState:
        return cls()

    def to_data(self) -> dict[str, Any]:
        return {"values": [[v, event_to_data(e)] for v, e in self.values.items()]}

    @classmethod
    def from_data(cls, corr: Correlation, data: dict[str, Any]) -> DistinctState:
        state = cls()
        state.values = {str(v): kept_event_from_data(e) for v, e in data["values"]}
        return state

    def size(self) -> int:
        return len(self.values)

    def held(self) -> list[Event]:
        return list(self.values.values())

    def expire(self, horizon_ns: int) -> None:
        stale = [v for v, e in self.values.items() if e.time_ns < horizon_ns]
        for value in stale:
            del self.values[value]

    def on_event(self, corr: Correlation, steps: set[int], event: Event, cap: int) -> Match | None:
        self.newest_ns = event.time_ns
        self.expire(event.time_ns - corr.within_ns)
        assert corr.field is not None
        value = event.get(corr.field)
        if value is None or isinstance(value, dict | list):
            return None  # still a match of the condition, but it adds no value
        ident = str(value)
        self.values.pop(ident, None)  # re-insert so dict order is recency order
        self.values[ident] = event
        if len(self.values) >= corr.threshold:
            events = sorted(self.values.values(), key=lambda e: (e.time_ns, e.seq))
            return [("match", e) for e in events]
        if len(self.values) > cap:
            del self.values[next(iter(self.values))]
            self.evicted += 1
        return None


class AbsenceState(KeyState):
    """A pending trigger, plus triggers already past their deadline awaiting the watermark."""

    __slots__ = ("due", "pending")
    kind = CorrelationType.ABSENCE

    def __init__(self) -> None:
        super().__init__()
        self.pending: Event | None = None
        self.due: dict[int, Event] = {}

    @classmethod
    def for_correlation(cls, corr: Correlation) -> AbsenceState:
        return cls()

    @classmethod
    def inert_steps(cls, corr: Correlation) -> frozenset[int]:
        return frozenset({1})  # an `expect` with no trigger to clear

    @classmethod
    def deadline(cls, corr: Correlation, event: Event) -> int | None:
        return event.time_ns + corr.within_ns

    def deadlines(self, corr: Correlation) -> list[tuple[int, int]]:
        return [(trigger.time_ns + corr.within_ns, trigger.seq) for trigger in self.held()]

    @classmethod
    def suppression_horizon(cls, corr: Correlation, watermark_ns: int) -> int:
        # its last event is the trigger, up to `within` older than the watermark when it fires
        return watermark_ns - corr.within_ns

    def to_data(self) -> dict[str, Any]:
        return {
            "pending": None if self.pending is None else event_to_data(self.pending),
            "due": [event_to_data(e) for e in self.due.values()],
        }

    @classmethod
    def from_data(cls, corr: Correlation, data: dict[str, Any]) -> AbsenceState:
        state = cls()
        state.pending = None if data["pending"] is None else kept_event_from_data(data["pending"])
        state.due = {e.seq: e for e in (kept_event_from_data(d) for d in data["due"])}
        return state

    def size(self) -> int:
        return (self.pending is not None) + len(self.due)

    def held(self) -> list[Event]:
        return [*self.due.values(), *([self.pending] if self.pending is not None else [])]

    def expire(self, horizon_ns: int) -> None:
        """Absence state only ends by firing or by being cleared."""

    def on_event(self, corr: Correlation, steps: set[int], event: Event, cap: int) -> Match | None:
        """Returns the new pending trigger as a one-event match (the engine schedules it)."""
        self.newest_ns = event.time_ns
        pending = self.pending
        if pending is not None and pending.time_ns + corr.within_ns < event.time_ns:
            # Decided: nothing can clear it any more; it fires when the watermark passes.
            self.due[pending.seq] = pending
            self.pending = pending = None
        expect_index, trigger_index = 1, 0
        if expect_index in steps and pending is not None:
            self.pending = pending = None
        if trigger_index in steps and pending is None:
            self.pending = event
            return [("trigger", event)]
        return None

    def take(self, seq: int) -> Event | None:
        """The trigger with this arrival number if it is still to fire (pending or due)."""
        if self.pending is not None and self.pending.seq == seq:
            event, self.pending = self.pending, None
            return event
        return self.due.pop(seq, None)


def new_state(corr: Correlation) -> KeyState:
    """A new state of `corr`'s type (streams/core/state_types.py holds the registry)."""
    from streams.core.state_types import state_type  # the registry imports every type

    return state_type(corr.type).for_correlation(corr)
