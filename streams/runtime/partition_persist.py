"""The correlate stage's state in the store: the per-partition bookkeeping of what was written,
and writing a partition's changes back after a batch (`_persist`).

An entry's state is written when its value changed; each held event is an entry of its own
(`held_key`), written once when held and deleted once released; the partition's meta entry
(`meta_key`: clock, merged source progress, `applied` offsets) is written when the clock moved.
`PartitionCorrelator` (streams/runtime/partitions.py) is built on `PartitionPersistence`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from streams.core.derived import DerivedSeq
from streams.core.engine import Engine
from streams.core.snapshot import entry_to_data, held_to_data
from streams.runtime.partition_chains import ChainState
from streams.runtime.partition_outbox import Outbox, PartitionOutbox
from streams.runtime.progress import NEG_INF, MergedProgress
from streams.runtime.records import entry_key, meta_key


class StateStore(Protocol):
    """What the correlate stage needs of a table (a Faust Table or a dict)."""

    def __getitem__(self, key: bytes) -> Any: ...
    def __setitem__(self, key: bytes, value: bytes) -> None: ...
    def __delitem__(self, key: bytes) -> None: ...
    def __contains__(self, key: object) -> bool: ...
    def items(self) -> Any: ...


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
    # routed chains (streams/runtime/partition_chains.py): None when the rules have none
    chain: ChainState | None = None
    chain_written: dict[str, Any] | None = None
    # the outputs of its groups until the brokers have them (streams/runtime/partition_outbox.py)
    outbox: Outbox = field(default_factory=Outbox)


_HELD = b"\x1e"  # entry key + _HELD + seq: one event held in the reorder buffer for that entry


def held_key(name: bytes, seq: int) -> bytes:
    """A held event's store key; a derived event's seq is a position (base and tail, JSON: no
    raw control character, so the first `_HELD` of a key always ends the entry key)."""
    if isinstance(seq, DerivedSeq):
        return name + _HELD + b"%d:" % int(seq) + orjson.dumps(list(seq.tail))
    return name + _HELD + str(int(seq)).encode()


class PartitionPersistence(PartitionOutbox):
    """Writes a partition's changes to the store; the state is set up by `PartitionCorrelator`."""

    store: StateStore
    namespace: bytes
    _partitions: dict[int, _Partition]

    def _outbox_parts(self) -> dict[int, Outbox]:
        return {partition: part.outbox for partition, part in self._partitions.items()}

    def _persist(self, partition: int, part: _Partition) -> None:
        """Write what changed: an entry's state (when its value changed), and each held event
        as an entry of its own, written once when held and deleted once released — so a key
        that holds many events costs per event, not per batch times events held."""
        if part.deletes:
            for stale_key in part.deletes:
                self._delete(stale_key)
            part.deletes.clear()
        if self.outbox_enabled:  # the group's outputs before the state that emitted them
            self._write_outbox(partition, part.outbox)
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
            # Order matters when the writes stop part-way (a crash: the changelog keeps a
            # prefix): a newly held event before the entry whose redelivery marks cover it, and a
            # released one deleted after the entry whose state took it in. Otherwise a restore
            # could find the mark without the event and drop its redelivered copy as a duplicate.
            changes = held_changes.pop((ci, key), {})
            for seq, item in changes.items():
                if item is not None and seq not in written:
                    store_key = held_key(name, seq)
                    held = held_to_data(item, ci, key)
                    self.store[store_key] = orjson.dumps({"p": partition, "h": held})
                    written[seq] = store_key
            data = entry_to_data(corr, key, entry)
            data["p"] = partition
            value = orjson.dumps(data)
            digest = hash(value)
            if part.entry_hash.get(name) != digest:
                self.store[name] = value
                part.entry_hash[name] = digest
            for seq, item in changes.items():
                if item is None and seq in written:
                    self._delete(written.pop(seq))
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
        self._write_meta(partition, part)

    def _write_meta(self, partition: int, part: _Partition) -> None:
        """Written when the partition's clock moved (the merged progress goes with it): not for
        every progress report, which would write the changelog once a second per partition
        on a silent stream. A restart may then restore older progress: conservative only."""
        engine = part.engine
        clock = (engine.max_time_ns, engine.watermark_ns)
        chain = None if part.chain is None else part.chain.to_data(engine)
        if (
            clock != part.meta_written
            or part.applied != part.applied_written
            or chain != part.chain_written
        ):
            # once per batch at most: persist() follows a batch
            part.meta_written = clock
            part.applied_written = dict(part.applied)
            part.chain_written = chain
            meta: dict[str, Any] = {
                "max": engine.max_time_ns,
                "wm": engine.watermark_ns,
                "p": partition,
                "progress": part.progress.to_data(),
                "applied": {str(k): v for k, v in part.applied.items()},
            }
            if chain is not None:
                meta["chain"] = chain
            self.store[self.namespace + meta_key(partition)] = orjson.dumps(meta)

    def _delete(self, name: bytes) -> None:
        if name in self.store:
            del self.store[name]
