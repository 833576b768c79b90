"""The typed rule model: what the loader builds and the engine runs."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from streams.errors import Location

if TYPE_CHECKING:
    import jinja2

    from streams.core.conditions import CompiledCondition

__all__ = ["Correlation", "CorrelationType", "Ruleset", "Step"]


class CorrelationType(StrEnum):
    SEQUENCE = "sequence"
    ALL = "all"
    COUNT = "count"
    DISTINCT = "distinct"
    ABSENCE = "absence"
    NEW_TERM = "new_term"


@dataclass(frozen=True, slots=True)
class Step:
    """One condition of a correlation with the fields that form its group key.

    count/distinct have one step named `match`; absence has `trigger` and `expect`; new_term
    has one step named `term`.
    """

    name: str
    condition: CompiledCondition
    by: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Correlation:
    name: str
    type: CorrelationType
    by: tuple[str, ...]
    within_ns: int
    steps: tuple[Step, ...]
    output: jinja2.Template
    output_source: str
    location: Location
    desc: str = ""
    threshold: int = 0
    field: str | None = None
    severity: str | None = None
    tags: tuple[str, ...] = ()
    suppress_ns: int | None = None
    enabled: bool = True
    #: new_term: the fields that form the term, and the learning period (spec section 7).
    term_fields: tuple[str, ...] = ()
    learn_ns: int = 0
    #: The correlations whose records this one receives as derived events (C3), sorted.
    references: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Ruleset:
    """Every enabled correlation, plus the digest that stamps incidents (`ruleset`)."""

    correlations: tuple[Correlation, ...]
    digest: str
    files: tuple[str, ...]
    disabled: tuple[str, ...] = ()
