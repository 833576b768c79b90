"""The correlate stage: one engine per partition of the correlate topic, persisted in a table.

Pure (no Faust): the table is any mapping-like store, so tests use a dict and the worker a
changelog-backed Faust table. After every record the entries the engine changed are written
back (`store[key] = bytes`), which is what makes a restarted or rebalanced worker continue
exactly where the state was: on the first record of a partition the engine is rebuilt from the
entries of that partition.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from streams.core.engine import Engine, KeyTuple
from streams.core.events import Event
from streams.core.rules import Correlation, Ruleset
from streams.core.snapshot import entry_from_data, entry_to_data
from streams.runtime.records import TICK_KEY, entry_key, meta_key

__all__ = ["PartitionCorrelator", "RecordOutcome", "StateStore"]

log = logging.getLogger(__name__)


class StateStore(Protocol):
    """What the correlate stage needs of a table (a Faust Table or a dict)."""

    def __getitem__(self, key: bytes) -> Any: ...
    def __setitem__(self, key: bytes, value: bytes) -> None: ...
    def __delitem__(self, key: bytes) -> None: ...
    def __contains__(self, key: object) -> bool: ...
    def items(self) -> Any: ...


@dataclass
class RecordOutcome:
    incidents: list[dict[str, Any]]
    late: bool = False
    duplicate: bool = False
    source_timestamp_ms: float | None = None


@dataclass
class _Partition:
    engine: Engine
    advanced_wall_ns: int  # wall time when the partition's max event time last increased
    meta_written: tuple[int, int] = (-(2**63), -(2**63))  # (max time, watermark) last written


class PartitionCorrelator:
    def __init__(
        self,
        ruleset: Ruleset,
        store: StateStore,
        *,
        lateness_ns: int,
        max_pending: int,
        wall_clock: Callable[[], int],
        idle_after_ns: int | None = None,
    ) -> None:
        self.ruleset = ruleset
        self.store = store
        self.lateness_ns = lateness_ns
        self.max_pending = max_pending
        self.wall_clock = wall_clock
        self.idle_after_ns = lateness_ns if idle_after_ns is None else idle_after_ns
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

    def _new_engine(self) -> Engine:
        return Engine(
            self.ruleset,
            lateness_ns=self.lateness_ns,
            max_pending=self.max_pending,
            clock=self.wall_clock,
            track_changes=True,
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
        by_name = self._by_name()
        restored = 0
        for key, value in list(self._iter_store()):
            if key == meta_key(partition):
                meta = orjson.loads(value)
                engine.restore_clock(meta["max"], meta["wm"])
                continue
            if key.startswith(b"\x00"):
                continue
            data = orjson.loads(value)
            if data.get("p") != partition:
                continue
            entry = entry_from_data(by_name, data)
            if entry is not None:
                engine.restore(*entry)
                restored += 1
        if restored:
            log.info("partition %d: restored %d state entries", partition, restored)
            # Without a meta entry (or with an older one), the restored events themselves say
            # how far event time got, so an idle stream still releases what they hold.
            newest = engine.newest_event_ns()
            if newest > engine.max_time_ns:
                engine.restore_clock(newest, newest - self.lateness_ns)
        return _Partition(engine, self.wall_clock())

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
                if moved is not None:
                    engine.restore(*moved)
                else:
                    self._delete(entry_key(old_rules.correlations[ci].name, key))
            engine.restore_clock(part.engine.max_time_ns, part.engine.watermark_ns)
            self._partitions[partition] = _Partition(engine, part.advanced_wall_ns)

    # -- records --------------------------------------------------------------------------------

    def on_message(
        self,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes,
        *,
        persist: bool = True,
    ) -> RecordOutcome:
        """Apply one record; with `persist=False` the caller calls `persist` after a batch."""
        if self._pending_ruleset is not None:
            self._apply_reload()
        part = self._partition(partition)
        engine = part.engine
        before_max = engine.max_time_ns
        if key == TICK_KEY:
            tick = orjson.loads(value)
            incidents = self._tick(part, int(tick["tick"]), int(tick["hw"]))
            outcome = RecordOutcome(incidents)
        else:
            outcome = self._record(engine, partition, offset, value)
        if engine.max_time_ns > before_max:
            part.advanced_wall_ns = self.wall_clock()
        if persist:
            self._persist(partition, part)
        return outcome

    def persist(self, partition: int) -> None:
        """Write the entries changed since the last write of this partition to the store."""
        part = self._partitions.get(partition)
        if part is not None:
            self._persist(partition, part)

    def _record(self, engine: Engine, partition: int, offset: int, value: bytes) -> RecordOutcome:
        record = orjson.loads(value)
        found = self._by_name().get(record["c"])
        outcome = RecordOutcome([], source_timestamp_ms=record.get("ts"))
        if found is None:
            return outcome  # its correlation was removed by a reload since ingest
        ci, _corr = found
        event = Event(record["e"], int(record["t"]), offset)
        key: KeyTuple = tuple(record["k"])
        if record.get("d") == self.ruleset.digest:
            matches = [(ci, si, key) for si in record["s"]]
        else:  # matched under other rules: match again against this correlation only
            matches = [m for m in engine.match(event) if m[0] == ci and m[2] == key]
        late, dups = engine.stats.late, engine.stats.duplicates
        # The watermark follows the ingest stage's high-water mark (the slowest source
        # partition), not this record's time: records of fast partitions must not make
        # those of slow ones late.
        source = (record["src"][0], record["src"][1])
        incidents = engine.submit(event, matches, source=source, observe=False)
        incidents.extend(engine.observe(int(record["hw"])))
        outcome.incidents = incidents
        outcome.late = engine.stats.late != late
        outcome.duplicate = engine.stats.duplicates != dups
        return outcome

    def _tick(self, part: _Partition, wall_ns: int, high_water_ns: int) -> list[dict[str, Any]]:
        engine = part.engine
        incidents = engine.observe(high_water_ns)
        if engine.max_time_ns > -(2**63):
            idle = wall_ns - part.advanced_wall_ns
            if idle >= self.idle_after_ns:
                # The stream is idle: let event time advance with wall time so that absences
                # fire and held events are released although no event arrives.
                incidents.extend(engine.advance_to(engine.max_time_ns + idle - self.lateness_ns))
        return incidents

    def _persist(self, partition: int, part: _Partition) -> None:
        engine = part.engine
        for ci, key in engine.take_changes():
            corr = engine.correlations[ci]
            name = entry_key(corr.name, key)
            entry = engine.entry(ci, key)
            if entry is None:
                self._delete(name)
            else:
                data = entry_to_data(corr, key, entry)
                data["p"] = partition
                self.store[name] = orjson.dumps(data)
        clock = (engine.max_time_ns, engine.watermark_ns)
        if clock != part.meta_written:  # once per batch at most: persist() follows a batch
            part.meta_written = clock
            self.store[meta_key(partition)] = orjson.dumps(
                {"max": engine.max_time_ns, "wm": engine.watermark_ns, "p": partition}
            )

    def _delete(self, name: bytes) -> None:
        if name in self.store:
            del self.store[name]
