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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from streams.core.engine import Engine, KeyTuple, StepMatch
from streams.core.events import Event
from streams.core.rules import Correlation, Ruleset
from streams.core.snapshot import entry_from_data, entry_to_data, held_to_data
from streams.runtime.progress import NEG_INF, MergedProgress
from streams.runtime.records import SHADOW_PREFIX, CorrelateBatch, entry_key, meta_key

__all__ = ["BatchOutcome", "PartitionCorrelator", "ShadowCorrelator", "StateStore"]

log = logging.getLogger(__name__)

_SEQ_SHIFT = 20  # an event's tie-breaking sequence: record offset << 20 | index in the record


class StateStore(Protocol):
    """What the correlate stage needs of a table (a Faust Table or a dict)."""

    def __getitem__(self, key: bytes) -> Any: ...
    def __setitem__(self, key: bytes, value: bytes) -> None: ...
    def __delitem__(self, key: bytes) -> None: ...
    def __contains__(self, key: object) -> bool: ...
    def items(self) -> Any: ...


@dataclass
class BatchOutcome:
    incidents: list[dict[str, Any]] = field(default_factory=list)
    events: int = 0
    late: int = 0
    duplicates: int = 0
    produced_ms: list[float] = field(default_factory=list)  # source produce times (latency)
    # the first late event of the record: (source partition, source offset, time, watermark)
    first_late: tuple[int, int, int, int] | None = None


@dataclass
class _Partition:
    engine: Engine
    progress: MergedProgress
    meta_written: tuple[int, int] = (NEG_INF, NEG_INF)  # (max, watermark) last written
    reports: int = 0  # progress merges that changed something, for the meta entry
    # per entry key: the held events written as their own store entries (seq -> store key),
    # and a hash of the entry's last written value (an unchanged entry is not written again)
    held_written: dict[bytes, dict[int, bytes]] = field(default_factory=dict)
    entry_hash: dict[bytes, int] = field(default_factory=dict)
    # store keys to delete at the next write of the partition: found while restoring or
    # reloading, which may run outside the record whose partition a store write needs
    deletes: list[bytes] = field(default_factory=list)
    # per source partition, the highest source offset this partition has received: a late
    # event at or below it is a redelivered copy (an ingest rebalance or a crash re-reads from
    # the last committed offset), counted as a duplicate rather than as late. Used only to
    # classify events that are dropped anyway, so a recreated events topic (offsets from 0)
    # can never make a new event be dropped.
    applied: dict[int, int] = field(default_factory=dict)
    applied_written: dict[int, int] = field(default_factory=dict)


_HELD = b"\x1e"  # entry key + _HELD + seq: one event held in the reorder buffer for that entry


def _applied_from_data(data: Any) -> dict[int, int]:
    """The meta entry's `applied` map ({source partition: offset}); older metas have none."""
    if not isinstance(data, dict):
        return {}
    out: dict[int, int] = {}
    for key, value in data.items():
        if isinstance(key, str) and key.isdigit() and isinstance(value, int):
            out[int(key)] = value
    return out


def _partition_of(value: bytes) -> int | None:
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return data.get("p") if isinstance(data, dict) else None


def held_key(name: bytes, seq: int) -> bytes:
    return name + _HELD + str(seq).encode()


class PartitionCorrelator:
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
    ) -> None:
        self.ruleset = ruleset
        self.shadow = shadow
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

    def _new_engine(self) -> Engine:
        extra: dict[str, Any] = {}
        if self.max_state_entries is not None:
            extra["max_state_entries"] = self.max_state_entries
        return Engine(
            self.ruleset,
            lateness_ns=self.lateness_ns,
            max_pending=self.max_pending,
            clock=self.wall_clock,
            track_changes=True,
            **extra,
        )

    def _by_name(self) -> dict[str, tuple[int, Correlation]]:
        if self._by_name_for is not self.ruleset:
            self._by_name_cache = {c.name: (i, c) for i, c in enumerate(self.ruleset.correlations)}
            self._by_name_for = self.ruleset
        return self._by_name_cache

    def _partition(self, partition: int) -> _Partition:
        part = self._partitions.get(partition)
        if part is None:
            part = self._partitions[partition] = self._recover(partition)
        return part

    def _recover(self, partition: int) -> _Partition:
        engine = self._new_engine()
        progress = MergedProgress()
        by_name = self._by_name()
        restored = unreadable = 0
        entries: dict[bytes, dict[str, Any]] = {}
        held: dict[bytes, dict[int, tuple[bytes, list[Any]]]] = {}
        namespace = self.namespace
        own_meta = namespace + meta_key(partition)
        shadow_state: list[tuple[bytes, bytes]] = []
        applied: dict[int, int] = {}
        for key, value in list(self._iter_store()):
            if namespace and not key.startswith(namespace):
                continue
            if key == own_meta:
                meta = orjson.loads(value)
                engine.restore_clock(meta["max"], meta["wm"])
                progress = MergedProgress.from_data(meta.get("progress"))
                applied = _applied_from_data(meta.get("applied"))
                continue
            if key.startswith(b"\x00", len(namespace)):  # meta entries (and shadow state)
                if self.discard_shadow_state and key.startswith(SHADOW_PREFIX):
                    shadow_state.append((key, value))
                continue
            try:
                data = orjson.loads(value)
            except orjson.JSONDecodeError:
                unreadable += 1
                continue
            if not isinstance(data, dict) or data.get("p") != partition:
                continue
            if "h" in data:  # one held event of an entry
                name, _, seq = key.rpartition(_HELD)
                held.setdefault(name, {})[int(seq)] = (key, data["h"])
            else:
                entries[key] = data
        part = _Partition(engine, progress, applied=applied, applied_written=dict(applied))
        if shadow_state:
            part.deletes.extend(self._stale_shadow_state(partition, shadow_state))
        dropped: list[str] = []
        for name, data in entries.items():
            items = held.pop(name, {})
            data["held"] = [item for _, (_, item) in sorted(items.items())]
            entry = entry_from_data(by_name, data, dropped)
            if entry is None:
                unreadable += 1
                continue
            engine.restore(*entry)
            part.held_written[name] = {seq: store_key for seq, (store_key, _) in items.items()}
            restored += 1
        for orphans in held.values():  # held events whose entry is gone: drop them
            part.deletes.extend(store_key for store_key, _ in orphans.values())
        self._recovered(partition, engine, restored, unreadable, dropped)
        return part

    def _recovered(
        self,
        partition: int,
        engine: Engine,
        restored: int,
        unreadable: int,
        dropped: list[str] | None = None,
    ) -> None:
        if dropped:
            log.warning(
                "%s %d: %d restored entries lost their partial match (their correlation changed "
                "shape), the first: %s",
                self._label,
                partition,
                len(dropped),
                dropped[0],
            )
        if unreadable:
            log.warning(
                "%s %d: %d state entries could not be read for the current rules "
                "(corrupt, or their correlation was removed or changed type); skipped",
                self._label,
                partition,
                unreadable,
            )
        if restored:
            log.info("%s %d: restored %d state entries", self._label, partition, restored)
            # Without a meta entry (or with an older one), the restored events themselves say
            # how far event time got.
            newest = engine.newest_event_ns()
            if newest > engine.max_time_ns:
                engine.restore_clock(newest, newest - self.lateness_ns)

    def _stale_shadow_state(self, partition: int, found: list[tuple[bytes, bytes]]) -> list[bytes]:
        """The partition's shadow state, to delete (this worker runs no shadow rules)."""
        shadow_meta = SHADOW_PREFIX + meta_key(partition)
        stale = [
            key for key, value in found if key == shadow_meta or _partition_of(value) == partition
        ]
        if stale:
            log.info(
                "partition %d: deleting %d state entries of shadow rules (this worker runs none)",
                partition,
                len(stale),
            )
        return stale

    def _iter_store(self) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self.store.items():
            if value is not None:
                yield key, value

    def _apply_reload(self) -> None:
        ruleset, self._pending_ruleset = self._pending_ruleset, None
        assert ruleset is not None
        old_parts = self._partitions
        old_rules = self.ruleset
        self.ruleset = ruleset
        self._partitions = {}
        by_name = self._by_name()
        for partition, part in old_parts.items():
            engine = self._new_engine()
            deletes = part.deletes
            for ci, key in part.engine.entry_keys():
                entry = part.engine.entry(ci, key)
                if entry is None:
                    continue
                data = entry_to_data(old_rules.correlations[ci], key, entry)
                moved = entry_from_data(by_name, data)
                name = self.namespace + entry_key(old_rules.correlations[ci].name, key)
                if moved is not None:
                    engine.restore(*moved)
                    engine.changed.add((moved[0], moved[1]))
                else:
                    deletes.append(name)
                    deletes.extend(part.held_written.pop(name, {}).values())
            engine.restore_clock(part.engine.max_time_ns, part.engine.watermark_ns)
            self._partitions[partition] = _Partition(
                engine,
                part.progress,
                reports=part.reports,
                held_written=part.held_written,
                deletes=deletes,
                applied=part.applied,
                applied_written=part.applied_written,
            )

    # -- records --------------------------------------------------------------------------------

    def on_batch(
        self, partition: int, offset: int, batch: CorrelateBatch, *, persist: bool = True
    ) -> BatchOutcome:
        """Apply one correlate record; with `persist=False` the caller calls `persist` later."""
        if self._pending_ruleset is not None:
            self._apply_reload()
        part = self._partition(partition)
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
        base = offset << _SEQ_SHIFT
        for index, record in enumerate(batch.events):
            refs = record.shadow_matches if shadow else record.matches
            if not refs:  # matched only the other set (live or shadow)
                continue
            event = Event(record.payload, record.time_ns, base + index)
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

    def persist(self, partition: int) -> None:
        """Write the entries changed since the last write of this partition to the store."""
        part = self._partitions.get(partition)
        if part is not None:
            self._persist(partition, part)

    def _persist(self, partition: int, part: _Partition) -> None:
        """Write what changed: an entry's state (when its value changed), and each held event
        as an entry of its own, written once when held and deleted once released — so a key
        that holds many events costs per event, not per batch times events held."""
        if part.deletes:
            for stale_key in part.deletes:
                self._delete(stale_key)
            part.deletes.clear()
        engine = part.engine
        held_changes = engine.take_held_changes()
        for ci, key in engine.take_changes():
            corr = engine.correlations[ci]
            name = self.namespace + entry_key(corr.name, key)
            entry = engine.entry(ci, key, held=False)
            written = part.held_written.get(name, {})
            if entry is None:
                self._delete(name)
                part.entry_hash.pop(name, None)
                for store_key in written.values():
                    self._delete(store_key)
                part.held_written.pop(name, None)
                continue
            data = entry_to_data(corr, key, entry)
            data["p"] = partition
            value = orjson.dumps(data)
            digest = hash(value)
            if part.entry_hash.get(name) != digest:
                self.store[name] = value
                part.entry_hash[name] = digest
            for seq, item in held_changes.pop((ci, key), {}).items():
                if item is None:
                    if seq in written:
                        self._delete(written.pop(seq))
                elif seq not in written:
                    store_key = held_key(name, seq)
                    held = held_to_data(item, ci, key)
                    self.store[store_key] = orjson.dumps({"p": partition, "h": held})
                    written[seq] = store_key
            if written:
                part.held_written[name] = written
            else:
                part.held_written.pop(name, None)
        for (ci, key), changes in held_changes.items():  # keys whose entry did not change
            name = self.namespace + entry_key(engine.correlations[ci].name, key)
            written = part.held_written.get(name, {})
            for seq, item in changes.items():
                if item is None and seq in written:
                    self._delete(written.pop(seq))
            if not written:
                part.held_written.pop(name, None)
        # Written when the partition's clock moved (the merged progress goes with it): not for
        # every progress report, which would write the changelog once a second per partition
        # on a silent stream. A restart may then restore older progress: conservative only.
        clock = (engine.max_time_ns, engine.watermark_ns)
        if clock != part.meta_written or part.applied != part.applied_written:
            # once per batch at most: persist() follows a batch
            part.meta_written = clock
            part.applied_written = dict(part.applied)
            self.store[self.namespace + meta_key(partition)] = orjson.dumps(
                {
                    "max": engine.max_time_ns,
                    "wm": engine.watermark_ns,
                    "p": partition,
                    "progress": part.progress.to_data(),
                    "applied": {str(k): v for k, v in part.applied.items()},
                }
            )

    def _delete(self, name: bytes) -> None:
        if name in self.store:
            del self.store[name]


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
