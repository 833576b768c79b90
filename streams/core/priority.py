"""Falco priorities, most severe first, parsed case-insensitively."""

from __future__ import annotations

__all__ = ["PRIORITY_NAMES", "canonical_priority", "priority_rank"]

# Rank 0 is the least severe so that `>` means "more severe", as rule authors read it.
PRIORITY_NAMES: tuple[str, ...] = (
    "Debug",
    "Informational",
    "Notice",
    "Warning",
    "Error",
    "Critical",
    "Alert",
    "Emergency",
)

_RANKS: dict[str, int] = {name.lower(): rank for rank, name in enumerate(PRIORITY_NAMES)}
_RANKS["info"] = _RANKS["informational"]


def priority_rank(value: object) -> int | None:
    """Severity rank of a priority name (higher is more severe), or None if not a priority."""
    if not isinstance(value, str):
        return None
    return _RANKS.get(value.strip().lower())


def canonical_priority(value: object) -> str | None:
    """The canonical spelling (`Warning`) of a priority name in any case, or None."""
    rank = priority_rank(value)
    return None if rank is None else PRIORITY_NAMES[rank]
