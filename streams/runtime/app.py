"""The Faust application: the correlate agent, the ingest service, health and web endpoints.

The only module that builds the Faust app. Design notes (docs/worker.md):

- The hot path does not go through Faust's per-message stream: `IngestService`
  (streams/runtime/ingest_service.py) reads the events topic in batches with confluent-kafka and
  produces one `CorrelateBatch` per destination partition per batch to `<app>-correlate`.
- Faust keeps what it does well: the stateful correlate agent (a changelog-backed table,
  recovery, rebalancing), the lifecycle, signals and the web endpoints. The agent handles one
  batch record at a time (`concurrency=1`); each changed state entry is written once per record,
  under that record's event, so Faust writes the changelog (and RocksDB) to its partition.
- State entries (to the table's store, and to its changelog) and incidents are produced with
  librdkafka (streams/runtime/state.py) and flushed before Faust may commit the records' offsets
  (at-least-once; incident ids are deterministic).
- Shadow rules (`app.shadow_rules`, docs/worker.md): matched at ingest beside the live rules,
  carried in the same records, correlated by a second `PartitionCorrelator` with its own state
  (namespaced entries in the same table) and the same progress; their incidents go to
  `<incidents>-shadow` only: no enrichment, no notifier. A failure of the shadow rules is counted
  (`fc_shadow_errors_total`), logged once per ruleset, and never stops or changes the live rules.
- `/healthz` fails when the stall watchdog finds a stalled partition, when partitions stay
  unowned, or when the ingest service died; `/readyz` answers 503 while recovering, rebalancing,
  before the ingest consumer joined its group, or while a partition is unowned.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
import mode
import orjson
from faust.streams import _current_event
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.core.rules import Ruleset
from streams.enrich import EnrichmentPipeline
from streams.runtime.config import StoreKind, WorkerConfig
from streams.runtime.health import (
    Ownership,
    RecoveryWatchdog,
    StallWatchdog,
    describe_group_assignments,
    describe_tasks,
    unowned_partitions,
)
from streams.runtime.ingest import Ingestor
from streams.runtime.ingest_service import IngestService, ingest_group
from streams.runtime.kafka_options import aiokafka_options, faust_broker_credentials
from streams.runtime.metrics import LIVE, SHADOW, WorkerMetrics
from streams.runtime.partitions import BatchOutcome, PartitionCorrelator, ShadowCorrelator
from streams.runtime.records import (
    RecordError,
    decode_batch,
    shadow_incidents_topic,
)
from streams.runtime.state import MAX_MESSAGE_BYTES, ChangelogStore, OutputProducer

__all__ = [
    "TABLE_NAME",
    "WorkerApp",
    "build_app",
    "changelog_topic_name",
    "correlate_topic_name",
    "faust_data_dir",
    "internal_topics",
    "set_ruleset_metric",
]

TABLE_NAME = "correlation-state"
_RECORDS_PER_TAKE = 32  # correlate records taken from the stream at a time
_RECORDS_WAIT_S = 0.005  # how long a partial group of records waits for more

log = logging.getLogger("streams.worker")


def faust_data_dir(config: WorkerConfig) -> Path:
    """Faust's datadir for this app: `app.data_dir/<app id>` (two apps never share tables)."""
    return Path(config.app.data_dir).expanduser() / config.app.id


def correlate_topic_name(app_id: str) -> str:
    return f"{app_id}-correlate"


def changelog_topic_name(app_id: str) -> str:
    return f"{app_id}-{TABLE_NAME}-changelog"


def internal_topics(app_id: str, partitions: int) -> dict[str, tuple[int, dict[str, str]]]:
    """Every topic Faust would declare for this app: name -> (partitions, topic config).

    Created before the app joins its group (streams/runtime/topics.py): the assignor ignores
    topics missing at assignment time and nothing assigns them later.
    """
    return {
        correlate_topic_name(app_id): (partitions, {}),
        changelog_topic_name(app_id): (
            partitions,
            {"cleanup.policy": "compact", "max.message.bytes": str(MAX_MESSAGE_BYTES)},
        ),
        f"{app_id}-__assignor-__leader": (1, {}),
    }


@dataclass
class WorkerApp:
    """The Faust app and the stages it drives (exposed for reloads, health and tests)."""

    app: faust.App
    config: WorkerConfig
    ingestor: Ingestor
    correlator: PartitionCorrelator
    metrics: WorkerMetrics
    ingest: IngestService
    ready: dict[str, Any] = field(default_factory=dict)
    enrichment: EnrichmentPipeline = field(default_factory=EnrichmentPipeline)
    processed: dict[int, int] = field(default_factory=dict)  # correlate partition -> next offset
    watchdog: StallWatchdog | None = None
    recovery_watchdog: RecoveryWatchdog = field(
        default_factory=lambda: RecoveryWatchdog(stall_timeout_ns=60 * 10**9)
    )
    ownership: Ownership = field(default_factory=Ownership)
    correlate_waiting_on: str = "starting"
    shadow: ShadowCorrelator | None = None  # the shadow rules' correlate stage, if any

    def reload(self, ruleset: Ruleset) -> None:
        self.ingestor.reload(ruleset)
        self.correlator.reload(ruleset)

    def reload_shadow(self, ruleset: Ruleset) -> None:
        """New shadow rules; only for a worker started with shadow rules (the set of
        stages is fixed at start: adding or removing `app.shadow_rules` is a restart)."""
        if self.shadow is None:
            raise RuntimeError("this worker was started without shadow rules")
        self.ingestor.reload_shadow(ruleset)
        self.shadow.reload(ruleset)

    def local_positions(self) -> dict[int, int]:
        return dict(self.processed)


class _IngestRunner(mode.Service):
    """Runs the ingest service with the Faust app: started with it, drained before it stops."""

    def __init__(self, service: IngestService) -> None:
        super().__init__()
        self.service = service

    async def on_start(self) -> None:
        await self.service.start()

    async def on_stop(self) -> None:
        await self.service.stop()


def build_app(
    config: WorkerConfig,
    ruleset: Ruleset,
    *,
    metrics: WorkerMetrics | None = None,
    wall_clock: Callable[[], int] = time.time_ns,
    enrichment: EnrichmentPipeline | None = None,
    shadow: Ruleset | None = None,
) -> WorkerApp:
    cfg_app, topics = config.app, config.topics
    partitions = topics.partitions
    store = "rocksdb://" if cfg_app.store is StoreKind.ROCKSDB else "memory://"
    app = faust.App(
        cfg_app.id,
        broker=[f"kafka://{server}" for server in config.kafka.bootstrap_servers.split(",")],
        broker_credentials=faust_broker_credentials(config.kafka),
        store=store,
        datadir=str(faust_data_dir(config)),
        topic_partitions=partitions,
        topic_replication_factor=topics.replication_factor,
        key_serializer="raw",
        value_serializer="raw",
        processing_guarantee="at_least_once",
        web_enabled=True,
        web_port=cfg_app.web_port,
        web_bind="0.0.0.0",  # noqa: S104 - probes and Prometheus scrape the pod IP
        web_in_thread=False,
        table_standby_replicas=0,
        topic_allow_declare=True,
        stream_buffer_maxsize=1024,
        consumer_max_fetch_size=16 * 1024 * 1024,
        broker_commit_every=10_000,
        broker_commit_interval=0.5,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=cfg_app.session_timeout_ns / 1e9,
        broker_heartbeat_interval=min(3.0, cfg_app.session_timeout_ns / 3e9),
        producer_linger_ms=5,
    )
    metrics = metrics or WorkerMetrics.create()
    correlate_name = correlate_topic_name(cfg_app.id)
    correlate_topic = app.topic(
        correlate_name,
        partitions=partitions,
        internal=True,
        key_serializer="raw",
        value_serializer="raw",
    )
    # key and value are bytes: the app's default serializers are raw
    table = app.Table(TABLE_NAME, partitions=partitions, key_type=bytes, value_type=bytes)
    output = OutputProducer(config)
    state_store = ChangelogStore(table, changelog_topic_name(cfg_app.id), output)
    ingestor = Ingestor(
        ruleset,
        partitions,
        max_future_skew_ns=cfg_app.max_future_skew_ns,
        max_event_bytes=cfg_app.max_event_bytes,
        shadow=shadow,
    )

    def correlator_for(rules: Ruleset, *, is_shadow: bool) -> PartitionCorrelator:
        return PartitionCorrelator(
            rules,
            state_store,
            lateness_ns=cfg_app.lateness_ns,
            max_pending=cfg_app.max_pending_per_key,
            # the global bound is per process: split over the correlate partitions it may own
            max_state_entries=max(1, cfg_app.max_state_entries // partitions),
            wall_clock=wall_clock,
            shadow=is_shadow,
            discard_shadow_state=shadow is None,
        )

    correlator = correlator_for(ruleset, is_shadow=False)
    shadow_topic = shadow_incidents_topic(topics.incidents)
    processed: dict[int, int] = {}

    def fatal(exc: BaseException) -> None:
        app.loop.create_task(runner.crash(exc))

    service = IngestService(
        config,
        ingestor,
        metrics,
        correlate_topic=correlate_name,
        faust_group=cfg_app.id,
        local_positions=lambda: dict(processed),
        on_fatal=fatal,
        wall_clock=wall_clock,
        batch_size=cfg_app.ingest_batch_size,
        max_inflight=cfg_app.max_inflight_records,
    )
    runner = _IngestRunner(service)
    app.add_dependency(runner)
    worker = WorkerApp(app, config, ingestor, correlator, metrics, service, processed=processed)
    metrics.register_series(shadow=False)
    shadow_correlator = None
    if shadow is not None:
        shadow_correlator = worker.shadow = ShadowCorrelator(
            correlator_for(shadow, is_shadow=True),
            on_error=metrics.shadow_errors.labels("correlate").inc,
        )
        metrics.register_series(shadow=True)
        set_ruleset_metric(metrics, shadow, shadow=True)
    worker.watchdog = StallWatchdog(
        cfg_app.stall_timeout_ns, fresh_within_ns=3 * cfg_app.tick_interval_ns + 10 * 10**9
    )
    worker.recovery_watchdog = RecoveryWatchdog(cfg_app.stall_timeout_ns)
    if enrichment is not None:
        worker.enrichment = enrichment
    set_ruleset_metric(metrics, ruleset)

    @app.agent(correlate_topic, name="correlate", concurrency=1)
    async def correlate(stream: Any) -> None:
        async for events in stream.take_events(_RECORDS_PER_TAKE, within=_RECORDS_WAIT_S):
            started = time.perf_counter()
            incidents: list[dict[str, Any]] = []
            shadow_incidents: list[dict[str, Any]] = []
            last_of: dict[int, Any] = {}
            for event in events:
                message = event.message
                try:
                    incidents.extend(_correlate_record(event, shadow_incidents))
                except Exception as exc:
                    # a defect, not bad input (records are ours and decoded above): say where,
                    # count it and go on — a dead agent would stall every partition silently
                    metrics.records_invalid.inc()
                    log.exception(
                        "correlate record %s/%d/%d failed: %r; skipped",
                        correlate_name,
                        message.partition,
                        message.offset,
                        exc,
                    )
                last_of[message.partition] = event
            # Each changed entry is written once per group of records, under an event of its
            # partition: the store (RocksDB) and the changelog take the current event's
            # partition. A key changed by several records of the group is written once.
            for partition, event in last_of.items():
                with _current(event):
                    worker.correlator.persist(partition)
                    if shadow_correlator is not None:
                        shadow_correlator.persist(partition)
                processed[partition] = event.message.offset + 1
            if incidents:
                worker.correlate_waiting_on = "enrichment of incidents"
                await _emit(incidents)
            if shadow_incidents:
                _emit_shadow(shadow_incidents)
            metrics.stage_seconds.labels("correlate").observe(time.perf_counter() - started)
            worker.correlate_waiting_on = f"next record of {correlate_name} (Faust stream)"

    async def flush_outputs() -> None:
        """Runs before every offset commit of Faust's consumer (and before revocation): state
        entries and incidents of every record processed so far are acknowledged first."""
        await output.flush()
        state_store.persist_offsets()

    _flush_before_commits(app, flush_outputs)

    def _correlate_record(event: Any, shadow_out: list[dict[str, Any]]) -> list[dict[str, Any]]:
        message = event.message
        partition, offset = message.partition, message.offset
        worker.correlate_waiting_on = f"processing {correlate_name}/{partition}@{offset}"
        try:
            batch = decode_batch(message.key, message.value)
        except RecordError as exc:
            metrics.records_invalid.inc()
            log.error(
                "skipped correlate record %s/%d/%d: %s", correlate_name, partition, offset, exc
            )
            return []
        outcome = worker.correlator.on_batch(partition, offset, batch, persist=False)
        if outcome.events:
            metrics.batch_size.labels("correlate").observe(outcome.events)
        if outcome.produced_ms:
            now_s = wall_clock() / 1e9
            for produced in outcome.produced_ms:
                metrics.latency.observe(max(now_s - produced / 1000, 0.0))
        _count(partition, outcome, LIVE)
        if outcome.late and outcome.first_late is not None:
            source_partition, source_offset, time_ns, watermark = outcome.first_late
            log.warning(
                "%d late event(s) in %s/%d/%d, the first from %s/%d/%d: %.3f s behind "
                "the watermark",
                outcome.late,
                correlate_name,
                partition,
                offset,
                topics.events,
                source_partition,
                source_offset,
                (watermark - time_ns) / 1e9,
            )
        if shadow_correlator is not None:  # after the live rules, isolated from them
            shadow_outcome = shadow_correlator.on_batch(partition, offset, batch)
            if shadow_outcome is not None:
                _count(partition, shadow_outcome, SHADOW)
                shadow_out.extend(shadow_outcome.incidents)
        return outcome.incidents

    def _count(partition: int, outcome: BatchOutcome, shadow_label: str) -> None:
        if outcome.events:
            metrics.records.labels(str(partition), shadow_label).inc(outcome.events)
        if outcome.late:
            metrics.late.labels("correlate", shadow_label).inc(outcome.late)
        if outcome.duplicates:
            metrics.duplicates.labels(shadow_label).inc(outcome.duplicates)

    async def _emit(incidents: list[dict[str, Any]]) -> None:
        # enrichment of a batch's incidents runs concurrently, each bounded by the deadline
        await asyncio.gather(*(worker.enrichment.enrich(incident) for incident in incidents))
        for incident in incidents:
            _count_incident(incident, LIVE)
            output.produce(
                topics.incidents,
                incident["id"].encode(),
                orjson.dumps(incident),
                -1,
                changelog=False,
            )
            log.info(
                "incident %s %s %s key=%s count=%d",
                incident["id"],
                incident["status"],
                incident["correlation"],
                incident["key"],
                incident["count"],
            )

    def _count_incident(incident: dict[str, Any], shadow_label: str) -> None:
        metrics.incidents.labels(
            incident["correlation"],
            incident["status"],
            str(incident.get("severity")),
            shadow_label,
        ).inc()
        metrics.matches.labels(incident["correlation"], shadow_label).inc()

    def _emit_shadow(incidents: list[dict[str, Any]]) -> None:
        """The shadow rules' incidents: to `<incidents>-shadow` only, as `replay` gives them
        (no enrichment: enrichers call external services; no notifier reads this topic)."""
        for incident in incidents:
            _count_incident(incident, SHADOW)
            output.produce(
                shadow_topic, incident["id"].encode(), orjson.dumps(incident), -1, changelog=False
            )
            log.info(
                "shadow incident %s %s %s key=%s count=%d",
                incident["id"],
                incident["status"],
                incident["correlation"],
                incident["key"],
                incident["count"],
            )

    @app.timer(interval=cfg_app.tick_interval_ns / 1e9, name="health")
    async def health() -> None:
        now = wall_clock()
        _update_gauges(worker, now)
        _raise_counter(metrics.refused, output.refused, worker.ready, "refused")
        checked = {f"{topics.events}/{p}": h for p, h in service.source_health.items()}
        checked.update({f"{correlate_name}/{p}": h for p, h in service.correlate_health.items()})
        assert worker.watchdog is not None
        worker.watchdog.check(checked, now, lambda: describe_tasks(_waiting_on(worker)))
        metrics.stalled.set(len(worker.watchdog.stalled))
        recovery: Any = app.tables.recovery  # type: ignore[attr-defined]
        restart = worker.recovery_watchdog.check(
            _recovering(app),
            (app.consumer_generation_id, tuple(sorted(recovery.active_offsets.items()))),
            now,
            lambda: _recovery_context(app) + "\n" + describe_tasks(_waiting_on(worker)),
        )
        if restart and recovery.in_recovery:
            # Faust's own path for "another rebalance started": the recovery loop starts over
            # (flush, high-water marks, seek, resume fetching) for the same assignment.
            recovery.signal_recovery_start.set()

    @app.timer(interval=5.0, name="ownership")
    async def ownership() -> None:
        await _check_ownership(worker, correlate_name)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        revoked = args[0] if args else kwargs.get("revoked", set())
        gone = {tp.partition for tp in revoked if tp.topic == correlate_name}
        if gone:
            log.info("correlate partitions revoked: %s", sorted(gone))
        worker.correlator.revoke(gone)
        if shadow_correlator is not None:
            shadow_correlator.revoke(gone)
        for partition in gone:
            processed.pop(partition, None)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        assigned = args[0] if args else kwargs.get("assigned", set())
        mine = sorted(tp.partition for tp in assigned if tp.topic == correlate_name)
        log.info("correlate partitions assigned: %s", mine)
        _forget_read_offsets(app)
        app.loop.create_task(_check_ownership(worker, correlate_name, delay=2.0))

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        problems = _health_problems(worker, wall_clock())
        if problems:
            return web.json({"status": "unhealthy", "problems": problems}, status=503)
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        if _recovering(app):
            return web.json({"status": "recovering or rebalancing"}, status=503)
        if not service.joined.is_set():
            return web.json({"status": "ingest consumer not in its group yet"}, status=503)
        if worker.ownership.unowned:
            return web.json(
                {
                    "status": "partitions not owned by any worker",
                    "partitions": worker.ownership.unowned,
                },
                status=503,
            )
        body = {"status": "ready", "ruleset": worker.ingestor.ruleset.digest}
        shadow_rules = worker.ingestor.shadow_ruleset
        if shadow_rules is not None:
            body["shadow_ruleset"] = shadow_rules.digest
        return web.json(body)

    @app.page("/metrics")
    async def prometheus(web: Any, request: Any) -> Any:
        # aiohttp wants the charset apart from the content type
        content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return web.bytes(generate_latest(metrics.registry), content_type=content_type)

    # keep references so Faust's decorators' results are not garbage collected or unused
    worker.ready.update(
        correlate=correlate,
        health=health,
        ownership=ownership,
        on_revoked=on_revoked,
        on_assigned=on_assigned,
    )
    if config.notifiers:  # notify stage: its own consumer group (streams/runtime/notify.py)
        from streams.runtime.notify_wiring import NotifyService, build_notify_stage

        stage = build_notify_stage(config, registry=metrics.registry)
        app.add_dependency(NotifyService(stage))
        worker.ready["notify"] = stage
    return worker


def _waiting_on(worker: WorkerApp) -> dict[str, str]:
    return {
        "ingest": worker.ingest.waiting_on,
        "correlate agent": worker.correlate_waiting_on,
    }


def _recovering(app: faust.App) -> bool:
    recovery: Any = app.tables.recovery  # type: ignore[attr-defined]
    return bool(app.rebalancing or recovery.in_recovery or not recovery.completed.is_set())


def _recovery_context(app: faust.App) -> str:
    recovery: Any = app.tables.recovery  # type: ignore[attr-defined]
    return (
        f"recovery: in_recovery={recovery.in_recovery} "
        f"completed={recovery.completed.is_set()} rebalancing={app.rebalancing} "
        f"offsets={dict(recovery.active_offsets)} highwaters={dict(recovery.active_highwaters)}"
    )


def _forget_read_offsets(app: faust.App) -> None:
    """Drop the Faust consumer's remembered read offsets of changelog partitions.

    Faust's fetcher drops every message below a partition's remembered read offset. A revocation
    forgets them, but a message being delivered while the revocation runs writes its offset
    back right after (faust/transport/consumer.py `_drain_messages`), and recovery seeks with
    `seek_wait`, which does not reset it: a changelog partition assigned again later would then
    have the messages recovery needs dropped, and recovery waits for them forever. Recovery
    always seeks changelog partitions itself, so forgetting their read offsets is safe.
    """
    read_offsets: Any = getattr(app.consumer, "_read_offset", None)
    if not isinstance(read_offsets, MutableMapping):
        return
    changelogs = app.tables.changelog_topics
    for tp in [tp for tp in read_offsets if tp.topic in changelogs]:
        read_offsets.pop(tp, None)


def _health_problems(worker: WorkerApp, now_ns: int) -> list[str]:
    problems = []
    if worker.recovery_watchdog.stuck:
        problems.append(
            "table recovery or rebalance made no progress for "
            f"{worker.recovery_watchdog.stuck_for_ns / 1e9:.0f} s"
        )
    if worker.ingest.failed is not None:
        problems.append(f"ingest stopped: {worker.ingest.failed!r:.200}")
    if worker.watchdog is not None and worker.watchdog.stalled:
        problems.append("stalled partitions: " + ", ".join(worker.watchdog.stalled))
    own = worker.ownership
    if own.unowned and now_ns - own.since_ns >= worker.config.app.stall_timeout_ns:
        problems.append("unowned partitions: " + ", ".join(own.unowned))
    return problems


async def _check_ownership(worker: WorkerApp, correlate_name: str, *, delay: float = 0) -> None:
    """Every partition of the events topic owned in the ingest group, and every correlate
    partition in the Faust group; readiness fails (and the log says so) while one is not."""
    if delay:
        await asyncio.sleep(delay)
    service = worker.ingest
    if service.admin is None or not service.joined.is_set():
        return
    app_id = worker.config.app.id
    source_count = service.source_partitions
    try:
        members = await describe_group_assignments(
            aiokafka_options(worker.config), [ingest_group(app_id), app_id]
        )
    except Exception as exc:  # a broker outage: keep the last verdict
        log.warning("cannot describe the consumer groups: %r", exc)
        return
    unowned = unowned_partitions(
        {worker.config.topics.events: source_count}, members[ingest_group(app_id)]
    )
    unowned += unowned_partitions(
        {correlate_name: worker.config.topics.partitions}, members[app_id]
    )
    own = worker.ownership
    if unowned and not own.unowned:
        own.since_ns = time.time_ns()
    if unowned and unowned != own.unowned:
        log.error(
            "partitions owned by no member of the group: %s; /readyz answers 503 "
            "(were the topics created after the group formed?)",
            ", ".join(unowned),
        )
    elif own.unowned and not unowned:
        log.info("every partition is owned again")
    own.unowned = unowned
    own.checked = True
    worker.metrics.unowned.set(len(unowned))


def _flush_before_commits(app: faust.App, flush: Callable[[], Any]) -> None:
    """Faust's consumer awaits `app.producer.flush()` right before it commits offsets (at-least-
    once): chain our own outputs' flush into it, so an offset is never committed before the
    state and incidents of its record are acknowledged by the brokers."""
    producer: Any = app.producer
    faust_flush = producer.flush

    async def flush_all() -> None:
        try:
            await flush()
        except RuntimeError as exc:
            log.error("correlate outputs not delivered: %s; the worker stops (exit 1)", exc)
            await app.crash(exc)
            raise
        await faust_flush()

    producer.flush = flush_all


@contextmanager
def _current(event: Any) -> Iterator[None]:
    """Make `event` Faust's current event, so table writes go to its partition."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def set_ruleset_metric(metrics: WorkerMetrics, ruleset: Ruleset, *, shadow: bool = False) -> None:
    label = SHADOW if shadow else LIVE
    for digest, shadow_label in list(_ruleset_series(metrics)):
        if shadow_label == label:
            metrics.ruleset.remove(digest, shadow_label)
    metrics.ruleset.labels(ruleset.digest, label).set(1)
    metrics.reload_success.labels(label).set(1)


def _ruleset_series(metrics: WorkerMetrics) -> list[tuple[str, str]]:
    return [
        (sample.labels["digest"], sample.labels["shadow"])
        for family in metrics.ruleset.collect()
        for sample in family.samples
    ]


def _update_gauges(worker: WorkerApp, now_ns: int) -> None:
    _update_correlator_gauges(worker, worker.correlator, now_ns, LIVE)
    if worker.shadow is not None:
        _update_correlator_gauges(worker, worker.shadow, now_ns, SHADOW)


def _update_correlator_gauges(
    worker: WorkerApp,
    correlator: PartitionCorrelator | ShadowCorrelator,
    now_ns: int,
    shadow_label: str,
) -> None:
    metrics = worker.metrics
    template_errors = evicted = keys_evicted = 0
    for partition, engine in correlator.partitions().items():
        label = str(partition)
        metrics.state_entries.labels(label, shadow_label).set(engine.state_entries)
        metrics.held_events.labels(label, shadow_label).set(engine.buffered)
        if engine.watermark_ns > -(2**63):
            metrics.watermark_lag.labels(label, shadow_label).set(
                (now_ns - engine.watermark_ns) / 1e9
            )
        template_errors += engine.stats.template_errors
        evicted += engine.stats.evicted
        keys_evicted += engine.stats.evicted_keys
    seen = worker.ready
    tag = "" if shadow_label == LIVE else ":shadow"
    _raise_counter(
        metrics.template_errors.labels(shadow_label), template_errors, seen, "template_errors" + tag
    )
    _raise_counter(
        metrics.keys_evicted.labels(shadow_label), keys_evicted, seen, "keys_evicted" + tag
    )
    _raise_counter(metrics.evicted.labels(shadow_label), evicted, seen, "evicted" + tag)


def _raise_counter(counter: Any, total: int, seen: dict[str, Any], name: str) -> None:
    """Counters only go up: add what the engines counted since the last look."""
    previous = seen.get(name, 0)
    if total > previous:
        counter.inc(total - previous)
    seen[name] = max(total, previous)
