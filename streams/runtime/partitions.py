"""The correlate stage: one engine per partition of the correlate topic, persisted in a table.

Pure (no Faust): the table is any mapping-like store, so tests use a dict and the worker a
changelog-backed Faust table. A record is a `CorrelateBatch` (streams/runtime/records.py): its
events are submitted to the partition's engine with the matches found at ingest, then the
partition's merged source progress (streams/runtime/progress.py) moves the watermark. After a
batch the entries the engine changed are written back once (`store[key] = bytes`), which is what
makes a restarted or rebalanced worker continue exactly where the state was: on the first record
of a partition the engine is rebuilt from the entries of that partition.
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
from streams.runtime.records import CorrelateBatch, entry_key, meta_key

__all__ = ["BatchOutcome", "PartitionCorrelator", "StateStore"]

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


_HELD = b"\x1e"  # entry key + _HELD + seq: one event held in the reorder buffer for that entry


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
    ) -> None:
        self.ruleset = ruleset
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
        for key, value in list(self._iter_store()):
            if key == meta_key(partition):
                meta = orjson.loads(value)
                engine.restore_clock(meta["max"], meta["wm"])
                progress = MergedProgress.from_data(meta.get("progress"))
                continue
            if key.startswith(b"\x00"):
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
        part = _Partition(engine, progress)
        for name, data in entries.items():
            items = held.pop(name, {})
            data["held"] = [item for _, (_, item) in sorted(items.items())]
            entry = entry_from_data(by_name, data)
            if entry is None:
                unreadable += 1
                continue
            engine.restore(*entry)
            part.held_written[name] = {seq: store_key for seq, (store_key, _) in items.items()}
            restored += 1
        for orphans in held.values():  # held events whose entry is gone: drop them
            for store_key, _ in orphans.values():
                self._delete(store_key)
        if unreadable:
            log.warning(
                "partition %d: %d state entries could not be read for the current rules "
                "(corrupt, or their correlation was removed or changed type); skipped",
                partition, unreadable,
            )
        if restored:
            log.info("partition %d: restored %d state entries", partition, restored)
            # Without a meta entry (or with an older one), the restored events themselves say
            # how far event time got.
            newest = engine.newest_event_ns()
            if newest > engine.max_time_ns:
                engine.restore_clock(newest, newest - self.lateness_ns)
        return part

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
            for ci, key in part.engine.entry_keys():
                entry = part.engine.entry(ci, key)
                if entry is None:
                    continue
                data = entry_to_data(old_rules.correlations[ci], key, entry)
                moved = entry_from_data(by_name, data)
                name = entry_key(old_rules.correlations[ci].name, key)
                if moved is not None:
                    engine.restore(*moved)
                    engine.changed.add((moved[0], moved[1]))
                else:
                    self._delete(name)
                    for store_key in part.held_written.pop(name, {}).values():
                        self._delete(store_key)
            engine.restore_clock(part.engine.max_time_ns, part.engine.watermark_ns)
            self._partitions[partition] = _Partition(
                engine,
                part.progress,
                reports=part.reports,
                held_written=part.held_written,
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
            by_name = self._by_name()
            same_rules = batch.digest == self.ruleset.digest
            base = offset << _SEQ_SHIFT
            for index, record in enumerate(batch.events):
                event = Event(record.payload, record.time_ns, base + index)
                matches: list[StepMatch] = []
                rematched: list[StepMatch] | None = None
                for ref in record.matches:
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
                if record.produced_ms is not None:
                    outcome.produced_ms.append(record.produced_ms)
                if not matches:
                    continue
                outcome.events += 1
                source = (record.source_partition, record.source_offset)
                late_before = stats.late
                outcome.incidents.extend(
                    engine.submit(event, matches, source=source, observe=False)
                )
                if outcome.first_late is None and stats.late != late_before:
                    outcome.first_late = (*source, record.time_ns, engine.watermark_ns)
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

    def persist(self, partition: int) -> None:
        """Write the entries changed since the last write of this partition to the store."""
        part = self._partitions.get(partition)
        if part is not None:
            self._persist(partition, part)

    def _persist(self, partition: int, part: _Partition) -> None:
        """Write what changed: an entry's state (when its value changed), and each held event
        as an entry of its own, written once when held and deleted once released — so a key
        that holds many events costs per event, not per batch times events held."""
        engine = part.engine
        held_changes = engine.take_held_changes()
        for ci, key in engine.take_changes():
            corr = engine.correlations[ci]
            name = entry_key(corr.name, key)
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
            name = entry_key(engine.correlations[ci].name, key)
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
        if clock != part.meta_written:  # once per batch at most: persist() follows a batch
            part.meta_written = clock
            self.store[meta_key(partition)] = orjson.dumps(
                {
                    "max": engine.max_time_ns,
                    "wm": engine.watermark_ns,
                    "p": partition,
                    "progress": part.progress.to_data(),
                }
            )

    def _delete(self, name: bytes) -> None:
        if name in self.store:
            del self.store[name]
