"""Engine entries as JSON-able data, for the worker's changelog-backed table.

One entry per (correlation, key): its state machine, the events it still holds in the reorder
buffer, its suppression anchor and its redelivery marks. Events are stored as
`[payload, time_ns, seq]` (a derived event: `[payload, time_ns, seq, derived, position tail]`).
Correlations are named, not numbered, so a rules reload keeps state of
every correlation that still exists with the same type.
"""

from __future__ import annotations

from typing import Any

from streams.core.correlators import (
    AbsenceState,
    AllState,
    CountState,
    DistinctState,
    KeyState,
    SequenceState,
)
from streams.core.derived import DerivedSeq, position_tail
from streams.core.engine import EngineEntry, HeldItem, KeyTuple, StepMatch
from streams.core.events import Event
from streams.core.incidents import IncidentAnchor
from streams.core.new_term import NewTermState
from streams.core.rules import Correlation, CorrelationType

__all__ = ["SNAPSHOT_VERSION", "entry_from_data", "entry_to_data", "held_to_data"]

SNAPSHOT_VERSION = 1


def _ev(event: Event) -> list[Any]:
    if event.derived is not None:  # a derived event: its C2 fields and its position's tail
        return [
            event.raw,
            event.time_ns,
            int(event.seq),
            event.derived,
            list(position_tail(event.seq)),
        ]
    return [event.raw, event.time_ns, event.seq]


def _unev(data: list[Any]) -> Event:
    if len(data) == 5:
        seq = DerivedSeq(int(data[2]), tuple(str(t) for t in data[4]))
        return Event(data[0], int(data[1]), seq, dict(data[3]))
    return Event(data[0], int(data[1]), int(data[2]))


def _unev_kept(data: list[Any]) -> Event:
    """An event of a state machine: packed, as the engine keeps it (Event.packed)."""
    return _unev(data).packed()


def _state_to_data(state: KeyState) -> dict[str, Any]:
    if isinstance(state, SequenceState):
        return {"cands": [[_ev(e) for e in c] for c in state.candidates]}
    if isinstance(state, AllState):
        return {"latest": [None if e is None else _ev(e) for e in state.latest]}
    if isinstance(state, CountState):
        return {"events": [_ev(e) for e in state.events]}
    if isinstance(state, DistinctState):
        return {"values": [[v, _ev(e)] for v, e in state.values.items()]}
    if isinstance(state, AbsenceState):
        return {
            "pending": None if state.pending is None else _ev(state.pending),
            "due": [_ev(e) for e in state.due.values()],
        }
    if isinstance(state, NewTermState):
        return state.to_data()
    raise TypeError(f"unknown state {type(state).__name__}")


def _state_from_data(corr: Correlation, data: dict[str, Any]) -> KeyState:
    kind = corr.type
    if kind is CorrelationType.NEW_TERM:
        return NewTermState.from_data(corr, data)
    if kind is CorrelationType.SEQUENCE:
        seq_state = SequenceState(len(corr.steps))
        cands = data["cands"]
        if len(cands) != len(seq_state.candidates):
            raise ValueError("number of steps changed")
        seq_state.candidates = [[_unev_kept(e) for e in c] for c in cands]
        return seq_state
    if kind is CorrelationType.ALL:
        all_state = AllState(len(corr.steps))
        latest = data["latest"]
        if len(latest) != len(all_state.latest):
            raise ValueError("number of steps changed")
        all_state.latest = [None if e is None else _unev_kept(e) for e in latest]
        return all_state
    if kind is CorrelationType.COUNT:
        count_state = CountState()
        count_state.events = [_unev_kept(e) for e in data["events"]]
        return count_state
    if kind is CorrelationType.DISTINCT:
        distinct_state = DistinctState()
        distinct_state.values = {str(v): _unev_kept(e) for v, e in data["values"]}
        return distinct_state
    absence = AbsenceState()
    absence.pending = None if data["pending"] is None else _unev_kept(data["pending"])
    absence.due = {e.seq: e for e in (_unev_kept(d) for d in data["due"])}
    return absence


def entry_to_data(corr: Correlation, key: KeyTuple, entry: EngineEntry) -> dict[str, Any]:
    anchor = entry.anchor
    return {
        "v": SNAPSHOT_VERSION,
        "c": corr.name,
        "t": corr.type.value,
        "k": list(key),
        "st": None if entry.state is None else _state_to_data(entry.state),
        "held": [held_to_data(item, None, key) for item in entry.held],
        "anchor": None
        if anchor is None
        else [anchor.id, anchor.anchor_ns, anchor.first_seen_ns, anchor.count],
        "src": {str(p): o for p, o in entry.sources.items()},
    }


def held_to_data(item: HeldItem, ci: int | None, key: KeyTuple) -> list[Any]:
    """One held event as `[event, steps]`: the steps it matched for (ci, key) (all of the
    item's steps when `ci` is None: `Engine.entry` filtered them already)."""
    steps = {m[1] for m in item[4] if ci is None or (m[0] == ci and m[2] == key)}
    return [_ev(item[3]), sorted(steps)]


def entry_from_data(
    correlations: dict[str, tuple[int, Correlation]], data: dict[str, Any]
) -> tuple[int, KeyTuple, EngineEntry] | None:
    """The entry for the current rules, or None when its correlation is gone or changed type."""
    if data.get("v") != SNAPSHOT_VERSION:
        return None
    found = correlations.get(data["c"])
    if found is None:
        return None
    ci, corr = found
    if corr.type.value != data["t"]:
        return None
    key = tuple(data["k"])
    try:
        state = None if data["st"] is None else _state_from_data(corr, data["st"])
    except (ValueError, KeyError, TypeError):
        state = None  # the correlation's shape changed: its partial state cannot carry over
    if state is not None and not isinstance(state, NewTermState):
        state.newest_ns = max((t for t in _event_times(data["st"])), default=0)
    held: list[HeldItem] = []
    for raw_event, steps in data["held"]:
        event = _unev(raw_event)
        matches: list[StepMatch] = [(ci, si, key) for si in steps if si < len(corr.steps)]
        if matches:
            held.append((event.time_ns, event.seq, (ci, 0), event, matches))
    raw_anchor = data["anchor"]
    anchor = None
    if raw_anchor is not None:
        anchor = IncidentAnchor(raw_anchor[0], raw_anchor[1], raw_anchor[2], raw_anchor[3])
    sources = {int(p): int(o) for p, o in data["src"].items()}
    return ci, key, EngineEntry(state=state, held=held, anchor=anchor, sources=sources)


def _event_times(data: Any) -> list[int]:
    """Times of every `[payload, time_ns, seq]` inside a state's data."""
    if isinstance(data, list):
        if len(data) in (3, 5) and isinstance(data[0], dict) and isinstance(data[1], int):
            return [data[1]]
        return [t for item in data for t in _event_times(item)]
    if isinstance(data, dict):
        return [t for value in data.values() for t in _event_times(value)]
    return []
