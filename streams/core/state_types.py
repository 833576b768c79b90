"""The registry of correlation state types: `{kind: class}`.

Each class owns its behaviour (streams/core/correlators.py, streams/core/new_term.py): creation
from its correlation (`for_correlation`), events in (`on_event`), what it keeps (`size`,
`expire`, `held`), whether a match consumes it (`consumes`), and its serialisation (`to_data`,
`from_data`), and what the engine schedules for it (`inert_steps`, `deadline`/`deadlines`/`take`
for absences, `suppression_horizon`). The engine and the snapshot code ask the state or the
registry, never which type they hold: adding a type is one module plus one line here.
"""

from __future__ import annotations

from streams.core.correlators import (
    AbsenceState,
    AllState,
    CountState,
    DistinctState,
    KeyState,
    SequenceState,
)
from streams.core.new_term import NewTermState
from streams.core.rules import CorrelationType

__all__ = ["STATE_TYPES", "state_type"]

STATE_TYPES: dict[CorrelationType, type[KeyState]] = {
    cls.kind: cls
    for cls in (SequenceState, AllState, CountState, DistinctState, AbsenceState, NewTermState)
}
assert set(STATE_TYPES) == set(CorrelationType), "every correlation type has a state class"


def state_type(kind: CorrelationType) -> type[KeyState]:
    return STATE_TYPES[kind]
