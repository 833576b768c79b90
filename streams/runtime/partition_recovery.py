"""The correlate stage's recovery: a partition's engine rebuilt from the store on its first
record (state entries, held events, the meta entry), and rule reloads, which move each engine's
entries to an engine of the new rules.

The live correlator of a worker without shadow rules also deletes the shadow state it finds
while recovering. `PartitionCorrelator` (streams/runtime/partitions.py) is built on
`PartitionRecovery`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from streams.core._event_data import event_from_data
from streams.core.engine import Engine
from streams.core.rules import Correlation, Ruleset
from streams.core.snapshot import entry_from_data, entry_to_data
from streams.runtime.partition_chains import ChainState, PartitionChains
from streams.runtime.partition_outbox import outbox_prefix
from streams.runtime.partition_persist import _HELD, PartitionPersistence, _Partition
from streams.runtime.progress import MergedProgress
from streams.runtime.records import SHADOW_PREFIX, entry_key, meta_key

log = logging.getLogger("streams.runtime.partitions")


def _applied_from_data(data: Any) -> dict[int, int]:
    """The meta entry's `applied` map ({source partition: offset}); older metas have none."""
    if not isinstance(data, dict):
        return {}
    out: dict[int, int] = {}
    for key, value in data.items():
        if isinstance(key, str) and key.isdigit() and isinstance(value, int):
            out[int(key)] = value
    return out


def _add_held(held: dict[bytes, dict[int, tuple[bytes, list[Any]]]], key: bytes, item: Any) -> bool:
    """One held event's store entry, under its entry's key and its seq (a derived event's seq
    is its position, streams/runtime/partition_persist.py `held_key`)."""
    try:
        seq = event_from_data(item[0]).seq
    except (TypeError, ValueError, IndexError, KeyError):
        return False
    held.setdefault(key.partition(_HELD)[0], {})[seq] = (key, item)
    return True


def _partition_of(value: bytes) -> int | None:
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return data.get("p") if isinstance(data, dict) else None


class PartitionRecovery(PartitionPersistence, PartitionChains):
    """Engines built, restored and reloaded; the state is set up by `PartitionCorrelator`."""

    ruleset: Ruleset
    discard_shadow_state: bool
    lateness_ns: int
    max_pending: int
    max_state_entries: int | None
    wall_clock: Callable[[], int]
    _label: str
    _partitions: dict[int, _Partition]
    _pending_ruleset: Ruleset | None
    _by_name_for: Ruleset | None
    _by_name_cache: dict[str, tuple[int, Correlation]]

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
            strict_release=True,  # positions need not follow arrival here (`Engine`)
            **extra,
        )

    def _by_name(self) -> dict[str, tuple[int, Correlation]]:
        if self._by_name_for is not self.ruleset:
            self._by_name_cache = {c.name: (i, c) for i, c in enumerate(self.ruleset.correlations)}
            self._by_name_for = self.ruleset
        return self._by_name_cache

    def _chain_state(self, partition: int, engine: Engine) -> ChainState | None:
        """With routed chains, the partition's side of the exchange, its engine routed."""
        if not self._routes_chains():
            return None
        chain = ChainState()
        self._route(partition, engine, chain)
        return chain

    def _recover(self, partition: int, first_offset: int | None = None) -> _Partition:
        """The partition's engine from the store; `first_offset`: the first offset read since
        it was assigned (the outbox's entries below it were committed)."""
        engine = self._new_engine()
        chain = self._chain_state(partition, engine)
        progress = MergedProgress()
        unreadable = 0
        entries: dict[bytes, dict[str, Any]] = {}
        held: dict[bytes, dict[int, tuple[bytes, list[Any]]]] = {}
        namespace = self.namespace
        own_meta = namespace + meta_key(partition)
        shadow_state: list[tuple[bytes, bytes]] = []
        applied: dict[int, int] = {}
        own_outbox = namespace + outbox_prefix(partition)
        outbox_found: list[tuple[bytes, bytes]] = []
        for key, value in list(self._iter_store()):
            if namespace and not key.startswith(namespace):
                continue
            if key.startswith(own_outbox):
                outbox_found.append((key, value))
                continue
            if key == own_meta:
                progress, applied = self._restore_meta(partition, engine, chain, value)
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
                if not _add_held(held, key, data["h"]):
                    unreadable += 1
            else:
                entries[key] = data
        part = _Partition(
            engine, progress, applied=applied, applied_written=dict(applied), chain=chain
        )
        if shadow_state:
            part.deletes.extend(self._stale_shadow_state(partition, shadow_state))
        if outbox_found:
            part.outbox, stale = self._recover_outbox(partition, first_offset, outbox_found)
            part.deletes.extend(stale)
        dropped: list[str] = []
        restored, lost = self._restore_entries(part, entries, held, dropped)
        self._recovered(partition, engine, restored, unreadable + lost, dropped)
        return part

    def _restore_entries(
        self,
        part: _Partition,
        entries: dict[bytes, dict[str, Any]],
        held: dict[bytes, dict[int, tuple[bytes, list[Any]]]],
        dropped: list[str],
    ) -> tuple[int, int]:
        """Entries and their held events into the partition's engine: (restored, unreadable).
        Held events whose entry is gone are deleted."""
        by_name = self._by_name()
        restored = unreadable = 0
        for name, data in entries.items():
            items = held.pop(name, {})
            data["held"] = [item for _, item in items.values()]
            entry = entry_from_data(by_name, data, dropped)
            if entry is None:
                unreadable += 1
                continue
            part.engine.restore(*entry)
            part.held_written[name] = {seq: store_key for seq, (store_key, _) in items.items()}
            restored += 1
        for orphans in held.values():
            part.deletes.extend(store_key for store_key, _ in orphans.values())
        return restored, unreadable

    def _restore_meta(
        self, partition: int, engine: Engine, chain: ChainState | None, value: bytes
    ) -> tuple[MergedProgress, dict[int, int]]:
        """The meta entry: the clock, the merged progress, the `applied` marks and (routed
        chains) the level watermarks and what the other partitions reported and sent."""
        meta = orjson.loads(value)
        engine.restore_clock(meta["max"], meta["wm"])
        if chain is not None:
            chain.restore(engine, meta.get("chain"))
            self._set_floors(partition, engine, chain)
        return MergedProgress.from_data(meta.get("progress")), _applied_from_data(
            meta.get("applied")
        )

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
            # The clock comes from the meta entry only (or, without one, from the next progress
            # reports): the restored events' own times are no watermark — an event of a fast
            # source partition is ahead of the slowest one, and a clock set from it made the
            # next events of slow partitions late after a crash that lost the meta entry.

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
        self._make_router()
        self._partitions = {}
        by_name = self._by_name()
        for partition, part in old_parts.items():
            engine = self._new_engine()
            deletes = part.deletes
            chain = self._chain_state(partition, engine)
            if chain is not None and part.chain is not None:
                # the exchange goes on: what the others reported and what was taken from them
                chain.reported, chain.received = part.chain.reported, part.chain.received
                marks = part.engine.level_watermarks
                for level in range(1, min(engine.levels, len(marks))):
                    engine.level_watermarks[level] = marks[level]
                self._set_floors(partition, engine, chain)
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
                chain=chain,
                outbox=part.outbox,
            )
