"""`falco-correlator worker`: configuration, topics, logging, rules reload, then Faust."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import orjson

from streams.core.loader import load_rules, rule_files
from streams.core.rules import Ruleset
from streams.errors import ConfigError, RuleLoadError
from streams.runtime.config import LogFormat, WorkerConfig, load_config

if TYPE_CHECKING:
    from streams.runtime.app import WorkerApp

__all__ = ["RulesWatcher", "run_worker", "setup_logging"]

log = logging.getLogger("streams.worker")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def setup_logging(config: WorkerConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.app.log_format is LogFormat.JSON:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.app.log_level.value.upper())
    # aiokafka and faust are chatty at INFO about every rebalance step
    for noisy in ("aiokafka", "faust", "mode"):
        logging.getLogger(noisy).setLevel(max(root.level, logging.WARNING))
    # except table recovery: what it reads from where, at each rebalance (a stuck recovery is
    # diagnosed from these lines)
    logging.getLogger("faust.tables.recovery").setLevel(root.level)


class RulesWatcher:
    """Reload rules on SIGHUP and when a rule file changes; keep the old rules on errors.

    One watcher for the live rules and, with `app.shadow_rules`, one for the shadow rules
    (`shadow=True`): each reloads its own set, and a failure of one leaves the other alone."""

    def __init__(
        self, paths: Sequence[str], worker: object, metrics: object, *, shadow: bool = False
    ) -> None:
        self.paths = list(paths)
        self.worker = worker
        self.metrics = metrics
        self.shadow = shadow
        self._signature = self._files_signature()

    def _files_signature(self) -> tuple[tuple[str, int, int], ...]:
        signature = []
        for path in rule_files(self.paths):
            try:
                stat = path.stat()
            except OSError:
                continue
            signature.append((str(path), stat.st_mtime_ns, stat.st_size))
        return tuple(signature)

    def changed(self) -> bool:
        signature = self._files_signature()
        if signature != self._signature:
            self._signature = signature
            return True
        return False

    def reload(self, reason: str) -> bool:
        from streams.runtime.app import WorkerApp
        from streams.runtime.metrics import LIVE, SHADOW, set_ruleset_metric

        assert isinstance(self.worker, WorkerApp)
        metrics = self.worker.metrics
        label, what = (SHADOW, "shadow rules") if self.shadow else (LIVE, "rules")
        try:
            ruleset: Ruleset = load_rules(self.paths)
        except RuleLoadError as exc:
            metrics.reload_success.labels(label).set(0)
            metrics.reloads.labels("error", label).inc()
            log.error(
                "%s reload (%s) failed, keeping the previous %s: %d error(s)\n%s",
                what,
                reason,
                what,
                len(exc.errors),
                "\n".join(str(e) for e in exc.errors),
            )
            return False
        if self.shadow:
            self.worker.reload_shadow(ruleset)
        else:
            self.worker.reload(ruleset)
        set_ruleset_metric(metrics, ruleset, shadow=self.shadow)
        metrics.reloads.labels("ok", label).inc()
        log.info(
            "%s reloaded (%s): %d correlations, ruleset %s",
            what,
            reason,
            len(ruleset.correlations),
            ruleset.digest,
        )
        return True


def _load_rulesets(config: WorkerConfig) -> tuple[Ruleset, Ruleset | None] | int:
    """The live rules and the shadow rules (None without `app.shadow_rules`), or the exit code.

    Shadow rules that do not load fail the start like live ones: a deployment that asked for a
    shadow evaluation and would silently run without it is worse than one that does not start.
    Once running, a shadow reload error keeps the previous shadow rules (as for live ones)."""
    try:
        ruleset = load_rules(config.app.rules)
    except RuleLoadError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        print(f"{len(exc.errors)} error(s); the worker does not start", file=sys.stderr)
        return 1
    if not config.app.shadow_rules:
        return ruleset, None
    try:
        shadow = load_rules(config.app.shadow_rules)
    except RuleLoadError as exc:
        for error in exc.errors:
            print(f"shadow rules: {error}", file=sys.stderr)
        print(
            f"{len(exc.errors)} error(s) in app.shadow_rules; the worker does not start",
            file=sys.stderr,
        )
        return 1
    return ruleset, shadow


def _watch_rules(worker_app: WorkerApp, config: WorkerConfig, shadow: Ruleset | None) -> None:
    """Reload on SIGHUP and on a change of a rule file: the live and the shadow rules each."""
    watchers = [RulesWatcher(config.app.rules, worker_app, worker_app.metrics)]
    if shadow is not None:
        watchers.append(
            RulesWatcher(config.app.shadow_rules or (), worker_app, worker_app.metrics, shadow=True)
        )
    app = worker_app.app

    def reload_all(reason: str) -> None:
        for watcher in watchers:
            watcher.reload(reason)

    @app.task
    async def install_sighup() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: reload_all("SIGHUP"))

    @app.timer(interval=2.0, name="rules-file-watch")
    async def watch_rules() -> None:
        for watcher in watchers:
            if watcher.changed():
                watcher.reload("file change")

    # keep references so Faust's decorators' results are not garbage collected or unused
    assert worker_app.handles is not None
    worker_app.handles.rule_watch = (install_sighup, watch_rules)


def run_worker(
    *,
    config_path: str | None,
    rules: Sequence[str] | None,
    shadow_rules: Sequence[str] | None = None,
) -> int:
    try:
        config = load_config(config_path, os.environ)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2
    if rules:
        config = replace(config, app=replace(config.app, rules=tuple(rules)))
    if shadow_rules:
        config = replace(config, app=replace(config.app, shadow_rules=tuple(shadow_rules)))
    setup_logging(config)
    loaded = _load_rulesets(config)
    if isinstance(loaded, int):
        return loaded
    ruleset, shadow = loaded
    from streams.runtime.app import faust_data_dir
    from streams.runtime.topics import discard_stale_state, ensure_topics

    try:
        ensure_topics(config)
    except Exception as exc:  # any broker problem at start is fatal, said plainly
        print(f"cannot reach Kafka at {config.kafka.bootstrap_servers}: {exc}", file=sys.stderr)
        return 3
    faust_data_dir(config).mkdir(parents=True, exist_ok=True)
    try:
        discard_stale_state(config)
    except Exception as exc:  # the broker answered a moment ago; say what failed
        print(f"cannot check local state against the changelog: {exc}", file=sys.stderr)
        return 3

    import faust

    from streams.runtime.assembly import assemble_worker

    try:
        worker_app = assemble_worker(config, ruleset, shadow=shadow, env=os.environ)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2
    _watch_rules(worker_app, config, shadow)
    app = worker_app.app

    log.info(
        "starting worker %s: %d correlations (ruleset %s), events from %s on %s",
        config.app.id,
        len(ruleset.correlations),
        ruleset.digest,
        config.topics.events,
        config.kafka.bootstrap_servers,
    )
    if shadow is not None:
        from streams.runtime.records import shadow_incidents_topic

        log.info(
            "shadow rules: %d correlations (ruleset %s), incidents to %s only",
            len(shadow.correlations),
            shadow.digest,
            shadow_incidents_topic(config.topics.incidents),
        )
    started = time.monotonic()
    worker = faust.Worker(
        app,
        loglevel=config.app.log_level.value.upper(),
        override_logging=False,
        quiet=True,
        redirect_stdouts=False,
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 0
        log.info("worker stopped after %.0f s (exit %d)", time.monotonic() - started, code)
        return code
    return 0
