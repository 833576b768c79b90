"""The worker's health: the periodic checks (gauges, watchdogs, ownership) and the web pages that
report them (`/healthz`, `/readyz`, `/metrics`).

`/healthz` fails when the stall watchdog finds a stalled partition, when partitions stay
unowned, or when the ingest service died; `/readyz` answers 503 while recovering, rebalancing,
before the ingest consumer joined its group, or while a partition is unowned. The Faust timers
that run the checks are registered in streams/runtime/app.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.runtime.health import describe_group_assignments, describe_tasks, unowned_partitions
from streams.runtime.ingest_service import ingest_group
from streams.runtime.kafka_options import aiokafka_options
from streams.runtime.metrics import LIVE, SHADOW
from streams.runtime.partitions import PartitionCorrelator, ShadowCorrelator

if TYPE_CHECKING:
    from streams.runtime.app import WorkerApp

__all__ = ["check_health", "check_ownership", "health_problems", "install_pages", "recovering"]

log = logging.getLogger("streams.worker")


def check_health(worker: WorkerApp, now_ns: int) -> None:
    """One tick of the health timer: gauges and counters from the stages, the stall watchdog
    over every source and correlate partition, and the recovery watchdog."""
    app, metrics, service = worker.app, worker.metrics, worker.ingest
    _update_gauges(worker, now_ns)
    metrics.raise_to(metrics.refused, worker.output.refused, "refused")
    checked = {f"{worker.config.topics.events}/{p}": h for p, h in service.source_health.items()}
    correlate_name = worker.correlate_topic
    checked.update({f"{correlate_name}/{p}": h for p, h in service.correlate_health.items()})
    worker.watchdog.check(checked, now_ns, lambda: describe_tasks(_waiting_on(worker)))
    metrics.stalled.set(len(worker.watchdog.stalled))
    recovery: Any = app.tables.recovery  # type: ignore[attr-defined]
    restart = worker.recovery_watchdog.check(
        recovering(app),
        (app.consumer_generation_id, tuple(sorted(recovery.active_offsets.items()))),
        now_ns,
        lambda: _recovery_context(app) + "\n" + describe_tasks(_waiting_on(worker)),
    )
    if restart and recovery.in_recovery:
        # Faust's own path for "another rebalance started": the recovery loop starts over
        # (flush, high-water marks, seek, resume fetching) for the same assignment.
        recovery.signal_recovery_start.set()


def install_pages(worker: WorkerApp, wall_clock: Any) -> None:
    """`/healthz`, `/readyz` and `/metrics` on the Faust app's web server."""
    app, service, metrics = worker.app, worker.ingest, worker.metrics

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        problems = health_problems(worker, wall_clock())
        if problems:
            return web.json({"status": "unhealthy", "problems": problems}, status=503)
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        if recovering(app):
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


def _waiting_on(worker: WorkerApp) -> dict[str, str]:
    return {
        "ingest": worker.ingest.waiting_on,
        "correlate agent": worker.correlate_waiting_on,
    }


def recovering(app: faust.App) -> bool:
    recovery: Any = app.tables.recovery  # type: ignore[attr-defined]
    return bool(app.rebalancing or recovery.in_recovery or not recovery.completed.is_set())


def _recovery_context(app: faust.App) -> str:
    recovery: Any = app.tables.recovery  # type: ignore[attr-defined]
    return (
        f"recovery: in_recovery={recovery.in_recovery} "
        f"completed={recovery.completed.is_set()} rebalancing={app.rebalancing} "
        f"offsets={dict(recovery.active_offsets)} highwaters={dict(recovery.active_highwaters)}"
    )


def health_problems(worker: WorkerApp, now_ns: int) -> list[str]:
    problems = []
    if worker.recovery_watchdog.stuck:
        problems.append(
            "table recovery or rebalance made no progress for "
            f"{worker.recovery_watchdog.stuck_for_ns / 1e9:.0f} s"
        )
    if worker.ingest.failed is not None:
        problems.append(f"ingest stopped: {worker.ingest.failed!r:.200}")
    if worker.watchdog.stalled:
        problems.append("stalled partitions: " + ", ".join(worker.watchdog.stalled))
    own = worker.ownership
    if own.unowned and now_ns - own.since_ns >= worker.config.app.stall_timeout_ns:
        problems.append("unowned partitions: " + ", ".join(own.unowned))
    return problems


async def check_ownership(worker: WorkerApp, *, delay: float = 0) -> None:
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
        {worker.correlate_topic: worker.config.topics.partitions}, members[app_id]
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
            if shadow_label == LIVE:
                for level in range(1, engine.levels):
                    mark = engine.level_watermarks[level]
                    metrics.level_lag.labels(label, str(level)).set(
                        (engine.watermark_ns - mark) / 1e9 if mark > -(2**63) else float("inf")
                    )
        template_errors += engine.stats.template_errors
        evicted += engine.stats.evicted
        keys_evicted += engine.stats.evicted_keys
    tag = "" if shadow_label == LIVE else ":shadow"
    metrics.raise_to(
        metrics.template_errors.labels(shadow_label), template_errors, "template_errors" + tag
    )
    metrics.raise_to(metrics.keys_evicted.labels(shadow_label), keys_evicted, "keys_evicted" + tag)
    metrics.raise_to(metrics.evicted.labels(shadow_label), evicted, "evicted" + tag)
