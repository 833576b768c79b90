"""Wiring of the notify stage: its parts from the worker config, and its runner in the Faust app.

The stage itself is streams/runtime/notify.py; the worker is assembled in
streams/runtime/assembly.py, which calls `build_notify_stage` and adds a `NotifyService`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import mode
from prometheus_client import REGISTRY, CollectorRegistry

from streams.notifiers import Dispatcher, Notifier, NotifierContext, NotifierMetrics, load_notifiers
from streams.runtime.config import WorkerConfig
from streams.runtime.notify import NotifyStage
from streams.runtime.notify_settings import NotifySettings, parse_notify_settings
from streams.runtime.slack_threads import KafkaThreadStore

__all__ = ["NotifyService", "build_notify_stage", "load_notify_parts", "thread_topic_name"]

log = logging.getLogger("streams.notify")


def thread_topic_name(app_id: str) -> str:
    return f"{app_id}-slack-threads"


def load_notify_parts(
    config: WorkerConfig,
    *,
    registry: CollectorRegistry | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[NotifySettings, list[Notifier], KafkaThreadStore | None]:
    """Settings, notifiers and (when a notifier `needs_thread_store`) the thread store;
    ConfigError names the key. Notifier metrics go to `registry` (the worker's, on /metrics)."""
    settings = parse_notify_settings(config.delivery)
    threads = KafkaThreadStore(config, thread_topic_name(config.app.id), settings.thread_retention)
    metrics = NotifierMetrics.shared(REGISTRY if registry is None else registry)
    kinds = config.enrichment.kinds if config.enrichment is not None else {}
    context = NotifierContext(metrics=metrics, thread_store=threads, enricher_kinds=kinds)
    notifiers = load_notifiers(config.notifiers, context, env=env)
    needed = any(notifier.needs_thread_store for notifier in notifiers)
    return settings, notifiers, threads if needed else None


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


class NotifyService(mode.Service):
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
