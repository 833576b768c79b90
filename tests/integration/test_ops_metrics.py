"""Every metric that the Prometheus alerts (deploy/prometheus/alerts.yaml) and the Grafana
dashboard (deploy/grafana/falco-correlator.json) name is exported by a real running worker.

The worker runs on the local broker with a notifier and an enricher configured, so that the
notify and enrichment metrics are registered too; its /metrics is scraped after it is ready and
has processed events. Names from Prometheus itself and kube-state-metrics are listed in
EXTERNAL_METRICS.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from deployment.promql import (
    EXTERNAL_METRICS,
    alert_expressions,
    dashboard_expressions,
    exported_names,
    metric_names,
)
from worker_harness import falco_event

pytestmark = pytest.mark.integration

RULES = Path(__file__).resolve().parents[2] / "rules"


def referenced_names() -> dict[str, set[str]]:
    """Metric name -> where it is used."""
    used: dict[str, set[str]] = {}
    for alert, expr in alert_expressions().items():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(f"alert {alert}")
    for title, expr in dashboard_expressions():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(f"panel {title!r}")
    return used


def test_every_metric_named_by_the_alerts_and_the_dashboard_is_exported(worker_env: Any) -> None:
    extra = {
        # never called: no incident reaches it in this test, but its metrics are registered
        "notifiers": [
            {"name": "hook", "type": "webhook", "webhook": {"url": "http://127.0.0.1:9/hook"}}
        ],
        "enrichment": [{"type": "risk"}],
    }
    settings = worker_env.settings([RULES], extra=extra)
    worker = worker_env.worker(settings).start()
    producer = worker_env.producer(settings)
    now = time.time_ns()
    producer.send_many(
        falco_event("Terminal shell in container", now - i * 1_000_000) for i in range(20)
    )
    producer.send_raw(b"not json")  # an invalid event, dead-lettered
    worker.wait_metric("fc_events_total", lambda v: v >= 20, timeout=60)

    status, body = worker.http_get("/metrics")
    assert status == 200
    exported = exported_names(body.decode())
    missing = {
        name: sorted(where)
        for name, where in referenced_names().items()
        if name not in exported and name not in EXTERNAL_METRICS
    }
    assert missing == {}, (
        "named by the alerts or the dashboard but not exported by the worker: "
        + "; ".join(f"{name} ({', '.join(where)})" for name, where in sorted(missing.items()))
    )
