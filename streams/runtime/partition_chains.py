"""Correlations of correlations across partitions (RULES-SPEC section 7, C1-C5), in the worker.

A dependent's key is its own `by` (C6), so the derived events of an upstream's records on
partition P belong to the dependent keys' partitions, P or others. Each partition's engine
routes its derived events (`Engine.route_derived`): one for this partition is held at once, the
others wait in an outbox per destination that the agent sends as chain records
(streams/runtime/chain_records.py) after each group of records, before it writes the state.

Progress: the engine keeps one watermark per level (a correlation's depth in the reference
graph). A chain record carries its sender's level watermarks; a partition's level L is released
only below the lowest level L-1 watermark of every partition (its own included; an engine releases
only what is strictly before a watermark, and emits nothing before one later), so a dependent
takes position p only after every upstream has emitted all its records before p, wherever they
were correlated (C5): records equal `replay`'s for any partitioning and number of workers. A
partition reports its levels with every chain record it sends and, when they moved, to every
other partition at most every `REPORT_INTERVAL_NS` — an idle partition's levels move with its
watermark (the ingest ticks), so an idle upstream holds its dependents back no longer than an
idle source partition holds the watermark, plus one report interval per level.

Redelivery: a partition that restarts sends again what it sent after its last saved state, and a
reader that restarts reads again what it had not committed. Derived events reach a partition
from each (sender, upstream level) in position order, so a copy at or before the last one taken
from there is a duplicate; so is one behind the level's watermark (derived events are never
late, C5). Both marks are kept in the partition's meta entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streams.core.derived import DerivedSeq, position_tail
from streams.core.engine import Engine, KeyTuple, StepMatch
from streams.core.events import Event
from streams.core.rules import Correlation, Ruleset
from streams.runtime.chain_records import ChainRecord, encode_chain
from streams.runtime.progress import NEG_INF
from streams.runtime.records import MatchRef
from streams.runtime.routing import Router

__all__ = ["REPORT_INTERVAL_NS", "ChainState", "PartitionChains"]

#: How often a partition whose levels moved tells the others at most (without derived events).
REPORT_INTERVAL_NS = 100_000_000

Position = tuple[int, int]  # (time, seq): seq may be a DerivedSeq


@dataclass
class ChainState:
    """A partition's side of the exchange."""

    # per other partition, the level watermarks it reported (the highest seen)
    reported: dict[int, list[int]] = field(default_factory=dict)
    # per (sender, upstream level), the position of the last derived event taken from there
    received: dict[tuple[int, int], Position] = field(default_factory=dict)
    # per destination partition, derived events to send with their matches there
    outbox: dict[int, list[tuple[Event, tuple[MatchRef, ...]]]] = field(default_factory=dict)
    # per destination partition, the levels it was last sent
    sent: dict[int, tuple[int, ...]] = field(default_factory=dict)
    sent_at: int = NEG_INF
    duplicates: int = 0

    def to_data(self, engine: Engine) -> dict[str, Any]:
        return {
            "lw": list(engine.level_watermarks),
            "rep": {str(p): levels for p, levels in self.reported.items()},
            "rcv": [
                [sender, level, time_ns, int(seq), list(position_tail(seq))]
                for (sender, level), (time_ns, seq) in self.received.items()
            ],
        }

    def restore(self, engine: Engine, data: Any) -> None:
        if not isinstance(data, dict):
            return
        for level, mark in enumerate(data.get("lw") or []):
            if 0 < level < engine.levels and isinstance(mark, int):
                engine.level_watermarks[level] = max(engine.level_watermarks[level], mark)
        for sender, levels in (data.get("rep") or {}).items():
            if str(sender).isdigit() and isinstance(levels, list):
                self.reported[int(sender)] = [int(t) for t in levels]
        for sender, level, time_ns, base, tail in data.get("rcv") or []:
            seq = DerivedSeq(int(base), tuple(str(t) for t in tail))
            self.received[(int(sender), int(level))] = (int(time_ns), seq)


class PartitionChains:
    """Mixin of `PartitionCorrelator`: routing derived events and the level progress."""

    ruleset: Ruleset
    correlate_partitions: int
    route_chains: bool
    router: Router | None

    if TYPE_CHECKING:

        def _by_name(self) -> dict[str, tuple[int, Correlation]]: ...  # PartitionRecovery

    def _make_router(self) -> None:
        """The router of routed chains for the current rules (after a reload too)."""
        self.router = (
            Router(self.ruleset.correlations, self.correlate_partitions)
            if self.route_chains
            else None
        )

    def _routes_chains(self) -> bool:
        return self.router is not None and any(c.references for c in self.ruleset.correlations)

    def _route(self, partition: int, engine: Engine, chain: ChainState) -> None:
        """Make `engine` (of `partition`) route its derived events (`Engine.route_derived`)."""
        router = self.router
        assert router is not None
        correlations = engine.correlations

        def sink(event: Event) -> None:
            matches = engine.match_derived(event)
            here: list[StepMatch] = []
            there: dict[int, list[StepMatch]] = {}
            for match in matches:
                destination = router.destination(correlations[match[0]].name, match[2])
                if destination == partition:
                    here.append(match)
                else:
                    there.setdefault(destination, []).append(match)
            if here:
                engine.submit_derived(event, here)
            for destination, found in there.items():
                chain.outbox.setdefault(destination, []).append((event, _refs(engine, found)))

        engine.route_derived(sink, alone=self.correlate_partitions == 1)
        self._set_floors(partition, engine, chain)

    def _set_floors(self, partition: int, engine: Engine, chain: ChainState) -> None:
        """Each level's floor: the lowest watermark of the level below that the other
        partitions reported (a partition that never reported holds it at -inf)."""
        floors = engine.upstream_floors
        others = [p for p in range(self.correlate_partitions) if p != partition]
        for level in range(1, engine.levels):
            floor = None
            for other in others:
                levels = chain.reported.get(other)
                if not levels:
                    floor = NEG_INF
                    break
                mark = levels[min(level - 1, len(levels) - 1)]
                floor = mark if floor is None else min(floor, mark)
            floors[level] = floor if floor is not None else floors[level]

    def _take_chain(
        self, partition: int, engine: Engine, chain: ChainState, record: ChainRecord
    ) -> int:
        """Apply one chain record: the sender's levels, then its derived events; returns how
        many events it held (duplicates are counted in `chain.duplicates`)."""
        sender = record.sender
        if sender != partition and record.levels:
            known = chain.reported.get(sender)
            levels = list(record.levels)
            if known is not None and len(known) == len(levels):
                levels = [max(a, b) for a, b in zip(known, levels, strict=True)]
            chain.reported[sender] = levels
            self._set_floors(partition, engine, chain)
        held = 0
        same_rules = record.digest == self.ruleset.digest
        by_name = self._by_name()
        marks = engine.level_watermarks
        for event, refs in record.events:
            assert event.derived is not None
            upstream = engine.index_of.get(event.derived["correlation"])
            level = engine.level_of(upstream) if upstream is not None else 0
            position = (event.time_ns, event.seq)
            last = chain.received.get((sender, level))
            if last is not None and position <= last:
                chain.duplicates += 1  # sent again (a restarted sender) or read again
                continue
            chain.received[(sender, level)] = position
            matches: list[StepMatch] = []
            if same_rules:
                for ref in refs:
                    found = by_name.get(ref.correlation)
                    if found is not None:
                        matches.extend((found[0], si, ref.key) for si in ref.steps)
            else:  # sent under other rules (a reload in progress): match again, keep ours
                router = self.router
                assert router is not None
                matches = [
                    m
                    for m in engine.match_derived(event)
                    if router.destination(engine.correlations[m[0]].name, m[2]) == partition
                ]
            # behind its level's watermark, or taken by its key: taken already (derived events
            # are never late; the key's marks are written with its state, the watermark after)
            fresh = engine.not_applied(
                event, [m for m in matches if event.time_ns >= marks[engine.level_of(m[0])]]
            )
            if len(fresh) < len(matches):
                chain.duplicates += 1
            if fresh and engine.submit_derived(event, fresh):
                held += 1
        return held

    def _chain_records(
        self, partition: int, engine: Engine, chain: ChainState, now_ns: int, *, report: bool
    ) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
        """The chain records to send now: those of the outbox (derived events, with this
        partition's levels: they must reach their destination), and with `report` the levels
        alone to every other partition they moved for since it was last told (progress only:
        sent again later if lost)."""
        levels = tuple(engine.level_watermarks)
        digest = self.ruleset.digest
        derived: list[tuple[int, bytes]] = []
        for destination, events in chain.outbox.items():
            derived.append(
                (destination, encode_chain(ChainRecord(partition, digest, levels, tuple(events))))
            )
            chain.sent[destination] = levels
        chain.outbox.clear()
        reports: list[tuple[int, bytes]] = []
        if report and now_ns - chain.sent_at >= REPORT_INTERVAL_NS:
            chain.sent_at = now_ns
            for destination in range(self.correlate_partitions):
                if destination != partition and chain.sent.get(destination) != levels:
                    reports.append(
                        (destination, encode_chain(ChainRecord(partition, digest, levels)))
                    )
                    chain.sent[destination] = levels
        return derived, reports


def _refs(engine: Engine, matches: list[StepMatch]) -> tuple[MatchRef, ...]:
    grouped: dict[tuple[int, KeyTuple], list[int]] = {}
    for ci, si, key in matches:
        grouped.setdefault((ci, key), []).append(si)
    return tuple(
        MatchRef(engine.correlations[ci].name, key, tuple(steps))
        for (ci, key), steps in grouped.items()
    )
