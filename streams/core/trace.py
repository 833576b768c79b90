"""A record of everything the engine decided for one correlation (the input of `explain`).

`CorrelationTrace` is an engine observer (streams/core/observer.py). It keeps, per group key, the
events correlated in order with the steps they were candidates of, every match with the events it
consumed, evictions by the per-key cap and, for absences, the triggers that were cleared; plus the
events of that correlation that were late or whose `by` fields did not resolve. It never changes
the engine: two engines, each with its own trace, can run side by side over the same events.

States keep events packed (`Event.packed()`: a twin object per event) and incidents are built from
unpacked copies, so the events a state or a match shows are not the objects that were fed. The
trace maps each of them back to the event it was fed (`_original`, `_trigger`): everything it
records, and everything `explain` compares by identity, is a fed event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streams.core.correlators import AbsenceState
from streams.core.rules import CorrelationType

if TYPE_CHECKING:
    from streams.core.correlators import KeyState, Match
    from streams.core.events import Event
    from streams.core.observer import ObservedKey
    from streams.core.rules import Correlation

__all__ = ["CorrelationTrace", "Fed", "Fire", "KeyTrace", "LateEvent", "UnkeyedEvent"]


@dataclass(frozen=True, slots=True)
class Fed:
    """An event correlated for a key, as a candidate of `steps` (indices into corr.steps)."""

    event: Event
    steps: frozenset[int]


@dataclass(slots=True)
class Fire:
    """A match and the incident record it became; `consumed`: the events the key held then that
    the match did not use (they can be part of no later match)."""

    match: Match
    consumed: list[Event]
    record: dict[str, Any] | None = None


@dataclass(slots=True)
class KeyTrace:
    key: ObservedKey
    fed: list[Fed] = field(default_factory=list)
    fires: list[Fire] = field(default_factory=list)
    evicted: list[Event] = field(default_factory=list)
    # absence: the triggers that became pending, and (trigger, the expect event that cleared it)
    triggers: list[Event] = field(default_factory=list)
    cleared: list[tuple[Event, Event]] = field(default_factory=list)
    late: list[LateEvent] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class LateEvent:
    """A late event and the steps it would have matched (key None: its `by` did not resolve)."""

    event: Event
    steps: frozenset[int]
    key: ObservedKey | None


@dataclass(frozen=True, slots=True)
class UnkeyedEvent:
    """An event that matched `steps` but lacked `missing` of their `by` fields."""

    event: Event
    steps: frozenset[int]
    missing: tuple[str, ...]


class CorrelationTrace:
    """Records the decisions of one engine about the correlation at index `ci`.

    `matcher` is the engine's `match`: a late event is never matched by the engine, so the trace
    matches it itself to know which steps (and key) it would have taken part in.
    """

    def __init__(self, ci: int, correlation: Correlation) -> None:
        self.ci = ci
        self.correlation = correlation
        self.keys: dict[ObservedKey, KeyTrace] = {}
        self.unkeyed_events: list[UnkeyedEvent] = []
        self.late_unkeyed: list[LateEvent] = []
        self.matcher: Callable[[Event], list[tuple[int, int, ObservedKey]]] | None = None
        self._matching_late = False
        self._live: dict[ObservedKey, list[Event]] = {}
        self._evicted_seen: dict[ObservedKey, tuple[int, int]] = {}
        self._pending: dict[ObservedKey, Event | None] = {}
        self._open_fire: dict[ObservedKey, Fire] = {}
        # id(packed twin) -> the fed event it packs (the fed event keeps its twin alive)
        self._originals: dict[int, Event] = {}

    def _key(self, key: ObservedKey) -> KeyTrace:
        trace = self.keys.get(key)
        if trace is None:
            trace = self.keys[key] = KeyTrace(key)
        return trace

    # -- EngineObserver ------------------------------------------------------------------

    def late(self, event: Event) -> None:
        if self.matcher is None:
            return
        self._matching_late = True
        try:
            matches = self.matcher(event)
        finally:
            self._matching_late = False
        by_key: dict[ObservedKey, set[int]] = {}
        for ci, si, key in matches:
            if ci == self.ci:
                by_key.setdefault(key, set()).add(si)
        for key, steps in by_key.items():
            self._key(key).late.append(LateEvent(event, frozenset(steps), key))
        if not by_key:
            steps = {
                si
                for si, step in enumerate(self.correlation.steps)
                if step.condition.predicate(event)
            }
            if steps:
                self.late_unkeyed.append(LateEvent(event, frozenset(steps), None))

    def unkeyed(self, event: Event, ci: int, si: int) -> None:
        if ci != self.ci or self._matching_late:
            return
        step = self.correlation.steps[si]
        missing = tuple(name for name in step.by if _unresolved(event.get(name)))
        last = self.unkeyed_events[-1] if self.unkeyed_events else None
        if last is not None and last.event is event:
            self.unkeyed_events[-1] = UnkeyedEvent(
                event, last.steps | {si}, tuple(dict.fromkeys(last.missing + missing))
            )
        else:
            self.unkeyed_events.append(UnkeyedEvent(event, frozenset({si}), missing))

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
        if ci != self.ci:
            return
        twin = event.twin
        if twin is not None:
            self._originals[id(twin)] = event
        if match is not None:
            match = [(step, self._original(e)) for step, e in match]
        trace = self._key(key)
        trace.fed.append(Fed(event, frozenset(steps)))
        if isinstance(state, AbsenceState):
            self._absence(trace, key, event, steps, state)
            if match is not None:
                trace.triggers.append(event)
            return
        if self.correlation.type is not CorrelationType.ALL:  # `all` has no cap
            self._track_evictions(trace, key, event, state)
            self._retain(key, event, steps)
        if match is not None:
            used = {id(e) for _, e in match}
            held = [self._original(e) for e in state.held()]
            consumed = [e for e in held if id(e) not in used]
            fire = Fire(match, consumed)
            trace.fires.append(fire)
            self._open_fire[key] = fire
            self._live.pop(key, None)
            self._evicted_seen.pop(key, None)

    def emitted(self, ci: int, key: ObservedKey, match: Match, record: dict[str, Any]) -> None:
        if ci != self.ci:
            return
        fire = self._open_fire.pop(key, None)
        if fire is None:  # an absence fires at its deadline, not when an event is correlated
            trace = self._key(key)
            fire = Fire([(step, self._trigger(trace, e)) for step, e in match], [])
            trace.fires.append(fire)
        fire.record = record

    # -- helpers --------------------------------------------------------------------------

    def _original(self, event: Event) -> Event:
        """The fed event behind a state's packed twin (an event that was not packed: itself)."""
        return self._originals.get(id(event), event)

    def _trigger(self, trace: KeyTrace, event: Event) -> Event:
        """The fed trigger behind an absence incident's (unpacked) event: the engine tells a
        key's triggers apart by arrival number, and so does this."""
        for trigger in reversed(trace.triggers):
            if trigger.seq == event.seq and trigger.time_ns == event.time_ns:
                return trigger
        return event

    def _retain(self, key: ObservedKey, event: Event, steps: set[int]) -> None:
        """Keep the events the state now holds (as far as evictions can concern them)."""
        corr = self.correlation
        live = self._live.setdefault(key, [])
        if corr.type is CorrelationType.SEQUENCE:
            if any(si < len(corr.steps) - 1 for si in steps):
                live.append(event)
        elif corr.type is CorrelationType.DISTINCT:
            assert corr.field is not None
            value = event.get(corr.field)
            if not _unresolved(value) or value == "":
                text = str(value)
                live[:] = [e for e in live if str(e.get(corr.field)) != text]
                live.append(event)
        else:
            live.append(event)

    def _track_evictions(
        self, trace: KeyTrace, key: ObservedKey, event: Event, state: KeyState
    ) -> None:
        """The per-key cap drops the oldest events: find which, only when the count moved."""
        seen = self._evicted_seen.get(key)
        if seen is not None and seen[0] == id(state) and seen[1] == state.evicted:
            return
        self._evicted_seen[key] = (id(state), state.evicted)
        if seen is None or seen[0] != id(state) or state.evicted <= seen[1]:
            return
        held = {id(self._original(e)) for e in state.held()}
        horizon = event.time_ns - self.correlation.within_ns
        live = self._live.get(key, [])
        for old in live:
            if id(old) not in held and old.time_ns >= horizon and old is not event:
                trace.evicted.append(old)
        self._live[key] = [e for e in live if id(e) in held]

    def _absence(
        self, trace: KeyTrace, key: ObservedKey, event: Event, steps: set[int], state: AbsenceState
    ) -> None:
        before = self._pending.get(key)
        if (
            before is not None
            and 1 in steps
            and state.pending is not before
            and before.seq not in state.due
        ):
            trace.cleared.append((self._original(before), event))
        self._pending[key] = state.pending


def _unresolved(value: object) -> bool:
    return value is None or value == "" or isinstance(value, dict | list)
