"""The Faust application: the correlate agent, the ingest service, the timers and signals.

The only module that builds the Faust app, around parts made from the configuration by
streams/runtime/assembly.py (which also adds the notify stage); the health checks and web pages
are streams/runtime/worker_health.py. Design notes (docs/worker.md):

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
- `/healthz` and `/readyz`: streams/runtime/worker_health.py.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faust
import mode
from faust.streams import _current_event

from streams.core.rules import Ruleset
from streams.enrich import EnrichmentPipeline
from streams.runtime.config import StoreKind, WorkerConfig
from streams.runtime.correlate_step import CorrelateStep
from streams.runtime.health import Ownership, RecoveryWatchdog, StallWatchdog
from streams.runtime.ingest import Ingestor
from streams.runtime.ingest_service import IngestService
from streams.runtime.kafka_options import faust_broker_credentials
from streams.runtime.metrics import WorkerMetrics
from streams.runtime.partition_chains import REPORT_INTERVAL_NS
from streams.runtime.partitions import (
    PartitionCorrelator,
    ShadowCorrelator,
    StateStore,
)
from streams.runtime.state import MAX_MESSAGE_BYTES, ChangelogStore, OutputProducer
from streams.runtime.worker_health import check_health, check_ownership, install_pages

if TYPE_CHECKING:
    from streams.runtime.notify import NotifyStage

__all__ = [
    "TABLE_NAME",
    "Correlators",
    "FaustHandles",
    "WorkerApp",
    "WorkerParts",
    "build_app",
    "changelog_topic_name",
    "correlate_topic_name",
    "faust_data_dir",
    "internal_topics",
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


Correlators = tuple[PartitionCorrelator, ShadowCorrelator | None]


@dataclass(frozen=True)
class WorkerParts:
    """What the Faust app is built around, made from the configuration by
    streams/runtime/assembly.py. The correlators keep their state in the app's table, so they
    are made here from the store over it (`correlators(store)`: the live one and, with shadow
    rules, the shadow one)."""

    config: WorkerConfig
    ingestor: Ingestor
    correlators: Callable[[StateStore], Correlators]
    metrics: WorkerMetrics
    enrichment: EnrichmentPipeline
    wall_clock: Callable[[], int] = time.time_ns


@dataclass
class FaustHandles:
    """What Faust's decorators returned (agents, timers, signal receivers): kept referenced."""

    correlate: Any
    health: Any
    ownership: Any
    on_revoked: Any
    on_assigned: Any
    chain_reports: Any = None
    rule_watch: tuple[Any, ...] = ()  # the SIGHUP task and the file-watch timer (cli.py)


@dataclass
class WorkerApp:
    """The Faust app and the stages it drives (exposed for reloads, health and tests)."""

    app: faust.App
    config: WorkerConfig
    ingestor: Ingestor
    correlator: PartitionCorrelator
    metrics: WorkerMetrics
    ingest: IngestService
    output: OutputProducer
    correlate_topic: str
    watchdog: StallWatchdog
    recovery_watchdog: RecoveryWatchdog
    enrichment: EnrichmentPipeline = field(default_factory=EnrichmentPipeline)
    shadow: ShadowCorrelator | None = None  # the shadow rules' correlate stage, if any
    notify: NotifyStage | None = None  # the notify stage, with `notifiers:` (assembly.py)
    handles: FaustHandles | None = None
    processed: dict[int, int] = field(default_factory=dict)  # correlate partition -> next offset
    ownership: Ownership = field(default_factory=Ownership)
    correlate_waiting_on: str = "starting"

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


def _faust_app(config: WorkerConfig) -> faust.App:
    cfg_app, topics = config.app, config.topics
    store = "rocksdb://" if cfg_app.store is StoreKind.ROCKSDB else "memory://"
    return faust.App(
        cfg_app.id,
        broker=[f"kafka://{server}" for server in config.kafka.bootstrap_servers.split(",")],
        broker_credentials=faust_broker_credentials(config.kafka),
        store=store,
        datadir=str(faust_data_dir(config)),
        topic_partitions=topics.partitions,
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


def build_app(parts: WorkerParts) -> WorkerApp:
    """The Faust app around `parts`: the correlate topic, table and agent, the ingest service,
    the health timers and pages. The worker is assembled by streams/runtime/assembly.py."""
    config, metrics, wall_clock = parts.config, parts.metrics, parts.wall_clock
    cfg_app, topics = config.app, config.topics
    partitions = topics.partitions
    app = _faust_app(config)
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
    correlator, shadow_correlator = parts.correlators(state_store)
    processed: dict[int, int] = {}

    def fatal(exc: BaseException) -> None:
        app.loop.create_task(runner.crash(exc))

    service = IngestService(
        config,
        parts.ingestor,
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
    worker = WorkerApp(
        app,
        config,
        parts.ingestor,
        correlator,
        metrics,
        service,
        output,
        correlate_name,
        watchdog=StallWatchdog(
            cfg_app.stall_timeout_ns, fresh_within_ns=3 * cfg_app.tick_interval_ns + 10 * 10**9
        ),
        recovery_watchdog=RecoveryWatchdog(cfg_app.stall_timeout_ns),
        enrichment=parts.enrichment,
        shadow=shadow_correlator,
        processed=processed,
    )

    step = CorrelateStep(worker, wall_clock)

    @app.agent(correlate_topic, name="correlate", concurrency=1)
    async def correlate(stream: Any) -> None:
        async for events in stream.take_events(_RECORDS_PER_TAKE, within=_RECORDS_WAIT_S):
            started = time.perf_counter()
            incidents_of: dict[int, list[dict[str, Any]]] = {}
            shadow_incidents: list[dict[str, Any]] = []
            last_of: dict[int, Any] = {}
            for event in events:
                message = event.message
                try:
                    found = step.record(event, shadow_incidents)
                    if found:
                        incidents_of.setdefault(message.partition, []).extend(found)
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
            incidents: list[dict[str, Any]] = []
            for partition in last_of:
                again = worker.correlator.take_recovered_outputs(partition)
                if again is not None:  # a restored outbox: outputs that may not have been sent
                    log.warning(
                        "partition %d: emitting again %d incident(s) and %d chain record(s) of "
                        "%d group(s) that may not have reached the brokers before the last stop",
                        partition,
                        len(again.incidents),
                        len(again.chains),
                        again.entries,
                    )
                    incidents.extend(again.incidents)
                    # before anything this group sends: its level reports may be past them
                    step.produce_chains(again.chains)
            chains_of, chains = step.chain_outputs(last_of, report=True)
            # Each changed entry is written once per group of records, under an event of its
            # partition: the store (RocksDB) and the changelog take the current event's
            # partition. A key changed by several records of the group is written once. The
            # group's outputs go first, into the partition's outbox (partition_outbox.py).
            for partition, event in last_of.items():
                found, sent = incidents_of.get(partition, []), chains_of.get(partition, [])
                worker.correlator.stage_outputs(partition, event.message.offset, found, sent)
                with _current(event):
                    worker.correlator.persist(partition)
                    if shadow_correlator is not None:
                        shadow_correlator.persist(partition)
                processed[partition] = event.message.offset + 1
                incidents.extend(found)
                chains.extend(sent)
            step.produce_chains(chains)
            if incidents:
                worker.correlate_waiting_on = "enrichment of incidents"
                await step.emit(incidents)
            worker.correlator.outputs_produced()
            if shadow_incidents:
                step.emit_shadow(shadow_incidents)
            metrics.stage_seconds.labels("correlate").observe(time.perf_counter() - started)
            worker.correlate_waiting_on = f"next record of {correlate_name} (Faust stream)"

    async def flush_outputs() -> None:
        """Runs before every offset commit of Faust's consumer (and before revocation): state
        entries and incidents of every record processed so far are acknowledged first."""
        flushed = worker.correlator.produced_outputs()
        await output.flush()
        state_store.persist_offsets()
        worker.correlator.acknowledge_outputs(flushed)  # their outbox entries can go

    _flush_before_commits(app, flush_outputs)

    @app.timer(interval=cfg_app.tick_interval_ns / 1e9, name="health")
    async def health() -> None:
        check_health(worker, wall_clock())

    @app.timer(interval=REPORT_INTERVAL_NS / 1e9, name="chain-reports")
    async def chain_reports() -> None:
        """Level watermarks that moved, to the other partitions (routed chains only)."""
        if worker.correlator.router is not None:  # progress only: lost in a crash, sent again
            # (derived events are made and sent while records are correlated: none here)
            _, reports = step.chain_outputs(list(worker.correlator.partitions()), report=True)
            step.produce_chains(reports)

    @app.timer(interval=5.0, name="ownership")
    async def ownership() -> None:
        await check_ownership(worker)

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
        app.loop.create_task(check_ownership(worker, delay=2.0))

    install_pages(worker, wall_clock)
    # keep references so Faust's decorators' results are not garbage collected or unused
    worker.handles = FaustHandles(
        correlate, health, ownership, on_revoked, on_assigned, chain_reports=chain_reports
    )
    return worker


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
