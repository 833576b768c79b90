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
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import mode
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from streams._metrics import PerRegistry
from streams.core.incident_record import Incident, incident_problem, read_incident
from streams.notifiers import (
    DeliveryFailure,
    Dispatcher,
    Notifier,
    NotifierContext,
    NotifierMetrics,
    load_notifiers,
)
from streams.notifiers.slack import SlackNotifier
from streams.runtime._slack_threads import KafkaThreadStore, retry_forever
from streams.runtime.config import WorkerConfig
from streams.runtime.kafka_options import aiokafka_options
from streams.runtime.notify_settings import NotifySettings, parse_notify_settings

if TYPE_CHECKING:
    from streams.runtime.app import WorkerApp

__all__ = [
    "NOTIFIER_HEADER",
    "KafkaThreadStore",
    "NotifySettings",
    "NotifyStage",
    "OffsetTracker",
    "aiokafka_options",
    "build_notify_stage",
    "dead_letter_message",
    "dead_letter_record",
    "install_notify",
    "load_notify_parts",
    "parse_notify_settings",
    "thread_topic_name",
]

log = logging.getLogger("streams.notify")

NOTIFIER_HEADER = "fc-notifier"


def thread_topic_name(app_id: str) -> str:
    return f"{app_id}-slack-threads"


# --- pure parts ----------------------------------------------------------------------------------


def _iso(seconds: float) -> str:
    moment = dt.datetime.fromtimestamp(seconds, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dead_letter_record(
    incident: Mapping[str, Any],
    failure: DeliveryFailure,
    *,
    failed_at: float,
    source: tuple[str, int, int] | None = None,
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON value of a notify dead-letter record. `previous` is the record a redelivery
    failed again: its attempts add up and its origin is kept."""
    record: dict[str, Any] = {
        "notifier": failure.notifier,
        "incident": dict(incident),
        "last_error": failure.last_error,
        "reason": failure.reason,
        "permanent": failure.permanent,
        "attempts": failure.attempts,
        "failed_at": _iso(failed_at),
        "redeliveries": 0,
    }
    if source is not None:
        topic, partition, offset = source
        record["source"] = {"topic": topic, "partition": partition, "offset": offset}
    if previous is not None:
        attempts, redeliveries = previous.get("attempts"), previous.get("redeliveries")
        if isinstance(attempts, int):
            record["attempts"] += attempts
        record["redeliveries"] = (redeliveries if isinstance(redeliveries, int) else 0) + 1
        if "source" in previous:
            record["source"] = previous["source"]
    return record


def dead_letter_message(record: Mapping[str, Any]) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Key (the incident id), value and headers (the notifier name) of a dead-letter record."""
    incident = record.get("incident")
    incident_id = incident.get("id") if isinstance(incident, Mapping) else None
    key = str(incident_id or "").encode()
    headers = [(NOTIFIER_HEADER, str(record["notifier"]).encode())]
    return key, orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS), headers


class OffsetTracker:
    """Commit bookkeeping of one partition: offsets start and finish in any order; the offset
    to commit (Kafka's "next offset to read") is the lowest one still in flight, or one past
    the highest started when nothing is."""

    def __init__(self) -> None:
        self._pending: set[int] = set()
        self._next: int | None = None
        self._committed: int | None = None

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def start(self, offset: int) -> None:
        self._pending.add(offset)
        self._next = offset + 1 if self._next is None else max(self._next, offset + 1)

    def done(self, offset: int) -> None:
        self._pending.discard(offset)

    def committable(self) -> int | None:
        """The offset to commit now, or None when it would not move the committed position."""
        if self._next is None:
            return None
        candidate = min(self._pending) if self._pending else self._next
        if self._committed is not None and candidate <= self._committed:
            return None
        return candidate

    def committed(self, offset: int) -> None:
        self._committed = offset if self._committed is None else max(self._committed, offset)


# --- the stage ---------------------------------------------------------------------------------


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
        self.in_flight = Gauge(
            "falco_correlator_notify_in_flight",
            "Incident records in flight",
            ["partition"],
            registry=registry,
        )


class _Partition:
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
        self._partitions: dict[Any, _Partition] = {}
        self._paused: set[Any] = set()
        self._stopping = asyncio.Event()
        self._failure: BaseException | None = None
        self._consumer: Any = None
        self._producer: Any = None

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

    def _submit(self, tp: Any, part: _Partition, record: Any) -> None:
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
        results = await self.dispatcher.dispatch(incident)
        for result in results:
            if isinstance(result, DeliveryFailure):
                await self._dead_letter(incident, result, record)
        if self.threads is not None:
            await self.threads.flush()

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

    async def _commit(self, parts: Mapping[Any, _Partition]) -> None:
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

    async def _drain(self, parts: Iterable[_Partition]) -> None:
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
            self._partitions[tp] = _Partition()
        if self.threads is not None:
            await self.threads.catch_up()


# --- wiring ------------------------------------------------------------------------------------


def load_notify_parts(
    config: WorkerConfig,
    *,
    registry: CollectorRegistry | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[NotifySettings, list[Notifier], KafkaThreadStore | None]:
    """Settings, notifiers and (when a Slack bot needs it) the thread store; ConfigError names
    the key. Notifier metrics go to `registry` (the worker's, served on /metrics)."""
    settings = parse_notify_settings(config.delivery)
    threads = KafkaThreadStore(config, thread_topic_name(config.app.id), settings.thread_retention)
    metrics = NotifierMetrics.shared(REGISTRY if registry is None else registry)
    kinds = config.enrichment.kinds if config.enrichment is not None else {}
    context = NotifierContext(metrics=metrics, thread_store=threads, enricher_kinds=kinds)
    notifiers = load_notifiers(config.notifiers, context, env=env)
    bot = any(isinstance(n, SlackNotifier) and n.config.mode == "bot" for n in notifiers)
    return settings, notifiers, threads if bot else None


def build_notify_stage(
    config: WorkerConfig,
    *,
    registry: CollectorRegistry | None = None,
    env: Mapping[str, str] | None = None,
) -> NotifyStage:
    settings, notifiers, threads = load_notify_parts(config, registry=registry, env=env)
    metrics = NotifierMetrics.shared(REGISTRY if registry is None else registry)
    return NotifyStage(
        config, Dispatcher(notifiers), settings=settings, metrics=metrics, threads=threads
    )


class _NotifyService(mode.Service):
    """Runs the stage with the Faust app; a stage error crashes the worker (it restarts and
    re-sends from the last commit) rather than leaving notifications silently stopped."""

    def __init__(self, stage: NotifyStage) -> None:
        super().__init__()
        self.stage = stage
        self._runner: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self.stage.run())
        self._runner.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and not self.should_stop:
            error = task.exception()
            assert error is not None
            log.error("notify stage failed: %r", error)
            asyncio.get_running_loop().create_task(self.crash(error))

    async def on_stop(self) -> None:
        self.stage.stop()
        if self._runner is not None:
            await asyncio.wait([self._runner])


def install_notify(worker: WorkerApp) -> NotifyStage:
    """Validate the `notifiers:`/`delivery:` sections and start the stage with the app."""
    stage = build_notify_stage(worker.config, registry=worker.metrics.registry)
    worker.app.add_dependency(_NotifyService(stage))
    worker.ready["notify"] = stage
    return stage
