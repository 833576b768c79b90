"""Prometheus metrics of the worker (served on /metrics)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["WorkerMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60)


@dataclass
class WorkerMetrics:
    registry: CollectorRegistry
    events: Counter
    invalid: Counter
    late: Counter
    duplicates: Counter
    records: Counter
    matches: Counter
    incidents: Counter
    state_entries: Gauge
    held_events: Gauge
    watermark_lag: Gauge
    latency: Histogram
    template_errors: Counter
    evicted: Counter
    reload_success: Gauge
    reloads: Counter
    ruleset: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> WorkerMetrics:
        reg = registry or CollectorRegistry()
        return cls(
            registry=reg,
            events=Counter(
                "fc_events", "Falco messages consumed", ["topic", "partition"], registry=reg
            ),
            invalid=Counter(
                "fc_events_invalid",
                "Messages that are not Falco events (dead-lettered)",
                registry=reg,
            ),
            late=Counter(
                "fc_events_late",
                "Events older than the watermark, not correlated",
                ["stage"],
                registry=reg,
            ),
            duplicates=Counter("fc_records_duplicate", "Redelivered records dropped", registry=reg),
            records=Counter(
                "fc_correlate_records",
                "Records on the correlate topic",
                ["partition"],
                registry=reg,
            ),
            matches=Counter("fc_matches", "Correlation matches", ["correlation"], registry=reg),
            incidents=Counter(
                "fc_incidents", "Incidents emitted", ["correlation", "status"], registry=reg
            ),
            state_entries=Gauge(
                "fc_state_entries",
                "State entries per correlate partition",
                ["partition"],
                registry=reg,
            ),
            held_events=Gauge(
                "fc_held_events",
                "Events waiting for the watermark",
                ["partition"],
                registry=reg,
            ),
            watermark_lag=Gauge(
                "fc_watermark_lag_seconds",
                "Wall clock minus the partition's watermark",
                ["partition"],
                registry=reg,
            ),
            latency=Histogram(
                "fc_processing_latency_seconds",
                "From the Falco message's produce time to its correlation",
                buckets=_LATENCY_BUCKETS,
                registry=reg,
            ),
            template_errors=Counter(
                "fc_template_errors", "Output templates that failed and fell back", registry=reg
            ),
            evicted=Counter("fc_state_evicted", "Events evicted by the per-key cap", registry=reg),
            reload_success=Gauge(
                "fc_rules_reload_success", "1 if the last rules (re)load succeeded", registry=reg
            ),
            reloads=Counter("fc_rules_reloads", "Rules reloads", ["result"], registry=reg),
            ruleset=Gauge("fc_ruleset_info", "The loaded ruleset", ["digest"], registry=reg),
        )
