"""The Faust application: topics, the ingest and correlate agents, ticks, web endpoints.

The only module that imports Faust. Design notes (docs/worker.md): aiokafka transport,
at-least-once with deterministic incident ids, raw serializers + orjson, one agent per topic
(`concurrency=1`: a repartitioned stream must not commit past an in-flight message), per-key
state in a plain changelog-backed Table keyed by the correlate topic's key, and tick records
produced into every correlate partition so idle partitions advance their watermark inside stream
iteration (a timer may not write tables).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from faust.streams import _current_event
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.core.rules import Ruleset
from streams.enrich import EnrichmentPipeline
from streams.runtime.config import StoreKind, WorkerConfig
from streams.runtime.kafka_options import faust_broker_credentials
from streams.runtime.metrics import WorkerMetrics
from streams.runtime.partitions import PartitionCorrelator
from streams.runtime.records import TICK_KEY, Ingestor, tick_value

__all__ = ["WorkerApp", "build_app", "correlate_topic_name"]

_BATCH = 1000  # messages per agent iteration
_BATCH_WAIT_S = 0.05  # how long a partial batch waits for more

log = logging.getLogger("streams.worker")


def correlate_topic_name(app_id: str) -> str:
    return f"{app_id}-correlate"


@dataclass
class WorkerApp:
    """The Faust app and the pure stages it drives (exposed for reloads and tests)."""

    app: faust.App
    config: WorkerConfig
    ingestor: Ingestor
    correlator: PartitionCorrelator
    metrics: WorkerMetrics
    ready: dict[str, Any] = field(default_factory=dict)
    enrichment: EnrichmentPipeline = field(default_factory=EnrichmentPipeline)

    def reload(self, ruleset: Ruleset) -> None:
        self.ingestor.reload(ruleset)
        self.correlator.reload(ruleset)


def build_app(
    config: WorkerConfig,
    ruleset: Ruleset,
    *,
    metrics: WorkerMetrics | None = None,
    wall_clock: Callable[[], int] = time.time_ns,
    enrichment: EnrichmentPipeline | None = None,
) -> WorkerApp:
    cfg_app, topics = config.app, config.topics
    partitions = topics.partitions
    store = "rocksdb://" if cfg_app.store is StoreKind.ROCKSDB else "memory://"
    app = faust.App(
        cfg_app.id,
        broker=[f"kafka://{server}" for server in config.kafka.bootstrap_servers.split(",")],
        broker_credentials=faust_broker_credentials(config.kafka),
        store=store,
        datadir=cfg_app.data_dir,
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
        stream_buffer_maxsize=8192,
        consumer_max_fetch_size=16 * 1024 * 1024,
        broker_commit_every=10_000,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=cfg_app.session_timeout_ns / 1e9,
        broker_heartbeat_interval=min(3.0, cfg_app.session_timeout_ns / 3e9),
        producer_linger_ms=5,
    )
    metrics = metrics or WorkerMetrics.create()
    events_topic = app.topic(topics.events, key_serializer="raw", value_serializer="raw")
    correlate_topic = app.topic(
        correlate_topic_name(cfg_app.id),
        partitions=partitions,
        internal=True,
        key_serializer="raw",
        value_serializer="raw",
    )
    incidents_topic = app.topic(topics.incidents, key_serializer="raw", value_serializer="raw")
    dead_letter_topic = app.topic(topics.dead_letter, key_serializer="raw", value_serializer="raw")
    # key and value are bytes: the app's default serializers are raw
    table = app.Table("correlation-state", partitions=partitions, key_type=bytes, value_type=bytes)
    ingestor = Ingestor(ruleset, cfg_app.lateness_ns, wall_clock=wall_clock)
    correlator = PartitionCorrelator(
        ruleset,
        table,
        lateness_ns=cfg_app.lateness_ns,
        max_pending=cfg_app.max_pending_per_key,
        wall_clock=wall_clock,
    )
    worker = WorkerApp(app, config, ingestor, correlator, metrics)
    if enrichment is not None:
        worker.enrichment = enrichment
    _set_ruleset_metric(metrics, ruleset)

    @app.agent(events_topic, name="ingest", concurrency=1)
    async def ingest(stream: Any) -> None:  # a faust.Stream (StreamT lacks take_events)
        # Batches amortise Faust's per-message cost; offsets are acked after the batch.
        async for events in stream.take_events(_BATCH, within=_BATCH_WAIT_S):
            consumed: Counter[tuple[str, int]] = Counter()
            late = 0
            for event in events:
                message = event.message
                consumed[(message.topic, message.partition)] += 1
                result = worker.ingestor.ingest(
                    message.value, message.partition, message.offset, message.timestamp * 1000
                )
                # Sends attach to the current event: Faust publishes (and awaits) them before it
                # commits that event's offset, which is what makes the output at-least-once.
                with _current(event):
                    if result.invalid is not None:
                        await _dead_letter(message, result.invalid)
                    elif result.late:
                        late += 1
                    else:
                        for key, value in result.records:
                            await correlate_topic.send(key=key, value=value)
            for (topic, partition), count in consumed.items():
                metrics.events.labels(topic, str(partition)).inc(count)
            if late:
                metrics.late.labels("ingest").inc(late)

    async def _dead_letter(message: Any, reason: str) -> None:
        metrics.invalid.inc()
        log.warning(
            "invalid event at %s/%d/%d: %s",
            message.topic,
            message.partition,
            message.offset,
            reason,
        )
        await dead_letter_topic.send(
            key=message.key,
            value=message.value or b"",
            headers=[
                ("fc-reason", reason.encode()),
                ("fc-source-topic", message.topic.encode()),
                ("fc-source-partition", str(message.partition).encode()),
                ("fc-source-offset", str(message.offset).encode()),
            ],
        )

    @app.agent(correlate_topic, name="correlate", concurrency=1)
    async def correlate(stream: Any) -> None:
        correlator = worker.correlator
        async for events in stream.take_events(_BATCH, within=_BATCH_WAIT_S):
            incidents: list[dict[str, Any]] = []
            last_of_partition: dict[int, Any] = {}
            records: Counter[int] = Counter()
            late = duplicates = 0
            now_s = wall_clock() / 1e9
            for event in events:
                message = event.message
                partition = message.partition
                outcome = correlator.on_message(
                    partition, message.offset, message.key, message.value, persist=False
                )
                last_of_partition[partition] = event
                if message.key != TICK_KEY:
                    records[partition] += 1
                    if outcome.source_timestamp_ms:
                        delay = now_s - outcome.source_timestamp_ms / 1000
                        metrics.latency.observe(max(delay, 0.0))
                late += outcome.late
                duplicates += outcome.duplicate
                incidents.extend(outcome.incidents)
            # One table write per changed entry per batch, each under an event of its own
            # partition: Faust writes the changelog (and RocksDB) to the current event's partition.
            for partition, event in last_of_partition.items():
                with _current(event):
                    correlator.persist(partition)
            for partition, count in records.items():
                metrics.records.labels(str(partition)).inc(count)
            if late:
                metrics.late.labels("correlate").inc(late)
            if duplicates:
                metrics.duplicates.inc(duplicates)
            if incidents:
                await _emit(incidents, events[-1])

    async def _emit(incidents: list[dict[str, Any]], last_event: Any) -> None:
        with _current(last_event):  # published before the batch's offsets are committed
            for incident in incidents:
                # bounded by the pipeline deadline; never drops the incident
                await worker.enrichment.enrich(incident)
                metrics.incidents.labels(incident["correlation"], incident["status"]).inc()
                metrics.matches.labels(incident["correlation"]).inc()
                await incidents_topic.send(
                    key=incident["id"].encode(), value=orjson.dumps(incident)
                )
                log.info(
                    "incident %s %s %s key=%s count=%d",
                    incident["id"],
                    incident["status"],
                    incident["correlation"],
                    incident["key"],
                    incident["count"],
                )

    tick_interval = cfg_app.tick_interval_ns / 1e9

    @app.timer(interval=tick_interval, name="watermark-ticks")
    async def ticks() -> None:
        value = tick_value(wall_clock(), worker.ingestor.high_water_ns)
        for partition in range(partitions):
            await correlate_topic.send(key=TICK_KEY, value=value, partition=partition)
        _update_gauges(worker, wall_clock())

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        revoked = args[0] if args else kwargs.get("revoked", set())
        name = correlate_topic_name(cfg_app.id)
        worker.correlator.revoke({tp.partition for tp in revoked if tp.topic == name})

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        assigned = args[0] if args else kwargs.get("assigned", set())
        # The ingest watermark waits for every assigned source partition (or its idleness).
        worker.ingestor.progress.assign(
            {tp.partition for tp in assigned if tp.topic == topics.events}
        )

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        recovery: Any = app.tables.recovery  # type: ignore[attr-defined]
        if app.rebalancing or recovery.in_recovery or not recovery.completed.is_set():
            return web.json({"status": "recovering or rebalancing"}, status=503)
        return web.json({"status": "ready", "ruleset": worker.ingestor.ruleset.digest})

    @app.page("/metrics")
    async def prometheus(web: Any, request: Any) -> Any:
        # aiohttp wants the charset apart from the content type
        content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return web.bytes(generate_latest(metrics.registry), content_type=content_type)

    # keep references so Faust's decorators' results are not garbage collected or unused
    worker.ready.update(
        ingest=ingest,
        correlate=correlate,
        ticks=ticks,
        on_revoked=on_revoked,
        on_assigned=on_assigned,
    )
    if config.notifiers:  # notify stage: its own consumer group (streams/runtime/notify.py)
        from streams.runtime.notify import install_notify

        install_notify(worker)
    return worker


@contextmanager
def _current(event: Any) -> Iterator[None]:
    """Make `event` Faust's current event, so table writes go to its partition."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def _set_ruleset_metric(metrics: WorkerMetrics, ruleset: Ruleset) -> None:
    metrics.ruleset.clear()
    metrics.ruleset.labels(ruleset.digest).set(1)
    metrics.reload_success.set(1)


def _update_gauges(worker: WorkerApp, now_ns: int) -> None:
    metrics = worker.metrics
    template_errors = evicted = 0
    for partition, engine in worker.correlator.partitions().items():
        label = str(partition)
        metrics.state_entries.labels(label).set(engine.state_entries)
        metrics.held_events.labels(label).set(engine.buffered)
        if engine.watermark_ns > -(2**63):
            metrics.watermark_lag.labels(label).set((now_ns - engine.watermark_ns) / 1e9)
        template_errors += engine.stats.template_errors
        evicted += engine.stats.evicted
    _raise_counter(metrics.template_errors, template_errors, worker.ready, "template_errors")
    _raise_counter(metrics.evicted, evicted, worker.ready, "evicted")


def _raise_counter(counter: Any, total: int, seen: dict[str, Any], name: str) -> None:
    """Counters only go up: add what the engines counted since the last look."""
    previous = seen.get(name, 0)
    if total > previous:
        counter.inc(total - previous)
    seen[name] = max(total, previous)
