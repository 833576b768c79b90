"""The `new_term` correlation type (spec section 7, N1-N5): first-seen values per key.

A self-contained state type: it is created from its correlation, turns an event into a match or
nothing, says what it keeps (`size`, `expire`), and serialises itself (`to_data`/`from_data`)
for the worker's changelog-backed table. Bounded by construction: per key it keeps only T0 (the
start of the current learning period) and the time of the last sighting of each term seen within
`within`, plus a per-key cap on terms (least recently seen evicted first, counted in `evicted`).

Firing never removes anything from the history (N5): unlike the other types, a match does not
consume the key's state (`consumes = False`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from streams.core._condition_parser import as_text
from streams.core.correlators import KeyState, Match
from streams.core.rules import Correlation, CorrelationType

if TYPE_CHECKING:
    from streams.core.events import Event

__all__ = ["NewTermState", "Term", "term_of", "term_values"]

#: A term: the `fields` values of an event as text (N1: `443` and `"443"` are the same term).
Term = tuple[str, ...]


def term_of(corr: Correlation, event: Event) -> Term | None:
    """The event's term, or None when a `fields` value does not resolve (null, empty, a list or
    an object): the event then takes no part (N1)."""
    values: list[str] = []
    for name in corr.term_fields:
        value = event.get(name)
        if value is None or value == "" or isinstance(value, dict | list):
            return None
        values.append(as_text(value))
    return tuple(values)


def term_values(corr: Correlation, event: Event) -> dict[str, Any]:
    """The template variable `term`: each of `fields` -> its value as in the event."""
    return {name: event.get(name) for name in corr.term_fields}


class NewTermState(KeyState):
    """T0 and the last sighting of each term of one (correlation, key)."""

    __slots__ = ("t0", "terms")
    kind: ClassVar[CorrelationType] = CorrelationType.NEW_TERM
    consumes: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.t0: int | None = None
        # term -> time of its last sighting; dict order is recency order (the cap evicts the
        # least recently seen term first). A term of one field is kept as its text alone (a
        # third less memory than a 1-tuple: the common case).
        self.terms: dict[Term | str, int] = {}

    @classmethod
    def for_correlation(cls, corr: Correlation) -> NewTermState:
        return cls()

    def size(self) -> int:
        return len(self.terms)

    def held(self) -> list[Event]:
        return []  # sightings are times, not events

    def expire(self, horizon_ns: int) -> None:
        """Forget sightings older than `horizon_ns`; with none left the key is idle (N4) and the
        engine drops the state, so its next event starts a new learning period."""
        stale = [term for term, seen in self.terms.items() if seen < horizon_ns]
        for term in stale:
            del self.terms[term]

    def on_event(self, corr: Correlation, steps: set[int], event: Event, cap: int) -> Match | None:
        term = term_of(corr, event)
        if term is None:
            return None  # takes no part: changes nothing (N1)
        now = event.time_ns
        oldest = now - corr.within_ns
        if self.t0 is None or not self.terms or self.newest_ns < oldest:
            # the key's first taking-part event, or its first after being idle more than
            # `within`: a new learning period, and the history is forgotten whole (N4)
            self.t0 = now
            self.terms.clear()
        kept: Term | str = term[0] if len(term) == 1 else term
        last = self.terms.pop(kept, None)
        is_new = last is None or last < oldest  # a sighting exactly `within` before counts (N3)
        self.terms[kept] = now  # every taking-part event is a sighting
        self.newest_ns = now
        if len(self.terms) > cap:
            del self.terms[next(iter(self.terms))]
            self.evicted += 1
        if is_new and now >= self.t0 + corr.learn_ns:
            return [("term", event)]
        return None

    def to_data(self) -> dict[str, Any]:
        return {
            "t0": self.t0,
            "terms": [
                [[term] if isinstance(term, str) else list(term), seen]
                for term, seen in self.terms.items()
            ],
        }

    @classmethod
    def from_data(cls, corr: Correlation, data: dict[str, Any]) -> NewTermState:
        state = cls()
        t0 = data["t0"]
        state.t0 = None if t0 is None else int(t0)
        terms = data["terms"]
        if not isinstance(terms, list):
            raise ValueError("terms must be a list")
        for values, seen in terms:
            term = tuple(str(v) for v in values)
            if len(term) != len(corr.term_fields):
                raise ValueError("number of term fields changed")
            state.terms[term[0] if len(term) == 1 else term] = int(seen)
        state.newest_ns = max(state.terms.values(), default=0)
        return state
