"""Which correlate partition owns a (correlation, group key).

Every correlation is spread over the correlate partitions by its group key (CRC-32 of the entry
key, `streams/runtime/records.py`), also one that references another (RULES-SPEC section 7,
C3): its key is its own `by`, and the derived events it takes are sent to the partition of that
key in chain records (streams/runtime/chain_records.py, streams/runtime/partition_chains.py).

`pin_chains=True` keeps the older layout, used by the shadow rules (whose correlator exchanges
no chain records): correlations joined by references form a chain component, and a whole
component is correlated on one partition, where the upstream's records become derived events
in the same engine, at once and depth first, exactly as in `replay`. Its price is that a
component's events are correlated by one partition.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Protocol

from streams.core.engine import KeyTuple
from streams.runtime.records import destination_partition

__all__ = ["Router", "chain_components"]


class _Referencing(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def references(self) -> tuple[str, ...]: ...


def chain_components(correlations: Iterable[_Referencing]) -> dict[str, str]:
    """For each correlation that references another or is referenced, its component's label
    (the smallest name of the component: stable while the component stays the same)."""
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        root = name
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[name] != root:  # path compression
            parent[name], name = root, parent[name]
        return root

    for corr in correlations:
        for upstream in corr.references:
            a, b = find(corr.name), find(upstream)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return {name: find(name) for name in parent}


class Router:
    """The destination partition of each (correlation, key), for one ruleset."""

    def __init__(
        self, correlations: Iterable[_Referencing], partitions: int, *, pin_chains: bool = False
    ) -> None:
        self.partitions = partitions
        self.pinned = (
            {
                name: zlib.crc32(b"\x00chain\x1f" + label.encode()) % partitions
                for name, label in chain_components(correlations).items()
            }
            if pin_chains
            else {}
        )
        self._routes: dict[tuple[str, KeyTuple], int] = {}

    def destination(self, name: str, key: KeyTuple) -> int:
        pinned = self.pinned.get(name)
        if pinned is not None:
            return pinned
        routes = self._routes
        destination = routes.get((name, key))
        if destination is None:
            destination = destination_partition(name, key, self.partitions)
            if len(routes) > 100_000:
                routes.clear()
            routes[(name, key)] = destination
        return destination
