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
import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streams.core._chains import ChainRouting
from streams.core.correlators import KeyState, Match
from streams.core.events import Event
from streams.core.incidents import IncidentAnchor, build_incident, incident_id
from streams.core.matcher import KeyTuple, Matcher, StepMatch
from streams.core.rules import Correlation, Ruleset
from streams.core.state_types import state_type

if TYPE_CHECKING:
    from streams.core.observer import EngineObserver

__all__ = [
    "DEFAULT_LATENESS_NS",
    "DEFAULT_MAX_STATE_ENTRIES",
    "PACK_STATE_ABOVE",
    "Engine",
    "EngineEntry",
    "EngineStats",
    "HeldItem",
    "KeyTuple",
    "StepMatch",
]

DEFAULT_LATENESS_NS = 10_000_000_000
#: The global bound on (correlation, key) entries with partial matches, and separately on
#: suppression anchors; past it the least recently used are evicted (`stats.evicted_keys`).
#: bench/state_memory.py measures 0.6-1.6 KB per entry with ~0.8 KB Falco events.
DEFAULT_MAX_STATE_ENTRIES = 1_000_000
#: Past this many state entries, events are kept packed (compact JSON bytes, about half the
#: memory of the decoded payload); below it, keeping them decoded saves packing them.
PACK_STATE_ABOVE = 10_000
_NEG_INF = -(2**63)
_POS_INF = 2**63

# A buffered event: (time, arrival, (first correlation index, unique number), event, matches).
# The third element orders the items of one event restored per key as the original item was
# correlated (by correlation index) and keeps the heap from ever comparing events.
HeldItem = tuple[int, int, tuple[int, int], Event, list[StepMatch]]


@dataclass
class EngineStats:
    events: int = 0
    late: int = 0
    matched: int = 0  # events that matched at least one condition
    evicted: int = 0  # events dropped by the per-key cap (max_pending)
    evicted_keys: int = 0  # keys dropped by the global bound (max_state_entries), LRU first
    duplicates: int = 0  # redelivered records dropped (worker)
    template_errors: int = 0
    last_template_error: str | None = None
    derived: int = 0  # derived events (records given to the correlations that reference them)
    matches: Counter[str] = field(default_factory=Counter)
    incidents: Counter[str] = field(default_factory=Counter)
    updates: Counter[str] = field(default_factory=Counter)


@dataclass
class EngineEntry:
    """What the engine keeps for one (correlation, key); see streams/core/snapshot.py."""

    state: KeyState | None
    held: list[HeldItem]
    anchor: IncidentAnchor | None
    sources: dict[int, int]
    # (time, seq) of the last event released from the key's held events: a held event at or
    # before it is in `state` already (its deletion may not have been written, see `restore`)
    released: tuple[int, int] | None = None


def _inert_steps(corr: Correlation) -> frozenset[int]:
    """Steps whose events leave a new state of `corr` empty and match nothing (its type says)."""
    return state_type(corr.type).inert_steps(corr)


class Engine(ChainRouting):
    """Correlates one stream: `submit(event)`; `advance_to` on idle ticks; `finish` at the end."""

    def __init__(
        self,
        ruleset: Ruleset,
        *,
        lateness_ns: int = DEFAULT_LATENESS_NS,
        max_pending: int = 10_000,
        max_state_entries: int = DEFAULT_MAX_STATE_ENTRIES,
        pack_state_above: int = PACK_STATE_ABOVE,
        max_incident_events: int = 50,
        clock: Callable[[], int] | None = None,
        track_changes: bool = False,
        observer: EngineObserver | None = None,
        strict_release: bool = False,
    ) -> None:
        self.ruleset = ruleset
        # Release only events strictly before the watermark (the worker): an event at exactly
        # the watermark is not late, and in the worker its position (source offset and
        # partition) need not follow its arrival, so it may still sort before one that arrived
        # earlier. In replay a later arrival is a later position, so releasing at the watermark
        # gives the same order, sooner.
        self.strict_release = strict_release
        # Told about every decision (`explain`); None on every production path.
        self.observer = observer
        self.correlations: tuple[Correlation, ...] = ruleset.correlations
        self.lateness_ns = lateness_ns
        self.max_pending = max_pending
        self.max_state_entries = max_state_entries
        self.pack_state_above = pack_state_above
        self.max_incident_events = max_incident_events
        self.clock = clock
        self.stats = EngineStats()
        self.max_time_ns = _NEG_INF
        self.watermark_ns = _NEG_INF
        self._buffer: list[HeldItem] = []
        self._deadlines: list[
            tuple[int, int, int, KeyTuple]
        ] = []  # (deadline, trigger seq, ci, key)
        self._states: dict[tuple[int, KeyTuple], KeyState] = {}
        self._anchors: dict[tuple[int, KeyTuple], IncidentAnchor] = {}
        self.matcher = Matcher(ruleset)
        self._inert = [_inert_steps(corr) for corr in self.correlations]
        self._state_types = [state_type(corr.type) for corr in self.correlations]
        self._next_sweep_ns = _NEG_INF
        self._sweep_after = 0
        # For a persistent host (the worker): which (correlation, key) entries changed since the
        # last `take_changes()`, the events each key still holds in the reorder buffer, and the
        # highest source offset per source partition each key has applied (redelivery dedup).
        self.track_changes = track_changes
        self._item_numbers = itertools.count()
        self.changed: set[tuple[int, KeyTuple]] = set()
        # per key, its held items by id (insertion-ordered; O(1) to release one); and per key
        # the held items added (item) or released (None) since the last `take_held_changes`
        self._held: dict[tuple[int, KeyTuple], dict[int, HeldItem]] = {}
        self._held_changes: dict[tuple[int, KeyTuple], dict[int, HeldItem | None]] = {}
        self._sources: dict[tuple[int, KeyTuple], dict[int, int]] = {}
        # per key, the seqs of the held events restored from a snapshot (see `restore`)
        self._restored_seqs: dict[tuple[int, KeyTuple], set[int]] = {}
        self._released: dict[tuple[int, KeyTuple], tuple[int, int]] = {}
        # Routed chains (`route_derived`, the worker): one reorder buffer and deadline heap per
        # level (a correlation's depth in the reference graph), each released up to its own
        # watermark; without them level 0 is all there is.
        self._routed = False
        self._level_of: list[int] = []
        self._level_buffers: list[list[HeldItem]] = [self._buffer]
        self._level_deadlines: list[list[tuple[int, int, int, KeyTuple]]] = [self._deadlines]
        #: per level, the watermark it was released to (level 0: `watermark_ns`)
        self.level_watermarks: list[int] = [_NEG_INF]
        #: per level >= 1, set by the host: the lowest level-1-below watermark reported by the
        #: other partitions (`route_derived`)
        self.upstream_floors: list[int] = [_POS_INF]
        self._init_chains()

    # -- matching --------------------------------------------------------------------------

    def match(self, event: Event) -> list[StepMatch]:
        """Every (correlation, step, key) the event takes part in (`Matcher`)."""
        return self.matcher.match(event, self.observer)

    # -- input -----------------------------------------------------------------------------

    def submit(
        self,
        event: Event,
        matches: list[StepMatch] | None = None,
        source: tuple[int, int] | None = None,
        *,
        observe: bool = True,
    ) -> list[dict[str, Any]]:
        """Accept one valid event; returns the incidents this made ready, in emission order.

        `matches` skips matching when the caller matched already (the worker matches at ingest);
        `source` (partition, offset) drops a redelivered copy for keys that applied it already;
        `observe=False` leaves the event's time out of the watermark (the worker drives it from
        the ingest stage's high-water mark instead).
        """
        self.stats.events += 1
        if source is not None and matches:
            # a redelivered copy (after a crash or a rebalance) is a duplicate, not late: keys
            # that applied it already drop it before the lateness check
            matches = self._first_delivery(matches, source, event.seq)
            if not matches:
                return []
            source = None
        if event.time_ns < self.watermark_ns:
            self.stats.late += 1
            if self.observer is not None:
                self.observer.late(event)
            return []
        if matches is None:
            matches = self.match(event)
        if source is not None and matches:
            matches = self._first_delivery(matches, source, event.seq)
        if matches:
            self.stats.matched += 1
            if self._routed:
                self._hold_by_level(event, matches)
            else:
                self._hold(self._buffer, event, matches)
        # `observe`, inlined: this runs for every event.
        time_ns = event.time_ns
        if observe and time_ns > self.max_time_ns:
            self.max_time_ns = time_ns
            return self._release(time_ns - self.lateness_ns)
        return []

    def _hold(self, buffer: list[HeldItem], event: Event, matches: list[StepMatch]) -> None:
        """Put an event in a reorder buffer until the watermark reaches it."""
        item = (event.time_ns, event.seq, (matches[0][0], next(self._item_numbers)), event, matches)
        heapq.heappush(buffer, item)
        if self.track_changes:
            for ci, _si, key in matches:
                self._held.setdefault((ci, key), {})[id(item)] = item
                self._held_changes.setdefault((ci, key), {})[event.seq] = item
                self.changed.add((ci, key))

    def _hold_by_level(self, event: Event, matches: list[StepMatch]) -> None:
        """Routed chains: one item per level the event's matches are at."""
        level_of = self._level_of
        first = level_of[matches[0][0]]
        if all(level_of[m[0]] == first for m in matches):
            self._hold(self._level_buffers[first], event, matches)
            return
        by_level: dict[int, list[StepMatch]] = {}
        for match in matches:
            by_level.setdefault(level_of[match[0]], []).append(match)
        for level, level_matches in by_level.items():
            self._hold(self._level_buffers[level], event, level_matches)

    def observe(self, time_ns: int) -> list[dict[str, Any]]:
        """Take a time as seen (an event's, or a high-water mark carried from upstream)."""
        if time_ns > self.max_time_ns:
            self.max_time_ns = time_ns
            return self._release(time_ns - self.lateness_ns)
        return []

    def _first_delivery(
        self, matches: list[StepMatch], source: tuple[int, int], seq: int
    ) -> list[StepMatch]:
        partition, offset = source
        fresh: set[tuple[int, KeyTuple]] = set()
        restored = self._restored_seqs
        for ci, _si, key in matches:
            if (ci, key) in fresh:
                continue
            if restored and seq in restored.get((ci, key), ()):
                # the same record again (its held copy was restored, its key's marks were not
                # written yet when the host stopped)
                self.stats.duplicates += 1
                continue
            seen = self._sources.setdefault((ci, key), {})
            if seen.get(partition, -1) >= offset:
                self.stats.duplicates += 1
                continue
            seen[partition] = offset
            fresh.add((ci, key))
        return [m for m in matches if (m[0], m[2]) in fresh]

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
        if not self._routed:
            self._release_level(self._buffer, self._deadlines, wm, release_all, out)
        else:
            # Level by level: a level's watermark stays at what its upstream levels have released
            # everywhere (C5; releases are strict: only what is before a watermark), so every
            # derived event it can still get is at or after it.
            marks, floors = self.level_watermarks, self.upstream_floors
            marks[0] = wm
            self._release_level(self._buffer, self._deadlines, wm, release_all, out)
            for level in range(1, len(marks)):
                limit = min(wm, floors[level], marks[level - 1])
                marks[level] = max(marks[level], limit)
                self._release_level(
                    self._level_buffers[level],
                    self._level_deadlines[level],
                    marks[level],
                    release_all,
                    out,
                )
        # Sweep when event time moved on by half the shortest window, but not more often than
        # every 1000 events: sparse streams with large time gaps would otherwise sweep per event.
        if wm >= self._next_sweep_ns and wm > _NEG_INF and self.stats.events >= self._sweep_after:
            self._sweep_after = self.stats.events + 1000
            self._sweep(wm)
        return out

    def _release_level(
        self,
        buffer: list[HeldItem],
        deadlines: list[tuple[int, int, int, KeyTuple]],
        wm: int,
        release_all: bool,
        out: list[dict[str, Any]],
    ) -> None:
        pop, track = heapq.heappop, self.track_changes
        released_to = wm - 1 if self.strict_release else wm
        while True:
            # The earliest of the next event and the next deadline, events first on a tie.
            if buffer and (release_all or buffer[0][0] <= released_to):
                if not (deadlines and deadlines[0][0] < wm and deadlines[0][0] < buffer[0][0]):
                    item = pop(buffer)
                    if track:
                        self._unhold(item)
                    matches = item[4]
                    if self._chains:
                        # One event restored per key is several items (`restore`): correlate
                        # it once, so its derived events come after it for every correlation.
                        while buffer and buffer[0][1] == item[1] and buffer[0][0] == item[0]:
                            twin = pop(buffer)
                            if track:
                                self._unhold(twin)
                            matches = matches + twin[4]
                    self._correlate(item[3], matches, out)
                    continue
            elif not (deadlines and deadlines[0][0] < wm):
                break
            due = pop(deadlines)
            if self._chains:
                self._fire_absences(due, deadlines, out)
                continue
            deadline, seq, ci, key = due
            self._fire_absence(ci, key, seq, deadline, out)

    def _correlate(self, event: Event, matches: list[StepMatch], out: list[dict[str, Any]]) -> None:
        if not self._chains:
            self._correlate_event(event, matches, out)
            return
        outer, self._fresh = self._fresh, []
        try:
            self._correlate_event(event, matches, out)
        finally:
            fresh, self._fresh = self._fresh, outer
        if fresh:
            self._derive(fresh, event.time_ns, event.seq, out)

    def _correlate_event(
        self, event: Event, matches: list[StepMatch], out: list[dict[str, Any]]
    ) -> None:
        observer = self.observer
        if len(matches) == 1:  # the common case: one step of one correlation
            ci, si, key = matches[0]
            grouped = {(ci, key): {si}}
        else:
            grouped = {}
            for ci, si, key in matches:
                grouped.setdefault((ci, key), set()).add(si)
        if len(self._states) >= self.pack_state_above:
            event = event.packed()  # one twin, shared by every state that keeps it
        for (ci, key), steps in grouped.items():
            corr = self.correlations[ci]
            if self.track_changes:
                self.changed.add((ci, key))
            state = self._states.pop((ci, key), None)
            if state is None:
                if observer is None and steps <= self._inert[ci]:
                    continue  # a new state would stay empty and match nothing
                state = self._state_types[ci].for_correlation(corr)
            # (Re-)inserted last: dict order is least recently used first, for the global bound.
            self._states[(ci, key)] = state
            evicted = state.evicted
            match = state.on_event(corr, steps, event, self.max_pending)
            self.stats.evicted += state.evicted - evicted
            if observer is not None:
                observer.fed(ci, key, steps, event, state=state, match=match)
            if match is None:
                if state.size() == 0:
                    del self._states[(ci, key)]
                elif len(self._states) > self.max_state_entries:
                    self._evict_oldest(self._states)
                continue
            if not state.consumes:  # new_term: firing keeps the history (N5)
                if len(self._states) > self.max_state_entries:
                    self._evict_oldest(self._states)
                self._emit(ci, key, match, event.time_ns, out)
                continue
            deadline = state.deadline(corr, event)
            if deadline is not None:  # absence: a trigger, not an incident yet
                heapq.heappush(self._deadlines_of(ci), (deadline, event.seq, ci, key))
                if len(self._states) > self.max_state_entries:
                    self._evict_oldest(self._states)
                continue
            del self._states[(ci, key)]  # consumption: everything up to the match
            self._emit(ci, key, match, event.time_ns, out)

    def _fire_absence(
        self, ci: int, key: KeyTuple, seq: int, deadline: int, out: list[dict[str, Any]]
    ) -> None:
        state = self._states.get((ci, key))
        if state is None:
            return
        trigger = state.take(seq)
        if trigger is None:
            return  # cleared by an expect event
        if self.track_changes:
            self.changed.add((ci, key))
        if state.size() == 0:
            del self._states[(ci, key)]
        self._emit(ci, key, [("trigger", trigger)], deadline, out)

    def _emit(
        self, ci: int, key: KeyTuple, match: Match, at_ns: int, out: list[dict[str, Any]]
    ) -> None:
        corr = self.correlations[ci]
        match = [(step, event.unpacked()) for step, event in match]
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
                if len(self._anchors) > self.max_state_entries:
                    self._evict_oldest(self._anchors)
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
        if self.observer is not None:
            self.observer.emitted(ci, key, match, record)
        out.append(record)
        if self._fresh is not None:
            self._fresh.append((ci, key, record))

    # -- bounded state -------------------------------------------------------------------------

    def _evict_oldest(self, table: dict[tuple[int, KeyTuple], Any]) -> None:
        """Drop the first (least recently used) entry of `table` to keep the global bound.

        A key evicted from `_states` loses its partial matches (an absence its pending trigger);
        one evicted from `_anchors` loses suppression (its next match opens a new incident)."""
        oldest = next(iter(table))
        del table[oldest]
        self.stats.evicted_keys += 1
        if self.track_changes:
            self.changed.add(oldest)

    def _sweep(self, wm: int) -> None:
        """Drop state no window or suppression can use any more."""
        shortest = min((c.within_ns for c in self.correlations), default=0)
        self._next_sweep_ns = wm + max(shortest // 2, 1_000_000_000)
        routed, level_of, marks = self._routed, self._level_of, self.level_watermarks
        for (ci, key), state in list(self._states.items()):
            corr = self.correlations[ci]
            # Buffered events are at or after the watermark, so windows start after wm - within.
            at = marks[level_of[ci]] if routed else wm
            before = state.size()
            state.expire(at - corr.within_ns)
            if state.size() != before and self.track_changes:
                self.changed.add((ci, key))
            if state.size() == 0:
                del self._states[(ci, key)]
        for (ci, key), anchor in list(self._anchors.items()):
            corr = self.correlations[ci]
            at = marks[level_of[ci]] if routed else wm
            horizon = state_type(corr.type).suppression_horizon(corr, at)
            if corr.suppress_ns is None or anchor.anchor_ns + corr.suppress_ns <= horizon:
                del self._anchors[(ci, key)]
                if self.track_changes:
                    self.changed.add((ci, key))

    # -- persistence (the worker writes changed entries to a changelog-backed table) ---------

    def _unhold(self, item: HeldItem) -> None:
        for ci, _si, key in item[4]:
            held = self._held.get((ci, key))
            if held is not None:
                # releases go in (time, seq) order (a derived event's seq is its position)
                self._released[(ci, key)] = (item[0], item[1])
                self.changed.add((ci, key))
                held.pop(id(item), None)
                if not held:
                    del self._held[(ci, key)]
                changes = self._held_changes.setdefault((ci, key), {})
                if changes.get(item[1]) is item:
                    del changes[item[1]]  # held and released between two takes: never written
                else:
                    changes[item[1]] = None

    def take_changes(self) -> set[tuple[int, KeyTuple]]:
        """The (correlation index, key) entries changed since the last call."""
        changed, self.changed = self.changed, set()
        return changed

    def entry(self, ci: int, key: KeyTuple, *, held: bool = True) -> EngineEntry | None:
        """Everything the engine holds for one (correlation, key), or None when nothing.

        `held=False` leaves the held events out (the worker writes them one by one, see
        `held_items`)."""
        items = self._held.get((ci, key))
        entry = EngineEntry(
            state=self._states.get((ci, key)),
            held=[
                (t, seq, n, event, [m for m in matches if m[0] == ci and m[2] == key])
                for t, seq, n, event, matches in (items or {}).values()
            ]
            if held
            else [],
            anchor=self._anchors.get((ci, key)),
            sources=self._sources.get((ci, key), {}),
            released=self._released.get((ci, key)),
        )
        if entry.state is None and not items and entry.anchor is None:
            self._sources.pop((ci, key), None)
            self._released.pop((ci, key), None)
            return None
        return entry

    def take_held_changes(self) -> dict[tuple[int, KeyTuple], dict[int, HeldItem | None]]:
        """Per (correlation, key), by event seq: items held (the item) or released (None)
        since the last call — what a persistent host must write or delete."""
        changes, self._held_changes = self._held_changes, {}
        return changes

    def held_items(self, ci: int, key: KeyTuple) -> list[HeldItem]:
        """The events held in the reorder buffer for one (correlation, key), unfiltered: their
        matches may name other keys too."""
        return list(self._held.get((ci, key), {}).values())

    def restore(self, ci: int, key: KeyTuple, entry: EngineEntry) -> None:
        """Put back an entry saved with `entry()` (recovery after a restart or a rebalance)."""
        if entry.state is not None:
            self._states[(ci, key)] = entry.state
            if len(self._states) > self.max_state_entries:
                self._evict_oldest(self._states)
            for deadline, seq in entry.state.deadlines(self.correlations[ci]):
                heapq.heappush(self._deadlines_of(ci), (deadline, seq, ci, key))
        if entry.anchor is not None:
            self._anchors[(ci, key)] = entry.anchor
            if len(self._anchors) > self.max_state_entries:
                self._evict_oldest(self._anchors)
        if entry.sources:
            self._sources[(ci, key)] = dict(entry.sources)
        released = entry.released
        if released is not None:
            self._released[(ci, key)] = released
        for time_ns, seq, _, event, matches in entry.held:
            if released is not None and (time_ns, seq) <= released:
                continue  # released into `state` before the host stopped
            item = (time_ns, seq, (ci, next(self._item_numbers)), event, matches)
            heapq.heappush(self._buffer_of(ci), item)
            self._held.setdefault((ci, key), {})[id(item)] = item
            # A host writes a held event before the entry that marks its source as applied: a
            # restore can hold the event without the mark, and then the record comes again.
            self._restored_seqs.setdefault((ci, key), set()).add(seq)

    def _buffer_of(self, ci: int) -> list[HeldItem]:
        return self._level_buffers[self._level_of[ci]] if self._routed else self._buffer

    def _deadlines_of(self, ci: int) -> list[tuple[int, int, int, KeyTuple]]:
        return self._level_deadlines[self._level_of[ci]] if self._routed else self._deadlines

    def newest_event_ns(self) -> int:
        """The latest event time the engine holds (buffered or in state), or -inf."""
        newest = max(
            (item[0] for buffer in self._level_buffers for item in buffer), default=_NEG_INF
        )
        for state in self._states.values():
            newest = max(newest, state.newest_ns)
        return newest

    def restore_clock(self, max_time_ns: int, watermark_ns: int) -> None:
        self.max_time_ns = max(self.max_time_ns, max_time_ns)
        self.watermark_ns = max(self.watermark_ns, watermark_ns)
        self.level_watermarks[0] = self.watermark_ns

    def entry_keys(self) -> set[tuple[int, KeyTuple]]:
        """Every (correlation index, key) the engine holds anything for."""
        return set(self._states) | set(self._held) | set(self._anchors)

    @property
    def state_entries(self) -> int:
        return len(self._states)

    @property
    def buffered(self) -> int:
        return sum(len(buffer) for buffer in self._level_buffers)
