"""The worker assembled from its parts: the one place that turns a configuration into a worker.

From the configuration and the loaded rules it makes the metrics, the ingest matcher
(`Ingestor`, live and shadow rules), the correlators (live and shadow), the enrichment pipeline
and the notify stage, and hands them to the Faust app (streams/runtime/app.py). The command
(streams/runtime/cli.py) calls `assemble_worker` and runs what it returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from streams.core.rules import Ruleset
from streams.enrich import EnrichmentMetrics, load_enrichment
from streams.runtime.app import Correlators, WorkerApp, WorkerParts, build_app
from streams.runtime.config import WorkerConfig
from streams.runtime.ingest import Ingestor
from streams.runtime.metrics import WorkerMetrics, set_ruleset_metric
from streams.runtime.notify_wiring import NotifyService, build_notify_stage
from streams.runtime.partitions import PartitionCorrelator, ShadowCorrelator, StateStore

__all__ = ["assemble_worker"]


def assemble_worker(
    config: WorkerConfig,
    ruleset: Ruleset,
    *,
    shadow: Ruleset | None = None,
    metrics: WorkerMetrics | None = None,
    env: Mapping[str, str] | None = None,
    wall_clock: Callable[[], int] = time.time_ns,
) -> WorkerApp:
    """The worker for `config` running `ruleset` (and `shadow` rules, if any). ConfigError
    names the key of a bad `enrichment:` or `notifiers:` entry; `env` resolves their secrets."""
    metrics = metrics or WorkerMetrics.create()
    enrichment = load_enrichment(
        config.enrichment, env=env, metrics=EnrichmentMetrics.shared(metrics.registry)
    )
    cfg_app = config.app
    ingestor = Ingestor(
        ruleset,
        config.topics.partitions,
        max_future_skew_ns=cfg_app.max_future_skew_ns,
        max_event_bytes=cfg_app.max_event_bytes,
        shadow=shadow,
    )
    metrics.register_series(shadow=False)
    if shadow is not None:
        metrics.register_series(shadow=True)
        set_ruleset_metric(metrics, shadow, shadow=True)
    set_ruleset_metric(metrics, ruleset)
    parts = WorkerParts(
        config=config,
        ingestor=ingestor,
        correlators=_correlators(config, ruleset, shadow, metrics, wall_clock),
        metrics=metrics,
        enrichment=enrichment,
        wall_clock=wall_clock,
    )
    worker = build_app(parts)
    if config.notifiers:  # the notify stage: its own consumer group (streams/runtime/notify.py)
        worker.notify = build_notify_stage(config, registry=metrics.registry, env=env)
        worker.app.add_dependency(NotifyService(worker.notify))
    return worker


def _correlators(
    config: WorkerConfig,
    ruleset: Ruleset,
    shadow: Ruleset | None,
    metrics: WorkerMetrics,
    wall_clock: Callable[[], int],
) -> Callable[[StateStore], Correlators]:
    """The live correlator and (with shadow rules) the shadow one, over the app's state store."""
    cfg_app, partitions = config.app, config.topics.partitions

    def correlator(rules: Ruleset, store: StateStore, *, is_shadow: bool) -> PartitionCorrelator:
        return PartitionCorrelator(
            rules,
            store,
            lateness_ns=cfg_app.lateness_ns,
            max_pending=cfg_app.max_pending_per_key,
            # the global bound is per process: split over the correlate partitions it may own
            max_state_entries=max(1, cfg_app.max_state_entries // partitions),
            wall_clock=wall_clock,
            shadow=is_shadow,
            discard_shadow_state=shadow is None,
            # the live rules' chains: derived events to their dependent key's partition
            correlate_partitions=partitions,
            route_chains=not is_shadow,
            outbox=not is_shadow,  # incidents and chain records kept with the state until sent
        )

    def make(store: StateStore) -> Correlators:
        live = correlator(ruleset, store, is_shadow=False)
        if shadow is None:
            return live, None
        shadow_correlator = ShadowCorrelator(
            correlator(shadow, store, is_shadow=True),
            on_error=metrics.shadow_errors.labels("correlate").inc,
        )
        return live, shadow_correlator

    return make
