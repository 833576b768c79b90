"""Engine entries as JSON-able data, for the worker's changelog-backed table.

One entry per (correlation, key): its state machine, the events it still holds in the reorder
buffer, its suppression anchor and its redelivery marks. Events are stored as
`[payload, time_ns, seq]` (a derived event: `[payload, time_ns, seq, derived, position tail]`).
Correlations are named, not numbered, so a rules reload keeps state of
every correlation that still exists with the same type.
"""

from __future__ import annotations

from typing import Any

from streams.core._event_data import event_from_data, event_to_data
from streams.core.correlators import KeyState
from streams.core.derived import DerivedSeq
from streams.core.engine import EngineEntry, HeldItem, KeyTuple, StepMatch
from streams.core.incidents import IncidentAnchor
from streams.core.rules import Correlation
from streams.core.state_types import state_type

__all__ = ["SNAPSHOT_VERSION", "entry_from_data", "entry_to_data", "held_to_data"]

SNAPSHOT_VERSION = 1


def _state_to_data(state: KeyState) -> dict[str, Any]:
    return state.to_data()


def _state_from_data(corr: Correlation, data: dict[str, Any]) -> KeyState:
    return state_type(corr.type).from_data(corr, data)


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
        "rel": _released_to_data(entry.released),
    }


def _released_to_data(released: tuple[int, int] | None) -> list[Any] | None:
    """`[time, seq]`, or `[time, base, tail]` when the last released event is a derived one."""
    if released is None:
        return None
    time_ns, seq = released
    if isinstance(seq, DerivedSeq):
        return [time_ns, int(seq), list(seq.tail)]
    return [time_ns, seq]


def _released_from_data(rel: Any) -> tuple[int, int] | None:
    if not isinstance(rel, list):
        return None
    if len(rel) == 2:
        return int(rel[0]), int(rel[1])
    if len(rel) == 3:
        return int(rel[0]), DerivedSeq(int(rel[1]), tuple(str(t) for t in rel[2]))
    return None


def held_to_data(item: HeldItem, ci: int | None, key: KeyTuple) -> list[Any]:
    """One held event as `[event, steps]`: the steps it matched for (ci, key) (all of the
    item's steps when `ci` is None: `Engine.entry` filtered them already)."""
    steps = {m[1] for m in item[4] if ci is None or (m[0] == ci and m[2] == key)}
    return [event_to_data(item[3]), sorted(steps)]


def entry_from_data(
    correlations: dict[str, tuple[int, Correlation]],
    data: dict[str, Any],
    dropped: list[str] | None = None,
) -> tuple[int, KeyTuple, EngineEntry] | None:
    """The entry for the current rules, or None when its correlation is gone or changed type.

    A partial match that no longer fits its correlation (its shape changed) is left out of the
    entry (its suppression anchor and redelivery marks are kept) and said in `dropped`, so the
    caller counts and logs it: restored state is never dropped silently."""
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
    except (ValueError, KeyError, TypeError) as exc:
        state = None  # the correlation's shape changed: its partial state cannot carry over
        if dropped is not None:
            dropped.append(f"{corr.name}: {exc!r:.120}")
    if state is not None:  # a type that keeps times, not events (new_term), restores its own
        state.newest_ns = max(state.newest_ns, *(e.time_ns for e in state.held()), 0)
    held: list[HeldItem] = []
    for raw_event, steps in data["held"]:
        event = event_from_data(raw_event)
        matches: list[StepMatch] = [(ci, si, key) for si in steps if si < len(corr.steps)]
        if matches:
            held.append((event.time_ns, event.seq, (ci, 0), event, matches))
    raw_anchor = data["anchor"]
    anchor = None
    if raw_anchor is not None:
        anchor = IncidentAnchor(raw_anchor[0], raw_anchor[1], raw_anchor[2], raw_anchor[3])
    sources = {int(p): int(o) for p, o in data["src"].items()}
    released = _released_from_data(data.get("rel"))  # older entries have none
    return (
        ci,
        key,
        EngineEntry(state=state, held=held, anchor=anchor, sources=sources, released=released),
    )
