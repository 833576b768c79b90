"""The incident record has one typed shape, checked once where the notify stage reads it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from streams.core.incident_record import incident_problem, read_incident
from streams.notifiers import Delivered, Dispatcher, NotifierMetrics, Route
from streams.runtime.config import WorkerConfig
from streams.runtime.notify import NotifyStage
from streams.runtime.notify_settings import NotifySettings

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "events", ["deploy/demo/attack.jsonl", "rules/tests/fixtures/benign-noise.jsonl"]
)
def test_every_incident_the_engine_makes_has_the_shape(events: str) -> None:
    """What replay prints (the worker's records, byte for byte) passes the notify stage's check."""
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli.main", "replay", "--flush", "--rules",
         str(REPO / "rules"), str(REPO / events)],
        capture_output=True, check=True, timeout=120,
    )  # fmt: skip
    incidents = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert incidents
    for incident in incidents:
        assert incident_problem(incident) is None, incident["id"]
        assert read_incident(incident) is incident  # the same dict: nothing is copied


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ([], "not a JSON object"),
        ({"status": "new"}, "id is not a string"),
        ({"id": 7}, "id is not a string"),
        ({"id": "a", "severity": 3}, "severity is not a string"),
        ({"id": "a", "context": []}, "context is not an object"),
        ({"id": "a", "count": True}, "count is not an integer"),
        ({"id": "a", "tags": ["x", 1]}, "tags is not a list of strings"),
        ({"id": "a", "events": {}}, "events is not a list"),
        ({"id": "a", "events": ["x"]}, "events[0]: not an object"),
        ({"id": "a", "events": [{"output_fields": "x"}]}, "events[0]: output_fields is not an"),
    ],
)
def test_a_value_without_the_shape_is_refused_with_its_reason(value: object, problem: str) -> None:
    assert read_incident(value) is None
    reason = incident_problem(value)
    assert reason is not None
    assert reason.startswith(problem)


def test_only_the_id_is_required() -> None:
    """Records of an older worker, or hand-made ones, may lack fields: readers use defaults."""
    assert read_incident({"id": "a"}) == {"id": "a"}


class _Recorder:
    name = "recorder"
    route = Route()
    needs_thread_store = False

    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def send(self, incident: Any) -> Delivered:
        self.sent.append(incident)
        return Delivered("recorder", incident["id"], 1, 0.0)

    async def close(self) -> None:
        pass


def test_the_notify_stage_checks_each_record_once_and_counts_the_malformed() -> None:
    recorder = _Recorder()
    registry = CollectorRegistry()
    stage = NotifyStage(
        WorkerConfig(),
        Dispatcher([recorder]),
        settings=NotifySettings(),
        metrics=NotifierMetrics(registry),
    )
    records = [
        orjson.dumps({"id": "good", "status": "new", "tags": ["a"]}),
        orjson.dumps({"id": "bad", "tags": "a"}),
        b"not json",
    ]

    async def main() -> None:
        for offset, value in enumerate(records):
            record = SimpleNamespace(topic="t", partition=0, offset=offset, value=value)
            await stage._process(record, None)

    asyncio.run(main())
    assert [i["id"] for i in recorder.sent] == ["good"]
    assert registry.get_sample_value("falco_correlator_notify_invalid_total") == 2.0
