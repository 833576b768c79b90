"""The stall watchdog on the real broker: correlation stuck behind a slow enrichment backend.

A Harbor that takes 15 s to answer, with an enrichment deadline of 25 s, holds the correlate
agent on one group of records: the correlate partitions keep receiving ticks (lag > 0) and
make no progress. With `app.stall_timeout: 3s`, /healthz must answer 503 naming the stalled
partitions, the log must say what the tasks wait on, and both must clear once Harbor answered.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from enrich.helpers import FakeHarbor, fixture_json
from test_enrichment_e2e import RULES, HarborThread, _event
from worker_harness import WorkerEnv, WorkerProcess

pytestmark = pytest.mark.integration


def _wait_health(worker: WorkerProcess, status: int, timeout: float) -> tuple[float, Any]:
    started = time.monotonic()
    last: tuple[int, bytes] = (0, b"")
    while time.monotonic() - started < timeout:
        if not worker.running():
            worker.fail(f"exited with {worker.returncode()}")
        last = worker.http_get("/healthz")
        if last[0] == status:
            return time.monotonic() - started, orjson.loads(last[1])
        time.sleep(0.25)
    worker.fail(f"/healthz not {status} within {timeout:.0f} s (last: {last!r})")
    raise AssertionError  # unreachable


def test_healthz_fails_while_correlation_is_stuck_behind_a_slow_enricher(
    worker_env: WorkerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    harbor = FakeHarbor(mode="slow", delay=15.0)
    harbor.artifacts[("payments", "checkout-api", "1.4.2")] = fixture_json(
        "harbor-vulnerabilities.json"
    )
    monkeypatch.setenv("HARBOR_ROBOT_NAME", harbor.username)
    monkeypatch.setenv("HARBOR_ROBOT_SECRET", harbor.password)
    rules = worker_env.rules_file("chain.yaml", RULES)
    with HarborThread(harbor) as served:
        enrichment = {
            "deadline": "25s",
            "enrichers": [
                {
                    "type": "harbor",
                    "timeout": "25s",
                    "harbor": {
                        "url": served.url,
                        "username": "${env:HARBOR_ROBOT_NAME}",
                        "password": "${env:HARBOR_ROBOT_SECRET}",
                        "hosts": ["harbor.example.com"],
                        "request_timeout": "25s",
                    },
                }
            ],
        }
        settings = worker_env.settings(
            [rules],
            lateness="1s",
            extra={"enrichment": enrichment},
            app_extra={"stall_timeout": "3s"},
        )
        worker = worker_env.worker(settings).start()
        assert worker.http_get("/healthz")[0] == 200
        producer = worker_env.producer(settings)
        now = time.time_ns()
        producer.send(_event("Terminal shell in container", now, "Notice"))
        producer.send(_event("Outbound Connection to C2 Servers", now + 10**9, "Critical"))

        # the incident waits for Harbor: the correlate partitions stall
        stalled_after, body = _wait_health(worker, 503, timeout=30)
        problems = " ".join(str(p) for p in body.get("problems", []))
        assert f"{settings.app_id}-correlate/" in problems, body
        assert worker.metric_sum("fc_stalled_partitions") >= 1
        worker.wait_log(r"stalled: .*-correlate/\d.*no progress for 3 s", timeout=5)
        assert "correlate agent: enrichment of incidents" in worker.log_text()

        # Harbor answers: the incident comes out, enriched, and the worker is healthy again
        reader = worker_env.reader(settings.topics.incidents)
        reader.wait_count(1, timeout=30)
        healthy_after, _ = _wait_health(worker, 200, timeout=30)
        worker.wait_log(r"no partition is stalled any more", timeout=5)
    incident = reader.values()[0]
    assert incident["enrichment"]["harbor"]["status"] == "scanned", incident["enrichment"]
    print(f"/healthz 503 after {stalled_after:.1f} s, 200 again {healthy_after:.1f} s later")
