"""The alerting rules and the Grafana dashboard, checked with the real promtool: the rules load
(`promtool check rules`), behave as their unit tests say (`promtool test rules`), every alert has
a test in which it fires, and every dashboard expression is valid PromQL. Whether a running worker
exports every metric they name: tests/integration/test_ops_metrics.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from .promql import (
    ALERTS,
    DASHBOARD,
    alert_expressions,
    dashboard_expressions,
    metric_names,
)
from .tools import REPO, require_tool

RULE_TESTS = REPO / "deploy" / "prometheus" / "tests" / "alerts.test.yaml"


def promtool(*args: str, cwd: Path = REPO) -> str:
    result = subprocess.run(
        [require_tool("promtool"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{output}"
    return output


def test_promtool_check_rules_accepts_the_alerts() -> None:
    assert "SUCCESS: 16 rules found" in promtool("check", "rules", str(ALERTS))


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    assert "SUCCESS" in promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)


def test_every_alert_has_a_unit_test_in_which_it_fires_and_one_in_which_it_does_not() -> None:
    tests: dict[str, Any] = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    fires, quiet = set(), set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fires == set(alert_expressions())
    assert quiet == set(alert_expressions())


def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    expressions = dashboard_expressions()
    assert len(expressions) >= 30
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:panel_{index}", "expr": expr}
                    for index, (_title, expr) in enumerate(expressions)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    assert f"SUCCESS: {len(expressions)} rules found" in promtool("check", "rules", str(path))


def test_a_broken_expression_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "a:b", "expr": "sum(("}]}]}),
        encoding="utf-8",
    )
    result = subprocess.run(
        [require_tool("promtool"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode != 0


def test_dashboard_covers_the_asked_views_and_uses_its_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == [
        "Health",
        "Throughput",
        "Lag and latency",
        "Incidents",
        "Input quality",
        "Notifiers",
        "Enrichment",
        "State",
    ]
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    names = set().union(*(metric_names(e) for _t, e in dashboard_expressions()))
    for wanted in (
        "fc_consumer_lag",
        "fc_processing_latency_seconds_bucket",
        "fc_incidents_total",
        "fc_events_late_total",
        "fc_events_invalid_total",
        "falco_correlator_notifications_dead_lettered_total",
        "falco_correlator_enrichment_errors_total",
        "fc_state_entries",
    ):
        assert wanted in names


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (topic) (rate(fc_events_total{job="x", instance=~"a|b"}[5m])) / '
        "clamp_min(sum(rate(fc_events_late_total[15m])), 1e-9) > 0.05 and on() up == 1"
    )
    assert metric_names(expr) == {"fc_events_total", "fc_events_late_total", "up"}
