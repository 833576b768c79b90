"""Why a `new_term` correlation did or did not fire for a key (for `explain`).

The analysis replays the key's taking-part events through the rules of RULES-SPEC section 7
(N1-N4) and says, for each one that did not fire, whether its term was known (and since when) or
the key was still learning (and until when). Fired events are reported by the caller.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from streams.core.new_term import term_of

if TYPE_CHECKING:
    from streams.core.explain import Attempt
    from streams.core.rules import Correlation
    from streams.core.trace import KeyTrace

__all__ = ["new_term_attempts"]


def new_term_attempts(corr: Correlation, kt: KeyTrace, fired: set[int]) -> list[Attempt]:
    from streams.core.explain import Attempt  # explain imports this module

    attempts: list[Attempt] = []
    t0: int | None = None
    last_ns = 0
    seen: dict[tuple[str, ...], int] = {}
    for fed in kt.fed:
        event = fed.event
        term = term_of(corr, event)
        if term is None:
            missing = [f for f in corr.term_fields if event.get(f) in (None, "")]
            attempts.append(
                Attempt(
                    kt.key, [("term", event)], "no_term", 0.0, "term", detail={"missing": missing}
                )
            )
            continue
        now = event.time_ns
        oldest = now - corr.within_ns
        if t0 is None or last_ns < oldest:
            t0 = now
            seen.clear()
        previous = seen.get(term)
        seen[term] = now
        last_ns = now
        if id(event) in fired:
            continue
        if previous is not None and previous >= oldest:
            attempts.append(
                Attempt(
                    kt.key,
                    [("term", event)],
                    "known_term",
                    0.0,
                    "term",
                    delta_ns=now - previous,
                    detail={"term": list(term), "seen_ns": previous},
                )
            )
        elif now < t0 + corr.learn_ns:
            attempts.append(
                Attempt(
                    kt.key,
                    [("term", event)],
                    "learning",
                    (now - t0) / corr.learn_ns,
                    "term",
                    detail={
                        "term": list(term),
                        "learning_since_ns": t0,
                        "learn_end_ns": t0 + corr.learn_ns,
                    },
                )
            )
    return attempts
