"""Why a correlation did or did not fire: partial matches and their stop reasons.

Input: a `CorrelationTrace` (streams/core/trace.py), i.e. what one engine run decided. Output: per
group key, every partial match ("attempt") with the steps it filled and why it stopped, and the
near misses ranked across keys. An attempt starts at each event that could open a match (a
first-step event of a sequence; any matching event for `all`, `count`, `distinct`; a trigger that
became pending for `absence`) and takes, step after step, the earliest event that fits within
`within` of its start: the chain that gets furthest from there. Windows of `all`/`count`/`distinct`
that lie inside an earlier one are not repeated.

Stop reasons, checked in this order (the first that applies is reported):
- `fired` / `suppressed`: the match became a new incident / an update of one (`suppress`).
- `consumed`: its events were consumed when an incident of the same key fired with other events.
- `evicted`: one of its events was dropped by the per-key cap (`max_pending`).
- `late`: an event that would have filled the missing step arrived after the watermark had passed.
- `by_field_missing`: an event matched the missing step within the window, but a `by` field of that
  step was missing or null (it belongs to no key, so every waiting key reports it).
- `outside_within`: the missing step matched for this key, but more than `within` from the start.
- `never_matched` (sequence, all) / `threshold_not_reached` (count, distinct): nothing else came.
- absence: `cleared` (an `expect` came in time) or `pending_at_end` (deadline not passed).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from streams.core._explain_new_term import new_term_attempts
from streams.core.events import Event
from streams.core.observer import ObservedKey
from streams.core.rules import Correlation, CorrelationType
from streams.core.trace import CorrelationTrace, Fire, KeyTrace, UnkeyedEvent

__all__ = [
    "NEAR_MISS_REASONS",
    "Attempt",
    "Explanation",
    "KeyExplanation",
    "explain_trace",
    "rank_near_misses",
]

# Reasons of attempts that did not become (or feed) an incident.
NEAR_MISS_REASONS = frozenset(
    {
        "evicted",
        "late",
        "by_field_missing",
        "outside_within",
        "never_matched",
        "threshold_not_reached",
        "cleared",
        "pending_at_end",
        "learning",
    }
)
_MAX_SEQ = 2**63  # sorts after every arrival number of the same time
# The missing piece did occur, but could not be used.
_SEEN_REASONS = frozenset({"late", "by_field_missing", "outside_within", "evicted"})


@dataclass
class Attempt:
    """One partial (or complete) match of a key. `hits`: (step name, event) in report order."""

    key: ObservedKey
    hits: list[tuple[str, Event]]
    reason: str
    progress: float  # 0..1: steps filled, share of the threshold, or share of the absence window
    step: str | None = None  # the missing step, when one was
    other: Event | None = None  # the event behind the reason (late, unkeyed, outside, expect)
    delta_ns: int | None = None  # outside_within / cleared: from the start to `other`
    record: dict[str, Any] | None = None  # fired / suppressed / consumed: that incident record
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def near_miss(self) -> bool:
        return self.reason in NEAR_MISS_REASONS


@dataclass
class KeyExplanation:
    key: ObservedKey
    attempts: list[Attempt]
    late: list[Event]
    fed: int


@dataclass
class Explanation:
    correlation: Correlation
    keys: list[KeyExplanation]
    unkeyed: list[UnkeyedEvent]
    late_unkeyed: list[Event]


def explain_trace(trace: CorrelationTrace, *, end_ns: int) -> Explanation:
    """Every attempt of every key; `end_ns` is the last event time the engine saw."""
    unkeyed = sorted(trace.unkeyed_events, key=lambda u: (u.event.time_ns, u.event.seq))
    corr = trace.correlation
    keys = [_KeyAnalysis(corr, kt, unkeyed, end_ns).run() for kt in trace.keys.values()]
    keys.sort(key=lambda k: _attempt_order(k.attempts[0]) if k.attempts else (0, 0))
    return Explanation(corr, keys, unkeyed, [le.event for le in trace.late_unkeyed])


def rank_near_misses(explanation: Explanation) -> list[Attempt]:
    """The attempts that did not fire and got furthest, across keys, best first.

    By progress; then those whose missing piece did occur (late, without a key, outside the
    window, evicted) before those where it never came; then the smallest overshoot of the window;
    then the most recent.
    """
    misses = [a for k in explanation.keys for a in k.attempts if a.near_miss]

    def rank(a: Attempt) -> tuple[float, int, int, int]:
        last = max((e.time_ns for _, e in a.hits), default=0)
        return (a.progress, a.reason in _SEEN_REASONS, -a.detail.get("overshoot_ns", 0), last)

    return sorted(misses, key=rank, reverse=True)


class _KeyAnalysis:
    def __init__(
        self, corr: Correlation, kt: KeyTrace, unkeyed: list[UnkeyedEvent], end_ns: int
    ) -> None:
        self.corr, self.kt, self.end_ns = corr, kt, end_ns
        self.unkeyed = unkeyed
        self.unkeyed_at = [(u.event.time_ns, u.event.seq) for u in unkeyed]
        self.fired = {id(e) for fire in kt.fires for _, e in fire.match}
        self.consumed_by = {id(e): fire for fire in kt.fires for e in fire.consumed}
        self.evicted = {id(e) for e in kt.evicted}
        self.pos = {id(f.event): i for i, f in enumerate(kt.fed)}
        # Usable events (not in a fired match): positions and times, overall and per step.
        self.usable = [i for i, f in enumerate(kt.fed) if id(f.event) not in self.fired]
        self.usable_ns = [kt.fed[i].event.time_ns for i in self.usable]
        self.step_pos: dict[int, list[int]] = {}
        for i in self.usable:
            for si in kt.fed[i].steps:
                self.step_pos.setdefault(si, []).append(i)
        self.step_ns = {si: [kt.fed[i].event.time_ns for i in p] for si, p in self.step_pos.items()}

    def run(self) -> KeyExplanation:
        attempts = [self._fired(fire) for fire in self.kt.fires if fire.record is not None]
        if self.corr.type is CorrelationType.NEW_TERM:
            attempts += new_term_attempts(self.corr, self.kt, self.fired)
        elif self.corr.type is CorrelationType.ABSENCE:
            attempts += self._absence()
        elif self.corr.type is CorrelationType.SEQUENCE:
            attempts += self._sequence()
        else:
            attempts += self._windowed()
        attempts.sort(key=_attempt_order)
        late = [le.event for le in self.kt.late]
        return KeyExplanation(self.kt.key, attempts, late, len(self.kt.fed))

    # -- shared ---------------------------------------------------------------------------

    def _name(self, si: int) -> str:
        return self.corr.steps[si].name

    def _fired(self, fire: Fire) -> Attempt:
        record = fire.record or {}
        reason = "suppressed" if record.get("status") == "update" else "fired"
        return Attempt(self.kt.key, list(fire.match), reason, 1.0, record=record)

    def _limit(self, start: Event) -> int:
        """Position from which events can no longer join an attempt opened by `start`."""
        fire = self.consumed_by.get(id(start))
        if fire is None:
            return len(self.kt.fed)
        return self.pos.get(id(fire.match[-1][1]), len(self.kt.fed))

    def _dropped(self, attempt: Attempt, start: Event) -> bool:
        """consumed / evicted: the engine dropped the attempt's events."""
        fire = self.consumed_by.get(id(start))
        if fire is not None:
            attempt.reason, attempt.record = "consumed", fire.record
            return True
        if any(id(e) in self.evicted for _, e in attempt.hits):
            attempt.reason = "evicted"
            return True
        return False

    def _step_event(
        self, si: int, begin: int, limit: int, after_ns: int | None = None
    ) -> int | None:
        """The first usable event of step `si` in positions [begin, limit), after `after_ns`."""
        positions = self.step_pos.get(si, [])
        j = bisect.bisect_left(positions, begin)
        if after_ns is not None:
            j = max(j, bisect.bisect_right(self.step_ns.get(si, []), after_ns))
        return positions[j] if j < len(positions) and positions[j] < limit else None

    def _unused(self, si: int | None, after: Event, deadline: int) -> tuple[str, Event] | None:
        """A late or unkeyed event that would have filled step `si` (None: any) in the window."""
        bound = (after.time_ns, after.seq)
        for late in self.kt.late:
            e = late.event
            in_window = bound < _at(e) <= (deadline, _MAX_SEQ)
            if in_window and (si is None or si in late.steps):
                return "late", e
        for j in range(bisect.bisect_right(self.unkeyed_at, bound), len(self.unkeyed)):
            unkeyed = self.unkeyed[j]
            if unkeyed.event.time_ns > deadline:
                break
            if si is None or si in unkeyed.steps:
                return "by_field_missing", unkeyed.event
        return None

    def _set_unused(self, attempt: Attempt, found: tuple[str, Event]) -> None:
        attempt.reason, attempt.other = found
        if attempt.reason == "by_field_missing":
            missing = next(u.missing for u in self.unkeyed if u.event is attempt.other)
            attempt.detail["missing"] = list(missing)

    def _set_outside(self, attempt: Attempt, start: Event, other: Event) -> None:
        attempt.reason, attempt.other = "outside_within", other
        attempt.delta_ns = other.time_ns - start.time_ns
        attempt.detail["overshoot_ns"] = max(abs(attempt.delta_ns) - self.corr.within_ns, 0)

    # -- sequence ---------------------------------------------------------------------------

    def _sequence(self) -> list[Attempt]:
        fed, n = self.kt.fed, len(self.corr.steps)
        attempts: list[Attempt] = []
        for p0 in self.step_pos.get(0, []):
            start = fed[p0].event
            deadline = start.time_ns + self.corr.within_ns
            limit = self._limit(start)
            hits, bound, missing = [(self._name(0), start)], p0, None
            for si in range(1, n):
                q = self._step_event(si, bound + 1, limit)
                if q is None or fed[q].event.time_ns > deadline:
                    missing = si
                    break
                bound = q
                hits.append((self._name(si), fed[q].event))
            attempt = Attempt(self.kt.key, hits, "never_matched", len(hits) / n)
            attempts.append(attempt)
            if not self._dropped(attempt, start) and missing is not None:
                self._sequence_missing(attempt, missing, bound, limit)
        if not attempts and not self.kt.fires and fed:
            # Only later steps matched for this key: nothing opened a match.
            attempt = Attempt(self.kt.key, [], "never_matched", 0.0, step=self._name(0))
            attempt.other = fed[0].event
            attempt.detail["matched_steps"] = sorted(
                {self._name(si) for f in fed for si in f.steps}
            )
            attempts.append(attempt)
        return attempts

    def _sequence_missing(self, attempt: Attempt, si: int, bound: int, limit: int) -> None:
        """Why step `si` was not filled after the attempt's last hit (at position `bound`)."""
        attempt.step = self._name(si)
        start, last = attempt.hits[0][1], attempt.hits[-1][1]
        deadline = start.time_ns + self.corr.within_ns
        found = self._unused(si, last, deadline)
        if found is not None:
            self._set_unused(attempt, found)
            return
        q = self._step_event(si, bound + 1, limit, after_ns=deadline)
        if q is not None:
            self._set_outside(attempt, start, self.kt.fed[q].event)
            return
        positions = self.step_pos.get(si, [])
        j = bisect.bisect_left(positions, bound) - 1
        if j >= 0:
            attempt.other = self.kt.fed[positions[j]].event
            attempt.detail["matched_before"] = True
        if deadline >= self.end_ns:
            attempt.detail["window_open_at_end"] = True

    # -- all, count, distinct: every usable event may open a window ------------------------

    def _windowed(self) -> list[Attempt]:
        fed = self.kt.fed
        attempts: list[Attempt] = []
        reached = -1  # end (in `usable`) of the furthest window reported so far
        for a, p0 in enumerate(self.usable):
            start = fed[p0].event
            deadline = start.time_ns + self.corr.within_ns
            limit = self._limit(start)
            end = min(
                bisect.bisect_right(self.usable_ns, deadline),
                bisect.bisect_left(self.usable, limit),
            )
            if end <= reached:
                continue  # inside an earlier window: nothing new to say
            reached = end
            window = [fed[i].event for i in self.usable[a:end]]
            attempt: Attempt | None
            if self.corr.type is CorrelationType.ALL:
                attempt = self._all(window, start, deadline, p0, limit)
            else:
                attempt = self._counted(window, start, deadline, a, limit)
            if attempt is not None:
                attempts.append(attempt)
        return attempts

    def _all(
        self, window: list[Event], start: Event, deadline: int, p0: int, limit: int
    ) -> Attempt:
        first_of: dict[int, Event] = {}
        for e in window:
            for si in self.kt.fed[self.pos[id(e)]].steps:
                first_of.setdefault(si, e)
        hits = sorted(((self._name(si), e) for si, e in first_of.items()), key=lambda h: _at(h[1]))
        n = len(self.corr.steps)
        attempt = Attempt(self.kt.key, hits, "never_matched", len(hits) / n)
        if self._dropped(attempt, start):
            return attempt
        missing = [si for si in range(n) if si not in first_of]
        for si in missing:  # a step that did occur but could not be used explains most
            found = self._unused(si, start, deadline)
            if found is not None:
                attempt.step = self._name(si)
                self._set_unused(attempt, found)
                return attempt
        for si in missing:
            positions = self.step_pos.get(si, [])
            j = bisect.bisect_left(positions, p0)
            near = [positions[k] for k in (j - 1, j) if 0 <= k < len(positions)]
            near = [q for q in near if q < limit]
            if near:
                q = min(near, key=lambda q: abs(self.kt.fed[q].event.time_ns - start.time_ns))
                attempt.step = self._name(si)
                self._set_outside(attempt, start, self.kt.fed[q].event)
                return attempt
        attempt.step = self._name(missing[0])
        if deadline >= self.end_ns:
            attempt.detail["window_open_at_end"] = True
        return attempt

    def _counted(
        self, window: list[Event], start: Event, deadline: int, a: int, limit: int
    ) -> Attempt | None:
        distinct = self.corr.type is CorrelationType.DISTINCT
        hits, values = _count_hits(window, self.corr.field if distinct else None)
        if not hits:
            return None
        got, needed = (len(values) if distinct else len(hits)), self.corr.threshold
        attempt = Attempt(self.kt.key, hits, "threshold_not_reached", got / needed)
        attempt.detail.update(got=got, needed=needed)
        if distinct:
            attempt.detail["values"] = values
        if self._dropped(attempt, start):
            return attempt
        late = [
            le.event for le in self.kt.late if _at(start) < _at(le.event) <= (deadline, _MAX_SEQ)
        ]
        lo = bisect.bisect_right(self.unkeyed_at, _at(start))
        hi = bisect.bisect_right(self.unkeyed_at, (deadline, _MAX_SEQ))
        if late and got + len(late) >= needed:
            attempt.reason, attempt.other = "late", late[0]
        elif hi > lo and got + hi - lo >= needed:
            self._set_unused(attempt, ("by_field_missing", self.unkeyed[lo].event))
        else:
            reaching = self._reaching(a, limit, distinct)
            if reaching is not None:
                self._set_outside(attempt, start, reaching)
            elif deadline >= self.end_ns:
                attempt.detail["window_open_at_end"] = True
        return attempt

    def _reaching(self, a: int, limit: int, distinct: bool) -> Event | None:
        """The event that reached the threshold for this key, over more than `within`."""
        needed = self.corr.threshold
        seen: set[str] = set()
        for i in self.usable[a:]:
            if i >= limit:
                return None
            event = self.kt.fed[i].event
            if distinct:
                assert self.corr.field is not None
                value = event.get(self.corr.field)
                if value is None or isinstance(value, dict | list):
                    continue
                seen.add(str(value))
                if len(seen) >= needed:
                    return event
            else:
                needed -= 1
                if needed == 0:
                    return event
        return None

    # -- absence ---------------------------------------------------------------------------

    def _absence(self) -> list[Attempt]:
        within = self.corr.within_ns
        attempts = []
        for trigger, expect in self.kt.cleared:
            delta = expect.time_ns - trigger.time_ns
            attempt = Attempt(self.kt.key, [("trigger", trigger)], "cleared", delta / within)
            attempt.step, attempt.other, attempt.delta_ns = "expect", expect, delta
            attempts.append(attempt)
        done = self.fired | {id(t) for t, _ in self.kt.cleared}
        for trigger in self.kt.triggers:
            if id(trigger) in done:
                continue
            elapsed = min((self.end_ns - trigger.time_ns) / within, 1.0)
            attempt = Attempt(self.kt.key, [("trigger", trigger)], "pending_at_end", elapsed)
            attempt.step = "expect"
            attempt.detail["deadline_ns"] = trigger.time_ns + within
            attempts.append(attempt)
        return attempts


def _count_hits(
    window: list[Event], field_name: str | None
) -> tuple[list[tuple[str, Event]], list[str]]:
    if field_name is None:
        return [("match", e) for e in window], []
    latest: dict[str, Event] = {}
    for event in window:
        value = event.get(field_name)
        if value is not None and not isinstance(value, dict | list):
            latest.pop(str(value), None)
            latest[str(value)] = event
    hits = sorted(latest.values(), key=_at)
    return [("match", e) for e in hits], list(latest)


def _at(event: Event) -> tuple[int, int]:
    return (event.time_ns, event.seq)


def _attempt_order(attempt: Attempt) -> tuple[int, int]:
    if attempt.hits:
        return _at(attempt.hits[0][1])
    return _at(attempt.other) if attempt.other is not None else (0, 0)
