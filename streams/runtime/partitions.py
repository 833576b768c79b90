"""The correlate stage: one engine per partition of the correlate topic, persisted in a table.

Pure (no Faust): the table is any mapping-like store, so tests use a dict and the worker a
changelog-backed Faust table. A record is a `CorrelateBatch` (streams/runtime/records.py): its
events are submitted to the partition's engine with the matches found at ingest, then the
partition's merged source progress (streams/runtime/progress.py) moves the watermark. After a
batch the entries the engine changed are written back once (`store[key] = bytes`), which is what
makes a restarted or rebalanced worker continue exactly where the state was: on the first record
of a partition the engine is rebuilt from the entries of that partition.

The shadow rules (`app.shadow_rules`) get a correlator of their own (`shadow=True`): it reads the
records' shadow matches and digest instead of the live ones, and its state entries, held events
and meta entry carry `SHADOW_PREFIX`, so they never meet the live ones in the shared table (the
same correlation name and key may exist in both sets). It applies the same progress reports, so
its watermark is the live one's.

Modules: this one (the per-record apply path, the shadow wrapper), `partition_recovery` (an
engine rebuilt from the store, rule reloads), `partition_persist` (writing changes back, the
meta entry).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streams.core.engine import Engine, KeyTuple, StepMatch
from streams.core.events import Event
from streams.core.rules import Correlation, Ruleset
from streams.runtime.chain_records import ChainRecord
from streams.runtime.partition_persist import StateStore, _Partition
from streams.runtime.partition_recovery import PartitionRecovery
from streams.runtime.progress import NEG_INF
from streams.runtime.records import SHADOW_PREFIX, CorrelateBatch
from streams.runtime.routing import Router

__all__ = ["BatchOutcome", "PartitionCorrelator", "ShadowCorrelator", "StateStore"]

log = logging.getLogger(__name__)  # partition_recovery logs under this name too

# An event's tie-breaking sequence (its arrival, for events of the same time): source offset
# << 20 | source partition — the same on every correlate partition the event is sent to, so a
# derived event (positioned after the event that completed its match, C4) sorts against the
# Falco events of another partition exactly as on the partition that derived it.
_SEQ_SHIFT = 20


@dataclass
class BatchOutcome:
    incidents: list[dict[str, Any]] = field(default_factory=list)
    events: int = 0
    late: int = 0
    duplicates: int = 0
    produced_ms: list[float] = field(default_factory=list)  # source produce times (latency)
    # the first late event of the record: (source partition, source offset, time, watermark)
    first_late: tuple[int, int, int, int] | None = None


class PartitionCorrelator(PartitionRecovery):
    def __init__(
        self,
        ruleset: Ruleset,
        store: StateStore,
        *,
        lateness_ns: int,
        max_pending: int,
        max_state_entries: int | None = None,
        wall_clock: Callable[[], int] = time.time_ns,
        shadow: bool = False,
        discard_shadow_state: bool = False,
        correlate_partitions: int = 1,
        route_chains: bool = False,
        outbox: bool = False,
    ) -> None:
        self.ruleset = ruleset
        self.shadow = shadow
        # Routed chains (streams/runtime/partition_chains.py): the live rules of the worker;
        # without them (the shadow rules, tests of one partition) chains are correlated in one
        # engine (their events pinned to one partition by the ingest's Router)
        self.correlate_partitions = correlate_partitions
        self.route_chains = route_chains and not shadow
        # outputs kept with the state until flushed (streams/runtime/partition_outbox.py)
        self.outbox_enabled = outbox and not shadow
        self.router: Router | None = None
        self._make_router()
        # prefix of every store key of this correlator: the live one's keys are as they always
        # were; the shadow one's never collide with them (and start with NUL: skipped by live)
        self.namespace = SHADOW_PREFIX if shadow else b""
        # the live correlator of a worker without shadow rules deletes shadow state it finds
        # (left by a shadow set since promoted or removed): nothing else would ever delete it
        self.discard_shadow_state = discard_shadow_state and not shadow
        self._label = "shadow rules, partition" if shadow else "partition"
        self.max_state_entries = max_state_entries
        self.store = store
        self.lateness_ns = lateness_ns
        self.max_pending = max_pending
        self.wall_clock = wall_clock
        self._partitions: dict[int, _Partition] = {}
        self._pending_ruleset: Ruleset | None = None
        self._by_name_for: Ruleset | None = None
        self._by_name_cache: dict[str, tuple[int, Correlation]] = {}

    # -- lifecycle ------------------------------------------------------------------------------

    def reload(self, ruleset: Ruleset) -> None:
        """Applied at the next record, inside stream iteration (where tables may be written)."""
        self._pending_ruleset = ruleset

    def revoke(self, partitions: set[int]) -> None:
        """Forget partitions moved away; their state stays in the changelog for the new owner."""
        for partition in partitions:
            self._partitions.pop(partition, None)

    def partitions(self) -> dict[int, Engine]:
        return {p: part.engine for p, part in self._partitions.items()}

    def high_water(self, partition: int) -> int:
        part = self._partitions.get(partition)
        return NEG_INF if part is None else part.progress.high_water_ns()

    def _partition(self, partition: int, offset: int | None = None) -> _Partition:
        part = self._partitions.get(partition)
        if part is None:
            part = self._partitions[partition] = self._recover(partition, offset)
        return part

    # -- records --------------------------------------------------------------------------------

    def on_batch(
        self, partition: int, offset: int, batch: CorrelateBatch, *, persist: bool = True
    ) -> BatchOutcome:
        """Apply one correlate record; with `persist=False` the caller calls `persist` later."""
        if self._pending_ruleset is not None:
            self._apply_reload()
        part = self._partition(partition, offset)
        engine = part.engine
        outcome = BatchOutcome()
        stats = engine.stats
        late, dups = stats.late, stats.duplicates
        if batch.events:
            self._submit(part, offset, batch, outcome)
        if batch.legacy_high_water is not None:
            outcome.incidents.extend(engine.observe(batch.legacy_high_water))
        elif part.progress.update(batch.source_partitions, batch.progress):
            part.reports += 1
            high_water = part.progress.high_water_ns()
            if high_water > NEG_INF:
                # The watermark follows the slowest source partition, not these events' times:
                # records of fast partitions must not make those of slow ones late.
                outcome.incidents.extend(engine.observe(high_water))
        outcome.late = stats.late - late
        outcome.duplicates = stats.duplicates - dups
        if persist:
            self._persist(partition, part)
        return outcome

    def _submit(
        self, part: _Partition, offset: int, batch: CorrelateBatch, outcome: BatchOutcome
    ) -> None:
        """Submit a record's events that match this correlator's rules (live or shadow)."""
        engine = part.engine
        applied = part.applied
        stats = engine.stats
        by_name = self._by_name()
        shadow = self.shadow
        digest = batch.shadow_digest if shadow else batch.digest
        same_rules = digest == self.ruleset.digest
        for record in batch.events:
            refs = record.shadow_matches if shadow else record.matches
            if not refs:  # matched only the other set (live or shadow)
                continue
            seq = (record.source_offset << _SEQ_SHIFT) | record.source_partition
            event = Event(record.payload, record.time_ns, seq)
            matches: list[StepMatch] = []
            rematched: list[StepMatch] | None = None
            for ref in refs:
                found = by_name.get(ref.correlation)
                if found is None:
                    continue  # its correlation was removed by a reload since ingest
                ci = found[0]
                key: KeyTuple = ref.key
                if same_rules:
                    matches.extend((ci, si, key) for si in ref.steps)
                else:  # matched under other rules: match again, for this (ci, key) only
                    if rematched is None:
                        rematched = engine.match(event)
                    matches.extend(m for m in rematched if m[0] == ci and m[2] == key)
            if record.produced_ms is not None and not shadow:
                outcome.produced_ms.append(record.produced_ms)
            if not matches:
                continue
            outcome.events += 1
            source = (record.source_partition, record.source_offset)
            if record.time_ns < engine.watermark_ns and record.source_offset <= applied.get(
                record.source_partition, -1
            ):
                stats.duplicates += 1  # a redelivered copy behind the watermark
                continue
            if record.source_offset > applied.get(record.source_partition, -1):
                applied[record.source_partition] = record.source_offset
            late_before = stats.late
            outcome.incidents.extend(engine.submit(event, matches, source=source, observe=False))
            if outcome.first_late is None and stats.late != late_before:
                outcome.first_late = (*source, record.time_ns, engine.watermark_ns)

    def on_chain(
        self, partition: int, offset: int, record: ChainRecord, *, persist: bool = True
    ) -> BatchOutcome:
        """Apply one chain record (streams/runtime/partition_chains.py): the sender's level
        watermarks and the derived events it sent here; then release what they allow."""
        if self._pending_ruleset is not None:
            self._apply_reload()
        part = self._partition(partition, offset)
        outcome = BatchOutcome()
        chain = part.chain
        if chain is None:  # no chains in these rules (a reload removed them): nothing to do
            return outcome
        engine = part.engine
        duplicates = chain.duplicates
        outcome.events = self._take_chain(partition, engine, chain, record)
        outcome.duplicates = chain.duplicates - duplicates
        outcome.incidents.extend(engine.advance_to(engine.watermark_ns))
        if persist:
            self._persist(partition, part)
        return outcome

    def chain_records(
        self, partition: int, now_ns: int, *, report: bool = True
    ) -> list[tuple[int, bytes]]:
        """(destination partition, value) of the chain records this partition sends now."""
        derived, reports = self.chain_outputs(partition, now_ns, report=report)
        return derived + reports

    def chain_outputs(
        self, partition: int, now_ns: int, *, report: bool = True
    ) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
        """The chain records this partition sends now: (with derived events, which go into
        the outbox; level reports only)."""
        part = self._partitions.get(partition)
        if part is None or part.chain is None:
            return [], []
        return self._chain_records(partition, part.engine, part.chain, now_ns, report=report)

    def persist(self, partition: int) -> None:
        """Write the entries changed since the last write of this partition to the store."""
        part = self._partitions.get(partition)
        if part is not None:
            self._persist(partition, part)


class ShadowCorrelator:
    """The shadow rules' correlate stage, isolated from the live one.

    Wraps their `PartitionCorrelator` (`shadow=True`): an exception while correlating a record or
    writing the shadow state loses only that shadow work. It is counted (`errors`, `on_error`),
    logged once per shadow ruleset (again after a reload), and never reaches the caller, which
    has already correlated the record with the live rules."""

    def __init__(
        self, correlator: PartitionCorrelator, on_error: Callable[[], None] = lambda: None
    ) -> None:
        assert correlator.shadow
        self.correlator = correlator
        self.on_error = on_error
        self.errors = 0
        self._logged = False

    def on_batch(self, partition: int, offset: int, batch: CorrelateBatch) -> BatchOutcome | None:
        """The record's shadow outcome (persisted by `persist`), or None when it failed."""
        try:
            return self.correlator.on_batch(partition, offset, batch, persist=False)
        except Exception as exc:
            self._failed(exc, f"correlate record {partition}@{offset}")
            return None

    def persist(self, partition: int) -> None:
        try:
            self.correlator.persist(partition)
        except Exception as exc:
            self._failed(exc, f"writing the state of partition {partition}")

    def reload(self, ruleset: Ruleset) -> None:
        self.correlator.reload(ruleset)
        self._logged = False

    def revoke(self, partitions: set[int]) -> None:
        self.correlator.revoke(partitions)

    def partitions(self) -> dict[int, Engine]:
        return self.correlator.partitions()

    def _failed(self, exc: Exception, what: str) -> None:
        self.errors += 1
        self.on_error()
        if not self._logged:
            self._logged = True
            log.error(
                "shadow rules failed (%s): %r; only their work is lost, the live rules are not "
                "affected; counted in fc_shadow_errors_total, logged once per shadow ruleset",
                what,
                exc,
                exc_info=exc,
            )
