"""The correlation engine: matching, reorder buffer, watermark, state, suppression.

Pure and deterministic: time is event time, passed in; nothing here reads a clock, a socket or a
file. `replay`, `test`, the worker and the benchmarks all drive this class.

Ordering: events are correlated in (event time, arrival) order. An event is held in a reorder
buffer until the watermark (highest event time seen minus lateness) reaches its time; after that
no event that sorts before it can still be accepted, so results do not depend on arrival order
within the lateness bound. Events that match no condition skip the buffer entirely.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from streams.core.correlators import AbsenceState, KeyState, Match, new_state
from streams.core.events import Event
from streams.core.incidents import IncidentAnchor, build_incident, incident_id
from streams.core.rules import Correlation, CorrelationType, Ruleset

__all__ = ["DEFAULT_LATENESS_NS", "Engine", "EngineStats"]

DEFAULT_LATENESS_NS = 10_000_000_000
_NEG_INF = -(2**63)
_POS_INF = 2**63

KeyTuple = tuple[Any, ...]
StepMatch = tuple[int, int, KeyTuple]  # (correlation index, step index, key values)


@dataclass
class EngineStats:
    events: int = 0
    late: int = 0
    matched: int = 0  # events that matched at least one condition
    evicted: int = 0
    template_errors: int = 0
    last_template_error: str | None = None
    matches: Counter[str] = field(default_factory=Counter)
    incidents: Counter[str] = field(default_factory=Counter)
    updates: Counter[str] = field(default_factory=Counter)


def _resolve_key(event: Event, fields: tuple[str, ...]) -> KeyTuple | None:
    values = []
    for name in fields:
        value = event.get(name)
        if value is None or value == "" or isinstance(value, dict | list):
            return None
        values.append(value)
    return tuple(values)


class Engine:
    """Correlates one stream: `submit(event)`; `advance_to` on idle ticks; `finish` at the end."""

    def __init__(
        self,
        ruleset: Ruleset,
        *,
        lateness_ns: int = DEFAULT_LATENESS_NS,
        max_pending: int = 10_000,
        max_incident_events: int = 50,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.ruleset = ruleset
        self.correlations: tuple[Correlation, ...] = ruleset.correlations
        self.lateness_ns = lateness_ns
        self.max_pending = max_pending
        self.max_incident_events = max_incident_events
        self.clock = clock
        self.stats = EngineStats()
        self.max_time_ns = _NEG_INF
        self.watermark_ns = _NEG_INF
        self._buffer: list[tuple[int, int, Event, list[StepMatch]]] = []
        self._deadlines: list[
            tuple[int, int, int, KeyTuple]
        ] = []  # (deadline, trigger seq, ci, key)
        self._states: dict[tuple[int, KeyTuple], KeyState] = {}
        self._anchors: dict[tuple[int, KeyTuple], IncidentAnchor] = {}
        self._by_rule, self._any_rule = self._index()
        self._next_sweep_ns = _NEG_INF

    # -- matching --------------------------------------------------------------------------

    def _index(
        self,
    ) -> tuple[dict[str, list[tuple[int, int]]], list[tuple[int, int]]]:
        """Conditions by the Falco rule names they can match, so an event meets only those."""
        by_rule: dict[str, list[tuple[int, int]]] = defaultdict(list)
        any_rule: list[tuple[int, int]] = []
        for ci, corr in enumerate(self.correlations):
            for si, step in enumerate(corr.steps):
                rules = step.condition.rules
                if rules is None:
                    any_rule.append((ci, si))
                else:
                    for rule in rules:
                        by_rule[rule].append((ci, si))
        for targets in by_rule.values():
            targets.extend(any_rule)
            targets.sort()
        return dict(by_rule), any_rule

    def match(self, event: Event) -> list[StepMatch]:
        """Every (correlation, step, key) the event takes part in."""
        found: list[StepMatch] = []
        correlations = self.correlations
        skip_ci = -1
        for ci, si in self._by_rule.get(event.rule, self._any_rule):
            if ci == skip_ci:
                continue
            corr = correlations[ci]
            step = corr.steps[si]
            if not step.condition.predicate(event):
                continue
            if corr.type is CorrelationType.ALL:
                skip_ci = ci  # `all`: an event belongs to the first step it matches only
            key = _resolve_key(event, step.by)
            if key is not None:
                found.append((ci, si, key))
        return found

    # -- input -----------------------------------------------------------------------------

    def submit(self, event: Event) -> list[dict[str, Any]]:
        """Accept one valid event; returns the incidents this made ready, in emission order."""
        self.stats.events += 1
        if event.time_ns < self.watermark_ns:
            self.stats.late += 1
            return []
        matches = self.match(event)
        if matches:
            self.stats.matched += 1
            heapq.heappush(self._buffer, (event.time_ns, event.seq, event, matches))
        if event.time_ns > self.max_time_ns:
            self.max_time_ns = event.time_ns
            return self._release(event.time_ns - self.lateness_ns)
        return []

    def advance_to(self, watermark_ns: int) -> list[dict[str, Any]]:
        """Move the watermark forward (idle-stream ticks); never moves it back."""
        return self._release(watermark_ns)

    def finish(self, *, flush: bool = False) -> list[dict[str, Any]]:
        """End of input: correlate every buffered event; with flush, fire every absence."""
        if flush:
            return self._release(_POS_INF, release_all=True)
        return self._release(self.watermark_ns, release_all=True)

    # -- release -------------------------------------------------------------------------

    def _release(self, watermark_ns: int, *, release_all: bool = False) -> list[dict[str, Any]]:
        self.watermark_ns = max(self.watermark_ns, watermark_ns)
        wm = self.watermark_ns
        out: list[dict[str, Any]] = []
        buffer, deadlines = self._buffer, self._deadlines
        while True:
            event_ready = bool(buffer) and (release_all or buffer[0][0] <= wm)
            deadline_ready = bool(deadlines) and deadlines[0][0] < wm
            if event_ready and (not deadline_ready or buffer[0][0] <= deadlines[0][0]):
                _, _, event, matches = heapq.heappop(buffer)
                self._correlate(event, matches, out)
            elif deadline_ready:
                deadline, seq, ci, key = heapq.heappop(deadlines)
                self._fire_absence(ci, key, seq, deadline, out)
            else:
                break
        if wm >= self._next_sweep_ns and wm > _NEG_INF:
            self._sweep(wm)
        return out

    def _correlate(self, event: Event, matches: list[StepMatch], out: list[dict[str, Any]]) -> None:
        grouped: dict[tuple[int, KeyTuple], set[int]] = {}
        for ci, si, key in matches:
            grouped.setdefault((ci, key), set()).add(si)
        for (ci, key), steps in grouped.items():
            corr = self.correlations[ci]
            state = self._states.get((ci, key))
            if state is None:
                state = self._states[(ci, key)] = new_state(corr)
            evicted = state.evicted
            match = state.on_event(corr, steps, event, self.max_pending)
            self.stats.evicted += state.evicted - evicted
            if match is None:
                if state.size() == 0:
                    del self._states[(ci, key)]
                continue
            if corr.type is CorrelationType.ABSENCE:
                deadline = event.time_ns + corr.within_ns
                heapq.heappush(self._deadlines, (deadline, event.seq, ci, key))
                continue
            del self._states[(ci, key)]  # consumption: everything up to the match
            self._emit(ci, key, match, event.time_ns, out)

    def _fire_absence(
        self, ci: int, key: KeyTuple, seq: int, deadline: int, out: list[dict[str, Any]]
    ) -> None:
        state = self._states.get((ci, key))
        if not isinstance(state, AbsenceState):
            return
        trigger = state.take(seq)
        if trigger is None:
            return  # cleared by an expect event
        if state.size() == 0:
            del self._states[(ci, key)]
        self._emit(ci, key, [("trigger", trigger)], deadline, out)

    def _emit(
        self, ci: int, key: KeyTuple, match: Match, at_ns: int, out: list[dict[str, Any]]
    ) -> None:
        corr = self.correlations[ci]
        stats = self.stats
        stats.matches[corr.name] += 1
        key_dict = dict(zip(corr.by, key, strict=True))
        last_ns = match[-1][1].time_ns
        anchor = self._anchors.get((ci, key))
        if (
            anchor is not None
            and corr.suppress_ns is not None
            and last_ns - anchor.anchor_ns < corr.suppress_ns
        ):
            anchor.count += 1
            status = "update"
            stats.updates[corr.name] += 1
        else:
            first = match[0][1]
            anchor = IncidentAnchor(
                id=incident_id(corr.name, key_dict, first),
                anchor_ns=last_ns,
                first_seen_ns=first.time_ns,
            )
            if corr.suppress_ns is not None:
                self._anchors[(ci, key)] = anchor
            status = "new"
            stats.incidents[corr.name] += 1
        detected = self.clock() if self.clock is not None else at_ns
        record, error = build_incident(
            corr,
            key_dict,
            match,
            anchor,
            status=status,
            ruleset=self.ruleset.digest,
            detected_at_ns=detected,
            max_events=self.max_incident_events,
        )
        if error is not None:
            stats.template_errors += 1
            stats.last_template_error = f"{corr.name}: {error}"
        out.append(record)

    # -- bounded state -------------------------------------------------------------------------

    def _sweep(self, wm: int) -> None:
        """Drop state no window or suppression can use any more."""
        shortest = min((c.within_ns for c in self.correlations), default=0)
        self._next_sweep_ns = wm + max(shortest // 2, 1_000_000_000)
        for (ci, key), state in list(self._states.items()):
            corr = self.correlations[ci]
            if isinstance(state, AbsenceState):
                if state.size() == 0:
                    del self._states[(ci, key)]
                continue
            # Buffered events are at or after the watermark, so windows start after wm - within.
            state.expire(wm - corr.within_ns)
            if state.size() == 0:
                del self._states[(ci, key)]
        for (ci, key), anchor in list(self._anchors.items()):
            suppress = self.correlations[ci].suppress_ns
            if suppress is None or anchor.anchor_ns + suppress <= wm:
                del self._anchors[(ci, key)]

    @property
    def state_entries(self) -> int:
        return len(self._states)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def submit_many(self, events: Iterable[Event]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for event in events:
            out.extend(self.submit(event))
        return out
