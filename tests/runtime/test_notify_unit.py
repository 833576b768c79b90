"""The pure parts of the notify stage: dead-letter records, commit bookkeeping, its config."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from streams.core.loader import load_rules
from streams.errors import ConfigError
from streams.notifiers import DeliveryFailure
from streams.notifiers.dispatch import Dispatcher
from streams.notifiers.metrics import NotifierMetrics
from streams.runtime.assembly import assemble_worker
from streams.runtime.config import AppConfig, StoreKind, WorkerConfig, load_config
from streams.runtime.dead_letter import NOTIFIER_HEADER, dead_letter_message, dead_letter_record
from streams.runtime.metrics import WorkerMetrics
from streams.runtime.notify import NotifyStage
from streams.runtime.notify_settings import NotifySettings, parse_notify_settings
from streams.runtime.notify_wiring import load_notify_parts
from streams.runtime.offsets import OffsetTracker

RULES = Path(__file__).parents[2] / "rules"

INCIDENT = {"id": "a" * 32, "status": "new", "count": 1, "severity": "Critical"}
FAILURE = DeliveryFailure(
    notifier="soar",
    incident_id="a" * 32,
    attempts=8,
    last_error="HTTP 503: busy",
    reason="max attempts (8) reached",
    permanent=False,
    elapsed=12.5,
)
WEBHOOK = {"name": "soar", "type": "webhook", "webhook": {"url": "http://127.0.0.1:1/hook"}}


# --- commit bookkeeping ---------------------------------------------------------------------------


def test_a_fresh_tracker_has_nothing_to_commit() -> None:
    assert OffsetTracker().committable() is None


def test_the_commit_point_is_the_lowest_offset_still_in_flight() -> None:
    tracker = OffsetTracker()
    for offset in (10, 11, 12, 13):
        tracker.start(offset)

    tracker.done(11)
    tracker.done(13)

    assert tracker.committable() == 10
    tracker.done(10)
    assert tracker.committable() == 12
    tracker.done(12)
    assert tracker.committable() == 14
    assert tracker.in_flight == 0


def test_a_committed_position_is_not_committed_again() -> None:
    tracker = OffsetTracker()
    tracker.start(0)
    tracker.done(0)
    tracker.committed(1)

    assert tracker.committable() is None
    tracker.start(1)
    assert tracker.committable() is None  # 1 is in flight: the position stays at 1
    tracker.done(1)
    assert tracker.committable() == 2


def test_an_offset_that_never_finishes_holds_the_commit_point() -> None:
    tracker = OffsetTracker()
    for offset in range(5):
        tracker.start(offset)
    for offset in range(1, 5):
        tracker.done(offset)

    assert tracker.committable() == 0
    assert tracker.in_flight == 1


# --- dead-letter records --------------------------------------------------------------------------


def test_a_dead_letter_record_names_the_notifier_the_error_and_the_source() -> None:
    record = dead_letter_record(
        INCIDENT, FAILURE, failed_at=1_700_000_000.25, source=("falco-incidents", 2, 41)
    )

    assert record == {
        "notifier": "soar",
        "incident": INCIDENT,
        "last_error": "HTTP 503: busy",
        "reason": "max attempts (8) reached",
        "permanent": False,
        "attempts": 8,
        "failed_at": "2023-11-14T22:13:20.250Z",
        "redeliveries": 0,
        "source": {"topic": "falco-incidents", "partition": 2, "offset": 41},
    }


def test_a_failed_redelivery_adds_up_attempts_and_keeps_the_source() -> None:
    first = dead_letter_record(INCIDENT, FAILURE, failed_at=0.0, source=("t", 0, 5))
    again = dead_letter_record(
        INCIDENT, FAILURE, failed_at=60.0, previous=first | {"redeliveries": 2}
    )

    assert again["attempts"] == 16
    assert again["redeliveries"] == 3
    assert again["source"] == {"topic": "t", "partition": 0, "offset": 5}
    assert again["failed_at"] == "1970-01-01T00:01:00.000Z"


def test_a_dead_letter_message_is_keyed_by_incident_with_the_notifier_in_a_header() -> None:
    record = dead_letter_record(INCIDENT, FAILURE, failed_at=0.0)

    key, value, headers = dead_letter_message(record)

    assert key == b"a" * 32
    assert headers == [(NOTIFIER_HEADER, b"soar")]
    assert orjson.loads(value) == record


# --- configuration --------------------------------------------------------------------------------


def test_the_delivery_section_defaults_and_parses_durations() -> None:
    assert parse_notify_settings(None) == NotifySettings()
    settings = parse_notify_settings(
        {"max_in_flight": 4, "commit_interval": "250ms", "thread_retention": "2d"}
    )
    assert settings.max_in_flight == 4
    assert settings.commit_interval == 0.25
    assert settings.thread_retention == 2 * 86_400


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"max_in_flight": 0}, "delivery.max_in_flight: expected an integer >= 1"),
        ({"commit_interval": "soon"}, "delivery.commit_interval: "),
        ({"max_inflight": 3}, "delivery.max_inflight: unknown key"),
        (["max_in_flight"], "delivery: expected a mapping"),
    ],
)
def test_a_bad_delivery_section_names_the_key(section: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_notify_settings(section)


def test_the_worker_config_reads_notifiers_and_delivery_typed_with_secrets_resolved(
    tmp_path: Path,
) -> None:
    path = tmp_path / "worker.yaml"
    path.write_text(
        "app:\n  id: fc\nnotifiers:\n  - name: soar\n    type: webhook\n"
        "    webhook: {url: '${env:HOOK}'}\ndelivery:\n  max_in_flight: 4\n"
    )

    config = load_config(str(path), {"HOOK": "https://soar.example/h?token=t0ps3cret"})

    [spec] = config.notifiers
    assert (spec.name, spec.type) == ("soar", "webhook")
    assert spec.options.url.reveal() == "https://soar.example/h?token=t0ps3cret"
    assert "t0ps3cret" not in repr(config)
    assert config.delivery == NotifySettings(max_in_flight=4)
    assert load_config(None, {}).notifiers == ()
    [notifier] = load_notify_parts(config, registry=CollectorRegistry())[1]
    assert notifier.name == "soar"


def test_a_notifier_secret_that_cannot_be_resolved_is_a_located_config_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "worker.yaml"
    path.write_text("notifiers:\n  - name: soar\n    type: webhook\n"
                    "    webhook: {url: '${env:HOOK}'}\n")  # fmt: skip
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {})
    assert str(info.value) == (
        f"{path}:4:20: notifiers[0].webhook.url: secret environment variable HOOK is not set or "
        "empty"
    )


def test_notifier_errors_name_the_key_when_the_stage_is_built() -> None:
    config = WorkerConfig(notifiers=[{"name": "soar", "type": "webhook", "webhook": {}}])
    with pytest.raises(ConfigError, match=r"notifiers\[0\]\.webhook\.url: required"):
        load_notify_parts(config, registry=CollectorRegistry())


def test_a_missing_secret_variable_is_a_config_error_naming_the_key() -> None:
    entry = {"name": "soar", "type": "webhook", "webhook": {"url": "${env:NOPE_HOOK}"}}
    with pytest.raises(ConfigError, match=r"notifiers\[0\]\.webhook\.url: .*NOPE_HOOK"):
        load_notify_parts(WorkerConfig(notifiers=[entry]), registry=CollectorRegistry(), env={})


def test_the_thread_store_is_only_used_with_a_slack_bot() -> None:
    bot = {
        "name": "bot",
        "type": "slack",
        "slack": {"token": "xoxb-1", "channel": "#sec"},
    }
    registry = CollectorRegistry()
    _, _, none = load_notify_parts(WorkerConfig(notifiers=[WEBHOOK]), registry=registry)
    _, _, store = load_notify_parts(WorkerConfig(notifiers=[bot]), registry=registry)

    assert none is None
    assert store is not None
    assert store.topic == "falco-correlator-slack-threads"


# --- the worker -----------------------------------------------------------------------------------


def _worker_config(**changes: object) -> WorkerConfig:
    app = AppConfig(id="fc-unit", store=StoreKind.MEMORY, data_dir="/tmp/fc-unit")
    return WorkerConfig(app=app, **changes)  # type: ignore[arg-type]


def test_the_assembled_worker_installs_the_stage_with_the_workers_metrics_registry() -> None:
    metrics = WorkerMetrics.create()
    worker = assemble_worker(
        _worker_config(notifiers=[WEBHOOK]), load_rules([str(RULES)]), metrics=metrics
    )

    stage = worker.notify
    assert stage is not None
    assert stage.group_id == "fc-unit-notify"
    assert stage.metrics.registry is metrics.registry
    exposition = generate_latest(metrics.registry).decode()
    assert "falco_correlator_notifications_sent_total" in exposition
    assert "falco_correlator_notify_records_total" in exposition


def test_the_assembled_worker_without_notifiers_installs_no_stage() -> None:
    worker = assemble_worker(_worker_config(), load_rules([str(RULES)]))
    assert worker.notify is None


def test_the_assembled_worker_reports_a_bad_notifier_at_start() -> None:
    config = _worker_config(notifiers=[{"name": "x", "type": "pager"}])
    with pytest.raises(ConfigError, match=r"notifiers\[0\]\.type: unknown type 'pager'"):
        assemble_worker(config, load_rules([str(RULES)]))


def test_each_notifier_declares_whether_it_needs_the_thread_store() -> None:
    bot = {"name": "bot", "type": "slack", "slack": {"token": "xoxb-1", "channel": "#sec"}}
    hook = {"name": "hook", "type": "slack", "slack": {"webhook_url": "https://hooks.example/x"}}
    config = WorkerConfig(notifiers=[WEBHOOK, hook, bot])
    _, notifiers, store = load_notify_parts(config, registry=CollectorRegistry())

    assert {n.name: n.needs_thread_store for n in notifiers} == {
        "soar": False,
        "hook": False,
        "bot": True,
    }
    assert store is not None


class _Recorder(Dispatcher):
    """A dispatcher without notifiers that records what it was given (the stage's logic only)."""

    def __init__(self) -> None:
        super().__init__([])
        self.sent: list[tuple[str, str, int]] = []

    async def dispatch(self, incident: Any) -> list[Any]:
        self.sent.append((incident["id"], incident["status"], incident["count"]))
        return []


def test_a_record_notified_already_is_skipped_and_counted() -> None:
    """The correlate stage emits again, after a crash, incidents it may not have sent (its
    outbox): the same (id, status, count) is notified once; an update (another count) is not a
    copy."""
    registry = CollectorRegistry()
    dispatcher = _Recorder()
    stage = NotifyStage(
        WorkerConfig(),
        dispatcher,
        settings=parse_notify_settings(None),
        metrics=NotifierMetrics.shared(registry),
    )

    def record(offset: int, status: str, count: int) -> Any:
        value = orjson.dumps({"id": "a1", "status": status, "count": count})
        return SimpleNamespace(
            topic="incidents", partition=0, offset=offset, key=b"a1", value=value
        )

    async def run() -> None:
        for offset, (status, count) in enumerate(
            [("new", 1), ("update", 2), ("new", 1), ("update", 2), ("update", 3)]
        ):
            await stage._process(record(offset, status, count), None)

    asyncio.run(run())
    assert dispatcher.sent == [("a1", "new", 1), ("a1", "update", 2), ("a1", "update", 3)]
    exposition = generate_latest(registry).decode()
    assert "falco_correlator_notify_duplicates_total 2.0" in exposition
