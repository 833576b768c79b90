"""The metric names a PromQL expression reads, and the names a worker's /metrics exposes.

Good enough for the project's own expressions (alerts and dashboard): strings, label matchers,
ranges and grouping clauses are removed, then every identifier that is not a function call, a
keyword or part of a number is a metric name.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "EXTERNAL_METRICS",
    "alert_expressions",
    "dashboard_expressions",
    "exported_names",
    "metric_names",
]

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "falco-correlator.json"
# Series that Prometheus itself or kube-state-metrics provide, not the worker.
EXTERNAL_METRICS = frozenset({"up", "kube_pod_status_ready"})

_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
        "Inf",
        "NaN",
    }
)
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![0-9.a-zA-Z_:$])[a-zA-Z_:][a-zA-Z0-9_:]*")
# Grafana's variables, as Prometheus would receive them.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$instance": ".*"}


def metric_names(expr: str) -> set[str]:
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = _GROUPING.sub("", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group(0)
        if name in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(name)
    return names


def alert_expressions() -> dict[str, str]:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return {rule["alert"]: rule["expr"] for group in data["groups"] for rule in group["rules"]}


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, expression with Grafana's variables substituted) for every target."""
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            found.append((panel["title"], expr))
    return found


def exported_names(exposition: str) -> set[str]:
    """Sample names a Prometheus text exposition declares (`# TYPE` lines), with the suffixes
    of each type: counter `x` is `x_total`; histogram `x` is `x_bucket`, `x_sum`, `x_count`."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, name, kind = line.split(maxsplit=3)
        if kind == "counter":  # prometheus-client writes `# TYPE x_total counter`
            names.add(name if name.endswith("_total") else f"{name}_total")
        elif kind == "histogram":
            names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
        elif kind == "summary":
            names.update({name, f"{name}_sum", f"{name}_count"})
        else:
            names.add(name)
    return names
