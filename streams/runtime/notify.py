"""The notify stage: incidents topic -> notifiers, in its own consumer group, at least once.

A plain aiokafka consumer (group `<app id>-notify`, manual commits) run as a service of the Faust
app, not a Faust agent. In Faust one app is one consumer group and one fetch loop: an agent
whose stream buffer is full holds back the delivery of every other topic, so a Slack outage
would stall correlation, and a second Faust app in the same process would bring its own web
server, tables and rebalance machinery for what is one consumer. Here we choose exactly when an
offset is committed and pause only the partitions whose window is full (docs/notifiers.md,
"The notify stage").

- Each incident goes through `Dispatcher.dispatch` (its selected notifiers concurrently);
  each `DeliveryFailure` is written to `topics.notify_dead_letter` before the offset moves.
- Up to `delivery.max_in_flight` incidents per partition are in flight; records with the same
  key (the incident id) run one after the other, so an update never overtakes its `new`.
- The committed offset of a partition is the lowest offset still in flight (`OffsetTracker`).
- Slack threads live in a compacted topic (`KafkaThreadStore`), read at start and on every
  assignment, written on set and flushed before the incident's offset can be committed.

Its other parts: the `delivery:` settings (notify_settings.py), the dead-letter record
(dead_letter.py), the commit bookkeeping (offsets.py), and its wiring from the worker config
and in the Faust app (notify_wiring.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Gauge

from streams._metrics import PerRegistry
from streams.core.incident_record import Incident, incident_problem, read_incident
from streams.notifiers import DeliveryFailure, Dispatcher, NotifierMetrics
from streams.runtime.config import WorkerConfig
from streams.runtime.dead_letter import dead_letter_message, dead_letter_record
from streams.runtime.kafka_options import aiokafka_options
from streams.runtime.notify_settings import NotifySettings
from streams.runtime.offsets import OffsetTracker
from streams.runtime.slack_threads import KafkaThreadStore, retry_forever

__all__ = ["NotifyStage"]

log = logging.getLogger("streams.notify")

_NOTIFIED_KEPT = 10_000  # (id, status, count) of the last records notified, to skip copies


class _StageMetrics(PerRegistry):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        registry = self.registry
        self.records = Counter(
            "falco_correlator_notify_records", "Incident records consumed", registry=registry
        )
        self.invalid = Counter(
            "falco_correlator_notify_invalid",
            "Incident records that are not JSON objects with an id (skipped)",
            registry=registry,
        )
        self.duplicates = Counter(
            "falco_correlator_notify_duplicates",
            "Incident records notified already by this process (the same id, status and "
            "count: an incident emitted again after a worker crash), skipped",
            registry=registry,
        )
        self.in_flight = Gauge(
            "falco_correlator_notify_in_flight",
            "Incident records in flight",
            ["partition"],
            registry=registry,
        )


class _InFlightPartition:
    """What the stage holds for one incidents partition it owns: offsets, per-key tails, tasks."""

    def __init__(self) -> None:
        self.tracker = OffsetTracker()
        self.tails: dict[bytes | None, asyncio.Task[None]] = {}
        self.tasks: set[asyncio.Task[None]] = set()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, stage: NotifyStage) -> None:
        self.stage = stage

    async def on_partitions_revoked(self, revoked: Collection[Any]) -> None:
        await self.stage._revoke(revoked)

    async def on_partitions_assigned(self, assigned: Collection[Any]) -> None:
        await self.stage._assign(assigned)


class NotifyStage:
    """Consume incidents, dispatch, dead-letter failures, commit what is finished.

    `await run()` until `stop()`; an unexpected error (a bug, not a delivery problem, which
    notifiers return as results) ends `run` with that error and nothing past it is committed.
    """

    def __init__(
        self,
        config: WorkerConfig,
        dispatcher: Dispatcher,
        *,
        settings: NotifySettings,
        metrics: NotifierMetrics,
        threads: KafkaThreadStore | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.dispatcher = dispatcher
        self.settings = settings
        self.metrics = metrics
        self.threads = threads
        self.wall_clock = wall_clock
        self.group_id = f"{config.app.id}-notify"
        self.stage_metrics = _StageMetrics.shared(metrics.registry)
        self._partitions: dict[Any, _InFlightPartition] = {}
        self._paused: set[Any] = set()
        self._stopping = asyncio.Event()
        self._failure: BaseException | None = None
        self._consumer: Any = None
        self._producer: Any = None
        # (id, status, count) of the records notified lately: the correlate stage emits again,
        # after a crash, what it may not have sent (its outbox); the copy is skipped here
        self._notified: OrderedDict[tuple[str, str, int], None] = OrderedDict()

    async def run(self) -> None:
        try:
            await self._start()
            last_commit = time.monotonic()
            while not self._stopping.is_set():
                batch = await self._consumer.getmany(
                    timeout_ms=100, max_records=self.settings.max_in_flight
                )
                for tp, records in batch.items():
                    part = self._partitions.get(tp)
                    if part is None:
                        continue  # revoked meanwhile: the next owner reads these again
                    for record in records:
                        self._submit(tp, part, record)
                self._flow_control()
                if self._failure is not None:
                    raise self._failure
                if time.monotonic() - last_commit >= self.settings.commit_interval:
                    await self._commit(self._partitions)
                    last_commit = time.monotonic()
        finally:
            await self._shutdown()

    def stop(self) -> None:
        self._stopping.set()

    async def _start(self) -> None:
        options = aiokafka_options(self.config)
        self._producer = AIOKafkaProducer(**options, acks="all", linger_ms=5)
        await self._producer.start()
        if self.threads is not None:
            await self.threads.start(self._producer)
        self._consumer = AIOKafkaConsumer(
            **options,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        self._consumer.subscribe([self.config.topics.incidents], listener=_Rebalance(self))
        await self._consumer.start()
        log.info(
            "notify: %d notifier(s), group %s, incidents from %s",
            len(self.dispatcher.notifiers),
            self.group_id,
            self.config.topics.incidents,
        )

    async def _shutdown(self) -> None:
        if self._consumer is not None:
            parts, self._partitions = self._partitions, {}
            await self._drain(parts.values())
            await self._commit(parts)
            await self._consumer.stop()
        if self.threads is not None:
            await self.threads.stop()
        if self._producer is not None:
            await self._producer.stop()
        await self.dispatcher.close()

    def _submit(self, tp: Any, part: _InFlightPartition, record: Any) -> None:
        self.stage_metrics.records.inc()
        part.tracker.start(record.offset)
        previous = part.tails.get(record.key)
        task = asyncio.get_running_loop().create_task(self._process(record, previous))
        part.tails[record.key] = task
        part.tasks.add(task)

        def finished(task: asyncio.Task[None]) -> None:
            part.tasks.discard(task)
            if part.tails.get(record.key) is task:
                del part.tails[record.key]
            if task.cancelled():
                return  # left uncommitted: redelivered to whoever owns the partition next
            error = task.exception()
            if error is not None:
                self._failure = self._failure or error
                return
            part.tracker.done(record.offset)
            self.stage_metrics.in_flight.labels(str(tp.partition)).set(part.tracker.in_flight)

        task.add_done_callback(finished)

    async def _process(self, record: Any, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # same incident: in order, whatever became of it
        try:
            value = orjson.loads(record.value or b"")
        except orjson.JSONDecodeError:
            value = None
        incident = read_incident(value)  # the one check of the record's shape
        if incident is None:
            self.stage_metrics.invalid.inc()
            log.warning(
                "notify: skipped %s/%d/%d: not an incident record (%s)",
                record.topic,
                record.partition,
                record.offset,
                incident_problem(value),
            )
            return
        seen = (incident["id"], incident.get("status", ""), incident.get("count", 0))
        if seen in self._notified:
            self.stage_metrics.duplicates.inc()
            log.info(
                "notify: skipped %s/%d/%d: incident %s %s count %d was notified already",
                record.topic,
                record.partition,
                record.offset,
                *seen,
            )
            return
        results = await self.dispatcher.dispatch(incident)
        for result in results:
            if isinstance(result, DeliveryFailure):
                await self._dead_letter(incident, result, record)
        if self.threads is not None:
            await self.threads.flush()
        # only once handled (a record cancelled by a revocation comes again and must not be
        # skipped); records of one incident are processed one after the other (`_submit`)
        self._notified[seen] = None
        if len(self._notified) > _NOTIFIED_KEPT:
            self._notified.popitem(last=False)

    async def _dead_letter(self, incident: Incident, failure: DeliveryFailure, record: Any) -> None:
        value = dead_letter_record(
            incident,
            failure,
            failed_at=self.wall_clock(),
            source=(record.topic, record.partition, record.offset),
        )
        key, body, headers = dead_letter_message(value)
        topic = self.config.topics.notify_dead_letter
        await retry_forever(
            lambda: self._producer.send_and_wait(topic, body, key=key, headers=headers),
            f"dead letter of incident {failure.incident_id} to {topic}",
        )
        self.metrics.record_dead_lettered(failure.notifier)

    def _flow_control(self) -> None:
        for tp, part in self._partitions.items():
            full = part.tracker.in_flight >= self.settings.max_in_flight
            if full and tp not in self._paused:
                self._consumer.pause(tp)
                self._paused.add(tp)
            elif not full and tp in self._paused:
                self._consumer.resume(tp)
                self._paused.discard(tp)
            self.stage_metrics.in_flight.labels(str(tp.partition)).set(part.tracker.in_flight)

    async def _commit(self, parts: Mapping[Any, _InFlightPartition]) -> None:
        offsets = {}
        for tp, part in parts.items():
            offset = part.tracker.committable()
            if offset is not None:
                offsets[tp] = offset
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:
            # A rebalance took the partitions: their next owner re-sends from the last commit.
            log.warning("notify: commit failed (%s); records will be re-sent", exc)
            return
        for tp, offset in offsets.items():
            parts[tp].tracker.committed(offset)

    async def _drain(self, parts: Iterable[_InFlightPartition]) -> None:
        tasks = [task for part in parts for task in part.tasks]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.settings.shutdown_grace)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("notify: %d delivery(ies) cut short; they will be re-sent", len(pending))
            await asyncio.wait(pending)

    async def _revoke(self, revoked: Collection[Any]) -> None:
        parts = {tp: self._partitions.pop(tp) for tp in revoked if tp in self._partitions}
        self._paused.difference_update(revoked)
        await self._drain(parts.values())
        await self._commit(parts)

    async def _assign(self, assigned: Collection[Any]) -> None:
        for tp in assigned:
            self._partitions[tp] = _InFlightPartition()
        if self.threads is not None:
            await self.threads.catch_up()
