"""The outputs of a group of records kept with the state until the brokers have them.

A group of correlate records changes state entries (written to the changelog) and emits
incidents and chain records (other topics). They are separate produces, flushed together before
the records' offsets are committed; a worker killed in between could keep a state that reached
the changelog and lose the outputs it emitted: the records are read again, but the restored
state has applied them already, so nothing emits the outputs again.

So the live correlator writes a partition's outputs of a group into the state table first, as an
*outbox* entry (`\\x00outbox:<partition>:<last offset>`), before the state entries of the group:
the changelog keeps each partition in order, so a restore that finds the state finds the outbox
too. The entry is deleted (at the partition's next write) once a flush that began after the
outputs were produced has succeeded. A partition restored with outbox entries:

- an entry whose last offset is below the first offset read after the assignment was committed,
  and offsets are committed only after a flush: its outputs reached the brokers; deleted;
- any other entry's outputs may be lost: they are emitted again (incidents are enriched again;
  their ids are deterministic; chain records read twice are dropped as duplicates), then deleted
  like a new entry.

A clean rebalance or shutdown flushes and commits first, so it re-emits nothing; a crash re-emits
at most the outputs of the groups since the last commit (at-least-once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

__all__ = ["Outbox", "PartitionOutbox", "RecoveredOutputs", "outbox_prefix"]

Chains = list[tuple[int, bytes]]  # (destination partition, chain record value)
Stage = Literal["written", "produced", "acked"]


def outbox_prefix(partition: int) -> bytes:
    return b"\x00outbox:%d:" % partition


@dataclass
class RecoveredOutputs:
    incidents: list[dict[str, Any]] = field(default_factory=list)
    chains: Chains = field(default_factory=list)
    entries: int = 0


@dataclass
class Outbox:
    """A partition's outbox: outputs staged for the next write, and the written entries."""

    staged_offset: int = -1
    staged_incidents: list[dict[str, Any]] = field(default_factory=list)
    staged_chains: Chains = field(default_factory=list)
    entries: dict[bytes, Stage] = field(default_factory=dict)
    recovered: RecoveredOutputs | None = None


class PartitionOutbox:
    """Mixin of `PartitionCorrelator` (the live one only: `outbox_enabled`)."""

    store: Any
    namespace: bytes
    outbox_enabled: bool

    def _outbox_parts(self) -> dict[int, Outbox]:
        raise NotImplementedError

    def stage_outputs(
        self,
        partition: int,
        last_offset: int,
        incidents: list[dict[str, Any]],
        chains: Chains,
    ) -> None:
        """The outputs of `partition` in the current group (records up to `last_offset`): kept
        in an outbox entry written before the group's state (`persist`)."""
        outbox = self._outbox_parts().get(partition)
        if outbox is None or not self.outbox_enabled or not (incidents or chains):
            return
        outbox.staged_offset = max(outbox.staged_offset, last_offset)
        outbox.staged_incidents.extend(incidents)
        outbox.staged_chains.extend(chains)

    def _write_outbox(self, partition: int, outbox: Outbox) -> None:
        """Before the state of the group: the staged outputs; and the acknowledged entries
        deleted."""
        for key in [k for k, stage in outbox.entries.items() if stage == "acked"]:
            del outbox.entries[key]
            if key in self.store:
                del self.store[key]
        if outbox.staged_incidents or outbox.staged_chains:
            key = self.namespace + outbox_prefix(partition) + b"%d" % outbox.staged_offset
            self.store[key] = orjson.dumps(
                {
                    "p": partition,
                    "o": outbox.staged_offset,
                    "i": outbox.staged_incidents,
                    "c": [[dest, value.decode()] for dest, value in outbox.staged_chains],
                }
            )
            outbox.entries[key] = "written"
            outbox.staged_offset = -1
            outbox.staged_incidents = []
            outbox.staged_chains = []

    def outputs_produced(self) -> None:
        """Every written entry's outputs were handed to the producer (the agent, after the
        group's incidents and chain records, and the re-emitted ones, were produced)."""
        for outbox in self._outbox_parts().values():
            for key, stage in outbox.entries.items():
                if stage == "written":
                    outbox.entries[key] = "produced"

    def produced_outputs(self) -> list[tuple[int, bytes]]:
        """The entries whose outputs were produced: acknowledged once the next flush succeeds."""
        return [
            (partition, key)
            for partition, outbox in self._outbox_parts().items()
            for key, stage in outbox.entries.items()
            if stage == "produced"
        ]

    def acknowledge_outputs(self, flushed: list[tuple[int, bytes]]) -> None:
        parts = self._outbox_parts()
        for partition, key in flushed:
            outbox = parts.get(partition)
            if outbox is not None and outbox.entries.get(key) == "produced":
                outbox.entries[key] = "acked"

    def take_recovered_outputs(self, partition: int) -> RecoveredOutputs | None:
        """Outputs a restored partition's outbox held that may not have reached the brokers:
        the agent emits them again."""
        outbox = self._outbox_parts().get(partition)
        if outbox is None:
            return None
        recovered, outbox.recovered = outbox.recovered, None
        return recovered

    def _recover_outbox(
        self, partition: int, first_offset: int | None, found: list[tuple[bytes, bytes]]
    ) -> tuple[Outbox, list[bytes]]:
        """The outbox of a restored partition from its entries; and the entries to delete."""
        outbox = Outbox()
        stale: list[bytes] = []
        recovered = RecoveredOutputs()
        for key, value in found:
            try:
                data = orjson.loads(value)
                offset = int(data["o"])
                incidents = list(data["i"])
                chains = [(int(dest), str(text).encode()) for dest, text in data["c"]]
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                stale.append(key)
                continue
            if first_offset is not None and offset < first_offset:
                stale.append(key)  # committed, so flushed: delivered
                continue
            recovered.incidents.extend(incidents)
            recovered.chains.extend(chains)
            recovered.entries += 1
            outbox.entries[key] = "written"
        if recovered.entries:
            outbox.recovered = recovered
        return outbox, stale
