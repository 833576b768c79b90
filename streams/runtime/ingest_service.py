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

Every `tick_interval` the service asks the brokers for the end offsets of its source partitions
and of the correlate partitions (one ListOffsets request each), confirms caught-up partitions to
`SourceProgress`, publishes consumer lag, and sends a tick (a record without events, carrying the
progress) to every correlate partition. Records and ticks go through one idempotent producer, so a
tick never overtakes the events whose progress it reports.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from streams.runtime.config import WorkerConfig
from streams.runtime.ingest import Ingestor, SourceMessage, encode_records
from streams.runtime.kafka_options import confluent_config
from streams.runtime.metrics import WorkerMetrics
from streams.runtime.progress import OUTAGE_GRACE_NS, SourceProgress
from streams.runtime.records import BATCH_KEY

__all__ = ["IngestService", "PartitionHealth", "ingest_group"]

log = logging.getLogger("streams.worker.ingest")

_T = TypeVar("_T")
_MAX_RECORD_BYTES = 512 * 1024
_PROGRESS_EVERY_NS = 100_000_000  # progress reaches partitions without events at most this often
_MAX_HOST_LABELS = 1000  # distinct hostname labels of fc_events_future_total, then "<other>"
_MAX_UNACKED_BATCHES = 16  # batches produced and not yet acknowledged before ingest waits


def _stale_leader_epoch(exc: BaseException) -> bool:
    error: Any = exc.args[0] if exc.args else None
    name = error.name() if hasattr(error, "name") else ""
    return name in {"FENCED_LEADER_EPOCH", "UNKNOWN_LEADER_EPOCH", "NOT_LEADER_OR_FOLLOWER"}


def ingest_group(app_id: str) -> str:
    return f"{app_id}-ingest"


@dataclass
class PartitionHealth:
    """Lag and progress of one partition, as the watchdog sees it."""

    lag: int = 0
    position: int = -1
    progressed_wall_ns: int = 0  # wall time of the last change of position (or of lag 0)
    checked_wall_ns: int = 0


@dataclass
class _Pending:
    """A batch whose records are produced but not all acknowledged yet."""

    offsets: dict[int, int]  # source partition -> next offset, committable once acknowledged
    outstanding: int = 0
    issued: bool = False  # every record of the batch was produced


@dataclass
class _Rebalance:
    assigned: list[int] | None = None
    revoked: bool = False


@dataclass
class _Offsets:
    """What the service knows of the correlate partitions."""

    produced_end: dict[int, int] = field(default_factory=dict)  # next offset after our records
    committed: dict[int, int] = field(default_factory=dict)  # the Faust group's commits
    end: dict[int, int] = field(default_factory=dict)  # log end offsets, as last asked


class IngestService:
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
        log.info("ingest revoked %s partitions %s", self.events_topic,
                 sorted(tp.partition for tp in partitions))

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
            elif self.wall_clock() - self._last_progress_ns >= _PROGRESS_EVERY_NS:
                await self._send_progress(flush=False)

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
        progress_due = wall - self._last_progress_ns >= _PROGRESS_EVERY_NS
        records = encode_records(
            batch,
            digest=self.ingestor.ruleset.digest,
            source_partitions=self.source_partitions,
            progress=self.progress.contributions(),
            wall_ns=wall,
            max_record_bytes=_MAX_RECORD_BYTES,
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

    def _commit_and_consume(self, commit: dict[int, int], timeout: float) -> list[Any]:
        """On the consumer thread: commit what was acknowledged, then read the next batch."""
        from confluent_kafka import TopicPartition

        if commit:
            offsets = [TopicPartition(self.events_topic, p, o) for p, o in commit.items()]
            self._consumer.commit(offsets=offsets, asynchronous=True)
        messages: list[Any] = self._consumer.consume(self.batch_size, timeout)
        return messages

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
                    topic, value=value, key=key, partition=partition, headers=headers,
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
            self.events_topic, message.partition, message.offset, reason,
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

    # -- ticks, end offsets, lag ----------------------------------------------------------------

    async def _tick_loop(self) -> None:
        interval = self.config.app.tick_interval_ns / 1e9
        while not self._stopping:
            await asyncio.sleep(interval)
            query_wall = self.wall_clock()
            try:
                await self._refresh_ends()
            except Exception as exc:  # a broker outage: keep the last figures
                log.warning("cannot read end offsets: %s", exc)
                if self._unreachable_since is None:
                    self._unreachable_since = self._ends_ok_wall or query_wall
                    # producers buffer meanwhile: see SourceProgress (broker outages)
                    self.progress.brokers_down(self._unreachable_since)
                if _stale_leader_epoch(exc):
                    self._renew_admin()
            else:
                if self._unreachable_since is not None:
                    self.progress.brokers_back(query_wall)
                    log.info(
                        "brokers answer again after %.1f s; the watermark holds for %.0f s "
                        "more (events the producers buffered meanwhile)",
                        (query_wall - self._unreachable_since) / 1e9, OUTAGE_GRACE_NS / 1e9,
                    )
                    self._unreachable_since = None
                self._ends_ok_wall = query_wall
            await self._refresh_committed()
            self.progress.prune(self.wall_clock())
            if self.progress.assigned:
                await self._send_progress(flush=False)

    async def _send_progress(self, *, flush: bool) -> None:
        if not self.progress.assigned or self.source_partitions == 0:
            return
        wall = self.wall_clock()
        empty = self.ingestor.process((), wall)
        for destination, value, _ in encode_records(
            empty,
            digest=self.ingestor.ruleset.digest,
            source_partitions=self.source_partitions,
            progress=self.progress.contributions(),
            wall_ns=wall,
            max_record_bytes=_MAX_RECORD_BYTES,
            all_partitions=range(self.correlate_partitions),
        ):
            self._produce(self.correlate_topic, value, BATCH_KEY, destination, self._on_record)
        self._last_progress_ns = wall
        if flush:
            await self._in_io(self._producer.flush, 5.0)
        else:
            self._producer.poll(0)

    async def _refresh_source_partitions(self) -> None:
        def count() -> int:
            metadata = self._admin.list_topics(self.events_topic, timeout=30)
            topic = metadata.topics.get(self.events_topic)
            return len(topic.partitions) if topic is not None and topic.error is None else 0

        self.source_partitions = await self._in_io(count)

    async def _refresh_ends(self) -> None:
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

        latest_spec = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        earliest_spec = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
        assigned = sorted(self.progress.assigned)
        request = {TopicPartition(self.events_topic, p): latest_spec for p in assigned}
        for p in range(self.correlate_partitions):
            request[TopicPartition(self.correlate_topic, p)] = latest_spec
        unknown = [p for p in assigned if p not in self.positions]
        query_wall = self.wall_clock()

        def ask() -> tuple[dict[tuple[str, int], int], dict[int, int]]:
            futures = self._admin.list_offsets(request, request_timeout=10)
            ends = {
                (tp.topic, tp.partition): future.result(timeout=15).offset
                for tp, future in futures.items()
            }
            earliest: dict[int, int] = {}
            if unknown:
                low = self._admin.list_offsets(
                    {TopicPartition(self.events_topic, p): earliest_spec for p in unknown},
                    request_timeout=10,
                )
                earliest = {tp.partition: f.result(timeout=15).offset for tp, f in low.items()}
            return ends, earliest

        ends, earliest = await self._in_io(ask)
        now = self.wall_clock()
        for partition in assigned:
            end = ends.get((self.events_topic, partition))
            if end is None:
                continue
            position = self.positions.get(partition)
            if position is None and earliest.get(partition) == end:
                position = end  # nothing to read (empty, or everything expired)
            health = self.source_health.setdefault(partition, PartitionHealth())
            low = earliest.get(partition, 0)
            lag = max(end - low, 0) if position is None else end - position
            self._note(health, lag, position if position is not None else -1, now)
            self.metrics.consumer_lag.labels(self.events_topic, str(partition)).set(lag)
            if position is not None and position >= end:
                self.progress.confirm_caught_up(partition, query_wall)
        local = self.local_positions()
        for partition in range(self.correlate_partitions):
            end = ends.get((self.correlate_topic, partition))
            if end is None:
                continue
            self.offsets.end[partition] = end
            if partition in local:
                health = self.correlate_health.setdefault(partition, PartitionHealth())
                lag = max(end - local[partition], 0)
                self._note(health, lag, local[partition], now)
                self.metrics.consumer_lag.labels(self.correlate_topic, str(partition)).set(lag)
        for partition in set(self.correlate_health) - set(local):
            del self.correlate_health[partition]

    def _renew_admin(self) -> None:
        """A new AdminClient: after a broker restart (leader epochs bumped) librdkafka's
        AdminClient keeps sending ListOffsets with the leader epochs it cached and fails with
        FENCED_LEADER_EPOCH for good (librdkafka 2.16); a new client asks for fresh metadata.
        Without end offsets no source partition is confirmed caught up, so an idle stream's
        watermark would never move again: held events and absences wait for new events."""
        from confluent_kafka.admin import AdminClient

        log.info("renewing the admin client (stale partition leader epochs)")
        self._admin = AdminClient(confluent_config(self.config.kafka))

    @staticmethod
    def _note(health: PartitionHealth, lag: int, position: int, now: int) -> None:
        if position != health.position or lag == 0 or health.progressed_wall_ns == 0:
            health.progressed_wall_ns = now
        health.lag, health.position, health.checked_wall_ns = lag, position, now

    async def _refresh_committed(self) -> None:
        """The Faust group's committed offsets; on a failure (a broker outage) the last ones
        stay, and the caller goes on (backpressure waits, ticks keep going)."""
        from confluent_kafka import TopicPartition

        request = [
            TopicPartition(self.correlate_topic, p) for p in range(self.correlate_partitions)
        ]

        def ask() -> dict[int, int]:
            result = self._group_offsets.committed(request, timeout=10)
            return {tp.partition: tp.offset for tp in result if tp.offset >= 0}

        try:
            self.offsets.committed.update(await self._in_io(ask))
        except Exception as exc:  # KafkaException: timed out, coordinator not available
            log.warning("cannot read the committed offsets of group %s: %s", self.faust_group, exc)
