"""Which (correlation, step, key) an event takes part in, without any correlation state.

The step index by Falco rule name (streams/core/prefilter.py) and the per-step key readers.
`Engine` matches with it; the worker's ingest stage uses it alone to route events to the
partitions that own their keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from streams.core.events import Event
from streams.core.prefilter import KeyReader, step_index
from streams.core.rules import Ruleset

if TYPE_CHECKING:
    from streams.core.observer import EngineObserver

__all__ = ["KeyTuple", "Matcher", "StepMatch"]

KeyTuple = tuple[Any, ...]
StepMatch = tuple[int, int, KeyTuple]  # (correlation index, step index, key values)


class Matcher:
    """Matches events against one ruleset's enabled correlations."""

    def __init__(self, ruleset: Ruleset) -> None:
        self.ruleset = ruleset
        self.correlations = ruleset.correlations
        # steps by the Falco rule names they can match, so an event meets only those, each with
        # its condition specialised for that name
        self._by_rule, self._any_rule = step_index(self.correlations)

    def match(self, event: Event, observer: EngineObserver | None = None) -> list[StepMatch]:
        """Every (correlation, step, key) the event takes part in; `observer` hears of steps
        matched by an event whose `by` fields do not resolve."""
        found: list[StepMatch] = []
        skip_ci = -1
        last_reader: KeyReader | None = None
        key: KeyTuple | None = None
        for ci, si, test, key_of, first_only in self._by_rule.get(event.rule, self._any_rule):
            if ci == skip_ci or (test is not None and not test(event)):
                continue
            if first_only:
                skip_ci = ci  # `all`: an event belongs to the first step it matches only
            if key_of is not last_reader:  # steps with the same `by` share their reader
                last_reader, key = key_of, key_of(event)
            if key is not None:
                found.append((ci, si, key))
            elif observer is not None:
                observer.unkeyed(event, ci, si)
        return found
