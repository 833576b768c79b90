"""The ingest stage's produce side: a consumed batch goes through the `Ingestor` into correlate
records and dead letters, produced with one idempotent producer (ticks too), and the
acknowledged-prefix tracking of what may be committed.

A batch's records and dead letters are tracked by a `_Pending` token; its source offsets become
committable once every one of them was acknowledged by the broker, and only in batch order (a
later batch is never committed before an earlier one). A failed delivery stops the worker, which
restarts from the last committed offsets (at-least-once). `IngestService`
(streams/runtime/ingest_service.py) is built on `ProducePipeline`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from streams.runtime.config import WorkerConfig
from streams.runtime.ingest import Ingestor, SourceMessage, encode_records
from streams.runtime.metrics import WorkerMetrics
from streams.runtime.progress import SourceProgress
from streams.runtime.records import BATCH_KEY

if TYPE_CHECKING:
    from streams.runtime.ingest_progress import PartitionHealth

log = logging.getLogger("streams.worker.ingest")

MAX_RECORD_BYTES = 512 * 1024
PROGRESS_EVERY_NS = 100_000_000  # progress reaches partitions without events at most this often
_MAX_HOST_LABELS = 1000  # distinct hostname labels of fc_events_future_total, then "<other>"
_MAX_UNACKED_BATCHES = 16  # batches produced and not yet acknowledged before ingest waits
_T = TypeVar("_T")


@dataclass
class _Pending:
    """A batch whose records are produced but not all acknowledged yet."""

    offsets: dict[int, int]  # source partition -> next offset, committable once acknowledged
    outstanding: int = 0
    issued: bool = False  # every record of the batch was produced


@dataclass
class _Offsets:
    """What the service knows of the correlate partitions."""

    produced_end: dict[int, int] = field(default_factory=dict)  # next offset after our records
    committed: dict[int, int] = field(default_factory=dict)  # the Faust group's commits
    end: dict[int, int] = field(default_factory=dict)  # log end offsets, as last asked


class ProducePipeline:
    """Producing and acknowledgement tracking; the state is set up by `IngestService`."""

    config: WorkerConfig
    ingestor: Ingestor
    metrics: WorkerMetrics
    wall_clock: Callable[[], int]
    events_topic: str
    correlate_topic: str
    correlate_partitions: int
    source_partitions: int
    progress: SourceProgress
    positions: dict[int, int]
    seeds: dict[int, int]
    source_health: dict[int, PartitionHealth]
    offsets: _Offsets
    waiting_on: str
    _producer: Any
    _delivery_errors: list[str]
    _unacked: deque[_Pending]
    _committable: dict[int, int]
    _future_hosts: set[str]
    _last_progress_ns: int

    if TYPE_CHECKING:

        async def _in_io(self, fn: Callable[..., _T], *args: Any) -> _T: ...

    async def _handle(self, messages: Sequence[Any]) -> None:
        started = time.perf_counter()
        wall = self.wall_clock()
        source: list[SourceMessage] = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != -191:  # _PARTITION_EOF is not an error
                    log.warning("consume error on %s: %s", self.events_topic, error)
                continue
            kind, stamp = message.timestamp()
            source.append(
                SourceMessage(
                    message.partition(),
                    message.offset(),
                    message.value(),
                    message.key(),
                    float(stamp) if kind != 0 else None,
                )
            )
        if not source:
            return
        self.waiting_on = "ingest (decode, validate, match)"
        batch = self.ingestor.process(source, wall, self.seeds)
        if self.seeds:
            for message in source:
                if self.seeds.get(message.partition) == message.offset:
                    del self.seeds[message.partition]
        for partition, time_ns in batch.observed:
            self.progress.observe(partition, time_ns, wall)
        progress_due = wall - self._last_progress_ns >= PROGRESS_EVERY_NS
        shadow = self.ingestor.shadow_ruleset
        records = encode_records(
            batch,
            digest=self.ingestor.ruleset.digest,
            shadow_digest="" if shadow is None else shadow.digest,
            source_partitions=self.source_partitions,
            progress=self.progress.contributions(),
            wall_ns=wall,
            max_record_bytes=MAX_RECORD_BYTES,
            all_partitions=range(self.correlate_partitions) if progress_due else (),
        )
        if progress_due:
            self._last_progress_ns = wall
        self.waiting_on = "produce"
        pending = _Pending(dict(batch.next_offsets))
        self._unacked.append(pending)
        for destination, value, _count in records:
            pending.outstanding += 1
            self._produce(
                self.correlate_topic, value, BATCH_KEY, destination, self._delivery(pending)
            )
        for dead in batch.dead_letters:
            pending.outstanding += 1
            self._dead_letter(dead.message, dead.reason, self._delivery(pending))
        pending.issued = True
        now = self.wall_clock()
        for partition, next_offset in batch.next_offsets.items():
            self.positions[partition] = next_offset
            health = self.source_health.get(partition)
            if health is not None:
                health.position = next_offset
                health.progressed_wall_ns = now
        self._producer.poll(0)
        if self._delivery_errors:
            self._raise_delivery_errors()
        while len(self._unacked) > _MAX_UNACKED_BATCHES:
            self.waiting_on = "flush (broker acknowledgement of earlier batches)"
            await self._in_io(self._producer.flush, 1.0)
            self._take_committable()
            if self._delivery_errors:
                self._raise_delivery_errors()
        self._account(batch, records, time.perf_counter() - started)

    def _account(self, batch: Any, records: list[tuple[int, bytes, int]], seconds: float) -> None:
        metrics = self.metrics
        for partition, count in batch.consumed.items():
            metrics.events.labels(self.events_topic, str(partition)).inc(count)
        if batch.dead_letters:
            metrics.invalid.inc(len(batch.dead_letters))
        if batch.shadow_errors:
            metrics.shadow_errors.labels("ingest").inc(batch.shadow_errors)
        for hostname, count in batch.future.items():
            # hostnames come from the events (attacker-controlled): bound the label set
            label = hostname[:64]
            if label not in self._future_hosts and len(self._future_hosts) >= _MAX_HOST_LABELS:
                label = "<other>"
            else:
                self._future_hosts.add(label)
            metrics.future.labels(label).inc(count)
        metrics.batch_size.labels("ingest").observe(sum(batch.consumed.values()))
        metrics.stage_seconds.labels("ingest").observe(seconds)

    def _delivery(self, pending: _Pending) -> Callable[[Any, Any], None]:
        def delivered(err: Any, message: Any) -> None:
            pending.outstanding -= 1
            if err is not None:
                self._delivery_errors.append(str(err))
            elif message.topic() == self.correlate_topic:
                self._on_record(None, message)

        return delivered

    def _take_committable(self) -> dict[int, int]:
        """Offsets of the acknowledged prefix of batches (in order: a later batch is never
        committed before an earlier one), newly committable since the last call."""
        newly: dict[int, int] = {}
        while self._unacked and self._unacked[0].issued and self._unacked[0].outstanding <= 0:
            newly.update(self._unacked.popleft().offsets)
        self._committable.update(newly)
        return newly

    def _raise_delivery_errors(self) -> None:
        errors, self._delivery_errors = self._delivery_errors, []
        raise RuntimeError(
            f"{len(errors)} record(s) could not be delivered: {errors[0]}; the worker stops "
            "and restarts from the last committed offsets"
        )

    def _produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        partition: int,
        callback: Any,
        *,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        while True:
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=key,
                    partition=partition,
                    headers=headers,
                    on_delivery=callback,
                )
                return
            except BufferError:  # the local queue is full: serve deliveries, then retry
                self._producer.poll(0.1)

    def _on_record(self, err: Any, message: Any) -> None:
        if err is not None:
            self._delivery_errors.append(str(err))
            return
        partition, offset = message.partition(), message.offset()
        if offset is None:
            # Delivered, but librdkafka could not tell the offset (it may say -1001, which
            # confluent-kafka reports as None). A callback must never raise: confluent-kafka
            # 2.16 on Python 3.11 re-raises it as a SystemError (or crashes) from poll/flush.
            return
        if offset + 1 > self.offsets.produced_end.get(partition, 0):
            self.offsets.produced_end[partition] = offset + 1

    def _dead_letter(
        self, message: SourceMessage, reason: str, callback: Callable[[Any, Any], None]
    ) -> None:
        log.warning(
            "invalid event at %s/%d/%d: %s",
            self.events_topic,
            message.partition,
            message.offset,
            reason,
        )
        self._produce(
            self.config.topics.dead_letter,
            message.value or b"",
            message.key,
            -1,
            callback,
            headers=[
                ("fc-reason", reason.encode()),
                ("fc-source-topic", self.events_topic.encode()),
                ("fc-source-partition", str(message.partition).encode()),
                ("fc-source-offset", str(message.offset).encode()),
            ],
        )
