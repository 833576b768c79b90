"""The ingest stage on Kafka: a batched confluent-kafka consumer and producer in the Faust app.

Falco's events are read in batches with librdkafka (not through Faust's per-message stream),
handed to the pure `Ingestor`, and what the correlate stage needs is produced as one record per
destination partition per batch. The source offsets are committed only after every record and
dead letter of the batch was acknowledged by the broker (at-least-once; the correlate stage drops
redelivered events per key by source offset).

Blocking librdkafka calls run on two single-thread executors (one owns the consumer, the other the
producer flushes and the admin requests) so the event loop — and with it the correlate agent, the
web endpoints and Faust's heartbeats — keeps running. Rebalance callbacks run inside `consume` on
the consumer thread; they only record what changed, and the loop applies it.

Backpressure: at most `max_inflight` records may be produced to a correlate partition and not yet
processed (the local agent's position, or the Faust group's committed offset for partitions other
workers own). Beyond that the source partitions are paused (the consumer keeps polling, so group
membership and rebalances go on) until the correlate stage catches up: a backlog never delays
correlation of what was already read, and memory stays bounded.

Every `tick_interval` the service reads the end offsets, publishes lag and sends a tick (a record
without events, carrying the progress) to every correlate partition: streams/runtime/
ingest_progress.py. Records, dead letters and ticks go through one idempotent producer
(streams/runtime/ingest_produce.py), so a tick never overtakes the events whose progress it
reports.

Modules: this one (lifecycle, rebalances, the consume loop, backpressure), `ingest_produce` (a
batch to records, producing, acknowledged-prefix commit tracking), `ingest_progress` (ticks, end
offsets, lag, broker outages).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from streams.runtime.config import WorkerConfig
from streams.runtime.ingest import Ingestor
from streams.runtime.ingest_produce import PROGRESS_EVERY_NS, _Offsets, _Pending
from streams.runtime.ingest_progress import PartitionHealth, ProgressReporting
from streams.runtime.kafka_options import confluent_config
from streams.runtime.metrics import WorkerMetrics
from streams.runtime.progress import SourceProgress

__all__ = ["IngestService", "PartitionHealth", "ingest_group"]

log = logging.getLogger("streams.worker.ingest")

_T = TypeVar("_T")


def ingest_group(app_id: str) -> str:
    return f"{app_id}-ingest"


@dataclass
class _Rebalance:
    assigned: list[int] | None = None
    revoked: bool = False


class IngestService(ProgressReporting):
    def __init__(
        self,
        config: WorkerConfig,
        ingestor: Ingestor,
        metrics: WorkerMetrics,
        *,
        correlate_topic: str,
        faust_group: str,
        local_positions: Callable[[], dict[int, int]],
        on_fatal: Callable[[BaseException], None] = lambda exc: None,
        wall_clock: Callable[[], int] = time.time_ns,
        batch_size: int = 2000,
        max_inflight: int = 64,
    ) -> None:
        self.config = config
        self.ingestor = ingestor
        self.metrics = metrics
        self.correlate_topic = correlate_topic
        self.faust_group = faust_group
        self.local_positions = local_positions
        self.on_fatal = on_fatal
        self.wall_clock = wall_clock
        self.batch_size = batch_size
        self.max_inflight = max_inflight
        self.events_topic = config.topics.events
        self.correlate_partitions = config.topics.partitions
        self.progress = SourceProgress(config.app.idle_after_ns)
        self.source_partitions = 0
        self.positions: dict[int, int] = {}  # source partition -> next offset to process
        self.source_health: dict[int, PartitionHealth] = {}
        self.correlate_health: dict[int, PartitionHealth] = {}
        self.offsets = _Offsets()
        self.joined = asyncio.Event()
        self.failed: BaseException | None = None
        self.waiting_on = "starting"
        self._rebalance = _Rebalance()
        self._pending_positions: dict[int, int] = {}
        self._pending_seeds: dict[int, int] = {}
        self.seeds: dict[int, int] = {}
        self._stopping = False
        self._paused = False
        self._delivery_errors: list[str] = []
        self._unacked: deque[_Pending] = deque()
        self._future_hosts: set[str] = set()
        self._committable: dict[int, int] = {}
        self._last_progress_ns = 0
        self._ends_ok_wall: int | None = None  # when end offsets were last read
        self._unreachable_since: int | None = None  # last success before failing reads
        self._consumer_thread = ThreadPoolExecutor(1, thread_name_prefix="fc-ingest-consumer")
        self._io_thread = ThreadPoolExecutor(1, thread_name_prefix="fc-ingest-io")
        self._consumer: Any = None
        self._producer: Any = None
        self._admin: Any = None
        self._group_offsets: Any = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        from confluent_kafka import Consumer, Producer
        from confluent_kafka.admin import AdminClient

        base = confluent_config(self.config.kafka)
        session_ms = int(self.config.app.session_timeout_ns / 1e6)
        self._consumer = Consumer(
            {
                **base,
                "group.id": ingest_group(self.config.app.id),
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "roundrobin",
                "session.timeout.ms": session_ms,
                "heartbeat.interval.ms": max(1000, min(3000, session_ms // 3)),
                "max.poll.interval.ms": 300_000,
                "fetch.max.bytes": 16 * 1024 * 1024,
                "queued.max.messages.kbytes": 16 * 1024,
                "on_commit": self._on_commit,
            }
        )
        self._producer = Producer(
            {
                **base,
                "enable.idempotence": True,
                "linger.ms": 5,
                "compression.type": "lz4",
                "delivery.timeout.ms": 600_000,
            }
        )
        self._admin = AdminClient(base)
        # The Faust group's committed offsets (backpressure), read with OffsetFetch through a
        # consumer handle that never subscribes, hence never joins that group. Not through the
        # AdminClient: a long-lived AdminClient whose group-coordinator request timed out (a
        # broker restart) later aborts or crashes the process (librdkafka #4605,
        # `rd_kafka_enq_once_del_source_return: Assertion eonce->refcnt > 0`).
        self._group_offsets = Consumer(
            {**base, "group.id": self.faust_group, "enable.auto.commit": False}
        )
        await self._in_consumer(self._subscribe)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._guard(self._run(), "ingest loop")),
            loop.create_task(self._guard(self._tick_loop(), "ingest ticks")),
        ]

    async def stop(self) -> None:
        """Finish the batch in flight (produce, flush, commit), leave the group, close."""
        self._stopping = True
        for task in self._tasks:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=30)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
            except Exception:  # already logged by _guard
                log.debug("ingest task ended with an error", exc_info=True)
        if self._producer is not None:
            await self._in_io(self._producer.flush, 10)
        if self._consumer is not None:
            await self._in_consumer(self._close_consumer)
        if self._group_offsets is not None:
            await self._in_io(self._group_offsets.close)
        self._consumer_thread.shutdown(wait=False)
        self._io_thread.shutdown(wait=False)

    async def _guard(self, coro: Any, name: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.failed = exc
            log.exception("%s stopped: %s; the worker stops (exit 1)", name, exc)
            self.on_fatal(exc)
            raise

    def _subscribe(self) -> None:
        self._consumer.subscribe(
            [self.events_topic], on_assign=self._on_assign, on_revoke=self._on_revoke
        )

    def _close_consumer(self) -> None:
        self._take_committable()
        if not self._delivery_errors and not self._unacked:
            self._commit_sync(self.positions)
        else:
            self._commit_sync(self._committable)
        self._consumer.close()

    # -- rebalance callbacks (consumer thread, inside consume) ----------------------------------

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        """Start each partition at its committed offset, except that the message before it
        is read once more (not forwarded): its event time seeds the partition's progress, so a
        restarted worker's watermark moves on — releasing held events, firing absences — even
        when no new event arrives."""
        mine = [tp.partition for tp in partitions]
        committed = consumer.committed(partitions, timeout=30) if partitions else []
        positions = {tp.partition: tp.offset for tp in committed if tp.offset >= 0}
        seeds: dict[int, int] = {}
        for tp in committed:
            if tp.offset > 0:
                low, _high = consumer.get_watermark_offsets(tp, timeout=30)
                if tp.offset - 1 >= low:
                    seeds[tp.partition] = tp.offset - 1
                    tp.offset -= 1
        consumer.assign(committed)
        # librdkafka keeps a partition's pause across unassign/assign: one paused for
        # backpressure when it was revoked would come back paused and never be read again
        # (the end of the backpressure resumes only what is assigned at that moment).
        if committed:
            consumer.resume(committed)
        self._rebalance.assigned = mine
        self._pending_positions = positions
        self._pending_seeds = seeds
        log.info("ingest assigned %s partitions %s", self.events_topic, sorted(mine))

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        # everything read was produced: once acknowledged, all of it may be committed
        while self._producer.flush(5.0):
            log.warning("revocation waits for the brokers to acknowledge ingest records")
        self._take_committable()
        if not self._delivery_errors:
            self._commit_sync(self.positions)
        self._rebalance.revoked = True
        log.info(
            "ingest revoked %s partitions %s",
            self.events_topic,
            sorted(tp.partition for tp in partitions),
        )

    def _on_commit(self, err: Any, partitions: list[Any]) -> None:
        if err is not None:
            log.warning("committing ingest offsets failed: %s (retried with the next batch)", err)

    def _commit_sync(self, positions: dict[int, int]) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        offsets = [TopicPartition(self.events_topic, p, o) for p, o in positions.items()]
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("committing ingest offsets failed: %s", exc)

    def _apply_rebalance(self) -> None:
        change, self._rebalance = self._rebalance, _Rebalance()
        if change.revoked and change.assigned is None:
            self.progress.assign(())
            self.positions.clear()
            self.seeds.clear()
            self.source_health.clear()
        if change.assigned is not None:
            self.progress.assign(change.assigned)
            self.positions = {
                p: o for p, o in self._pending_positions.items() if p in change.assigned
            }
            self.seeds = dict(self._pending_seeds)
            self.source_health = {p: PartitionHealth() for p in change.assigned}
            self._paused = False
            self.joined.set()

    # -- executors ------------------------------------------------------------------------------

    async def _in_consumer(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._consumer_thread, fn, *args)

    async def _in_io(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._io_thread, fn, *args)

    async def run_io(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a blocking admin call on the service's I/O thread (health checks)."""
        return await self._in_io(fn, *args)

    @property
    def admin(self) -> Any:
        return self._admin

    # -- the hot path ---------------------------------------------------------------------------

    async def _run(self) -> None:
        await self._refresh_source_partitions()
        while not self._stopping:
            await self._wait_for_capacity()
            if self._stopping:
                break
            self.waiting_on = "consume (librdkafka fetch)"
            self._producer.poll(0)  # serve delivery reports
            commit = self._take_committable()
            messages = await self._in_consumer(self._commit_and_consume, commit, 0.1)
            self._apply_rebalance()
            if messages:
                await self._handle(messages)
            elif self.wall_clock() - self._last_progress_ns >= PROGRESS_EVERY_NS:
                await self._send_progress(flush=False)

    def _commit_and_consume(self, commit: dict[int, int], timeout: float) -> list[Any]:
        """On the consumer thread: commit what was acknowledged, then read the next batch."""
        from confluent_kafka import TopicPartition

        if commit:
            offsets = [TopicPartition(self.events_topic, p, o) for p, o in commit.items()]
            self._consumer.commit(offsets=offsets, asynchronous=True)
        messages: list[Any] = self._consumer.consume(self.batch_size, timeout)
        return messages

    # -- backpressure ---------------------------------------------------------------------------

    def _inflight(self) -> dict[int, int]:
        local = self.local_positions()
        out = {}
        for partition, end in self.offsets.produced_end.items():
            done = max(local.get(partition, -1), self.offsets.committed.get(partition, -1))
            out[partition] = end - max(done, 0)
        return out

    async def _wait_for_capacity(self) -> None:
        over = [p for p, n in self._inflight().items() if n > self.max_inflight]
        if not over:
            return
        self.waiting_on = f"backpressure: correlate partitions {sorted(over)} behind"
        self.metrics.backpressure.inc()
        await self._in_consumer(self._pause, True)
        refreshed = 0.0
        try:
            while not self._stopping:
                over = [p for p, n in self._inflight().items() if n > self.max_inflight // 2]
                if not over:
                    return
                if time.monotonic() - refreshed > 0.5:
                    refreshed = time.monotonic()
                    await self._refresh_committed()
                # keep polling while paused: group membership and rebalances go on
                messages = await self._in_consumer(self._consumer.consume, self.batch_size, 0.05)
                self._apply_rebalance()
                if messages:  # newly assigned partitions are not paused (_on_assign)
                    await self._handle(messages)
        finally:
            await self._in_consumer(self._pause, False)

    def _pause(self, pause: bool) -> None:
        assignment = self._consumer.assignment()
        if not assignment:
            return
        if pause:
            self._consumer.pause(assignment)
        else:
            self._consumer.resume(assignment)
        self._paused = pause
