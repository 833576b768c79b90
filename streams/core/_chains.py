"""Correlation of correlations in the engine (RULES-SPEC section 7, C1-C5).

`ChainRouting` is the part of `Engine` that turns records into derived events
(streams/core/derived.py) and correlates them for the correlations that reference their
correlation: at once and depth first in replay, `test` and `explain`, or through
`derived_sink`/`submit_derived` for a host that routes them across partitions. Without any
reference between correlations (every v1 ruleset) `_chains` is False and none of it runs.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from streams.core.derived import build_derived_event, key_text
from streams.core.events import Event
from streams.core.prefilter import StepTarget, step_index

if TYPE_CHECKING:
    from streams.core.engine import EngineStats, HeldItem, KeyTuple, StepMatch
    from streams.core.observer import EngineObserver
    from streams.core.rules import Correlation

__all__ = ["ChainRouting"]

_NEG_INF = -(2**63)
_POS_INF = 2**63


class ChainRouting:
    """Mixin of `Engine` (which sets the attributes below before `_init_chains`)."""

    correlations: tuple[Correlation, ...]
    observer: EngineObserver | None
    stats: EngineStats
    track_changes: bool
    changed: set[tuple[int, KeyTuple]]
    _buffer: list[HeldItem]
    _deadlines: list[tuple[int, int, int, KeyTuple]]
    _item_numbers: itertools.count[int]
    _held: dict[tuple[int, KeyTuple], dict[int, HeldItem]]
    _held_changes: dict[tuple[int, KeyTuple], dict[int, HeldItem | None]]

    watermark_ns: int
    _routed: bool
    _level_of: list[int]
    _level_buffers: list[list[HeldItem]]
    _level_deadlines: list[list[tuple[int, int, int, KeyTuple]]]
    level_watermarks: list[int]
    upstream_floors: list[int]
    strict_release: bool
    _released: dict[tuple[int, KeyTuple], tuple[int, int]]
    _restored_seqs: dict[tuple[int, KeyTuple], set[int]]

    if TYPE_CHECKING:

        def _hold(self, buffer: list[HeldItem], event: Event, matches: list[StepMatch]) -> None: ...

        def _hold_by_level(self, event: Event, matches: list[StepMatch]) -> None: ...

        def _correlate(
            self, event: Event, matches: list[StepMatch], out: list[dict[str, Any]]
        ) -> None: ...

        def _fire_absence(
            self, ci: int, key: KeyTuple, seq: int, deadline: int, out: list[dict[str, Any]]
        ) -> None: ...

    def _init_chains(self) -> None:
        """Index, per upstream correlation, the steps of the correlations that reference it.

        Without any reference (every v1 ruleset) `_chains` is False and nothing below runs."""
        corrs = self.correlations
        self.index_of = {corr.name: ci for ci, corr in enumerate(corrs)}
        self._chains = any(corr.references for corr in corrs)
        #: per upstream correlation index: the steps a derived event of it is tested against
        self._derived_targets: dict[int, list[StepTarget]] = {}
        # records emitted by the event being correlated: (ci, key, record); None when no chain
        self._fresh: list[tuple[int, KeyTuple, dict[str, Any]]] | None = None
        #: Set by a host that routes derived events itself (the worker: a dependent's key is
        #: its own `by`, possibly on another partition); None: correlated here at once.
        self.derived_sink: Callable[[Event], None] | None = None
        depth: dict[int, int] = {}
        if not self._chains:
            self._depth = depth
            return
        by_rule, any_rule = step_index(corrs, derived=True)
        for ui, upstream in enumerate(corrs):
            readers = {ci for ci, corr in enumerate(corrs) if upstream.name in corr.references}
            if readers:
                targets = by_rule.get(upstream.name, any_rule)
                self._derived_targets[ui] = [t for t in targets if t[0] in readers]

        def depth_of(ci: int) -> int:
            if ci not in depth:
                ups = [self.index_of[n] for n in corrs[ci].references if n in self.index_of]
                depth[ci] = 1 + max(map(depth_of, ups), default=-1)  # the loader refused cycles
            return depth[ci]

        for ci in range(len(corrs)):
            depth_of(ci)
        self._depth = depth

    def dependents_of(self, ci: int) -> bool:
        """Whether records of correlation `ci` are derived events for some correlation."""
        return ci in self._derived_targets

    def match_derived(self, event: Event) -> list[StepMatch]:
        """Every (correlation, step, key) a derived event takes part in: only steps of the
        correlations that reference its correlation (C3)."""
        assert event.derived is not None
        ui = self.index_of.get(event.derived["correlation"])
        targets = self._derived_targets.get(ui, []) if ui is not None else []
        found: list[StepMatch] = []
        skip_ci = -1
        for ci, si, test, key_of, first_only in targets:
            if ci == skip_ci or (test is not None and not test(event)):
                continue
            if first_only:
                skip_ci = ci
            key = key_of(event)
            if key is not None:
                found.append((ci, si, key))
            elif self.observer is not None:
                self.observer.unkeyed(event, ci, si)
        return found

    def route_derived(self, sink: Callable[[Event], None], *, alone: bool = False) -> None:
        """Hand every derived event to `sink` instead of correlating it here (the worker: a
        dependent's key is its own `by`, so its derived events go to the partition of that
        key, maybe this one, back through `submit_derived`).

        Each level (a correlation's depth: 0 references nothing, 1 references only level 0,
        ...) then has a reorder buffer and a watermark of its own: level L is released below
        min(watermark, `upstream_floors[L]`, level L-1's watermark) (releases are strict: an
        event at a watermark waits), so it takes position p only when every upstream has
        emitted all records before p (C5). The host
        sets `upstream_floors[L]` to the lowest level L-1 watermark the other partitions
        reported (`alone`: there are none); until it does, levels >= 1 wait."""
        self.derived_sink = sink
        self.strict_release = True  # the levels' watermarks rely on it (`Engine._release`)
        if not self._chains:
            return
        levels = 1 + max(self._depth.values(), default=0)
        self._routed = True
        self._level_of = [self._depth[ci] for ci in range(len(self.correlations))]
        self._level_buffers = [self._buffer] + [[] for _ in range(1, levels)]
        self._level_deadlines = [self._deadlines] + [[] for _ in range(1, levels)]
        self.level_watermarks = [self.watermark_ns] + [_NEG_INF] * (levels - 1)
        floor = _POS_INF if alone else _NEG_INF
        self.upstream_floors = [_POS_INF] + [floor] * (levels - 1)

    def not_applied(self, event: Event, matches: list[StepMatch]) -> list[StepMatch]:
        """The matches of a routed derived event that its keys have not taken yet: a key whose
        last released event is at or after its position, or that holds it restored from a
        snapshot, has it already (a chain record read again after a restart)."""
        position = (event.time_ns, event.seq)
        released, restored = self._released, self._restored_seqs
        return [
            m
            for m in matches
            if not (
                ((last := released.get((m[0], m[2]))) is not None and position <= last)
                or event.seq in restored.get((m[0], m[2]), ())
            )
        ]

    @property
    def levels(self) -> int:
        return len(self.level_watermarks)

    def level_of(self, ci: int) -> int:
        return self._depth.get(ci, 0)

    def submit_derived(self, event: Event, matches: list[StepMatch] | None = None) -> bool:
        """Accept a derived event routed from another engine (see `route_derived`): held in
        the reorder buffer of its level at its position, like a Falco event, but never late and
        never moving the watermark (C5). `matches` skips matching (the sender matched it).
        False when it matched nothing here."""
        if matches is None:
            matches = self.match_derived(event)
        if not matches:
            return False
        if self._routed:
            self._hold_by_level(event, matches)
        else:
            self._hold(self._buffer, event, matches)
        return True

    def _derive(
        self,
        fresh: list[tuple[int, KeyTuple, dict[str, Any]]],
        time_ns: int,
        parent_seq: int | None,
        out: list[dict[str, Any]],
    ) -> None:
        """Build the derived events of `fresh` records and correlate them in position order:
        siblings by correlation name then key text, each one's own derived events first."""
        derived = []
        for ci, key, record in fresh:
            if ci not in self._derived_targets:
                continue
            event = build_derived_event(
                self.correlations[ci], key, record, time_ns=time_ns, parent_seq=parent_seq
            )
            derived.append(event)
        derived.sort(key=lambda e: e.seq)
        for event in derived:
            self.stats.derived += 1
            if self.derived_sink is not None:
                self.derived_sink(event)
                continue
            matches = self.match_derived(event)
            if matches:
                self._correlate(event, matches, out)

    def _fire_absences(
        self,
        first: tuple[int, int, int, KeyTuple],
        deadlines: list[tuple[int, int, int, KeyTuple]],
        out: list[dict[str, Any]],
    ) -> None:
        """Every absence due at one deadline, with chains: an absence before the ones that
        reference it (an `expect` at the deadline still clears, wherever its position), then by
        name and key; each one's derived event correlated before the next fires."""
        deadline = first[0]
        batch = [first]
        while deadlines and deadlines[0][0] == deadline:
            batch.append(heapq.heappop(deadlines))
        corrs = self.correlations
        batch.sort(key=lambda d: (self._depth[d[2]], corrs[d[2]].name, key_text(d[3])))
        for _deadline, seq, ci, key in batch:
            outer, self._fresh = self._fresh, []
            try:
                self._fire_absence(ci, key, seq, deadline, out)
            finally:
                fresh, self._fresh = self._fresh, outer
            if fresh:
                self._derive(fresh, deadline, None, out)
