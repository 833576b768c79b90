"""Prometheus metrics of the worker (served on /metrics).

The metrics of the correlate stage and of the rules carry a `shadow` label: "false" for the live
rules, "true" for the shadow rules (`app.shadow_rules`), so a shadow ruleset is observed with the
same series as the live one. Dashboards and alerts about live results select `shadow!="true"`
(which also matches series scraped from workers older than the label)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from streams.core.rules import Ruleset

__all__ = ["LIVE", "SHADOW", "WorkerMetrics", "set_ruleset_metric"]

LIVE = "false"  # the `shadow` label of the live rules' series
SHADOW = "true"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60)
_BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000)
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)


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
    future: Counter
    records_invalid: Counter
    batch_size: Histogram
    stage_seconds: Histogram
    consumer_lag: Gauge
    stalled: Gauge
    unowned: Gauge
    backpressure: Counter
    refused: Counter
    keys_evicted: Counter
    shadow_errors: Counter
    chain_records: Counter
    derived_events: Counter
    level_lag: Gauge
    #: what of the totals the engines and producers count themselves was added to the counters
    counted: dict[str, int] = field(default_factory=dict)

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
                ["stage", "shadow"],
                registry=reg,
            ),
            duplicates=Counter(
                "fc_records_duplicate", "Redelivered records dropped", ["shadow"], registry=reg
            ),
            records=Counter(
                "fc_correlate_records",
                "Events correlated (from the correlate topic's records)",
                ["partition", "shadow"],
                registry=reg,
            ),
            matches=Counter(
                "fc_matches", "Correlation matches", ["correlation", "shadow"], registry=reg
            ),
            incidents=Counter(
                "fc_incidents",
                "Incidents emitted",
                ["correlation", "status", "severity", "shadow"],
                registry=reg,
            ),
            state_entries=Gauge(
                "fc_state_entries",
                "State entries per correlate partition",
                ["partition", "shadow"],
                registry=reg,
            ),
            held_events=Gauge(
                "fc_held_events",
                "Events waiting for the watermark",
                ["partition", "shadow"],
                registry=reg,
            ),
            watermark_lag=Gauge(
                "fc_watermark_lag_seconds",
                "Wall clock minus the partition's watermark",
                ["partition", "shadow"],
                registry=reg,
            ),
            latency=Histogram(
                "fc_processing_latency_seconds",
                "From the Falco message's produce time to its correlation",
                buckets=_LATENCY_BUCKETS,
                registry=reg,
            ),
            template_errors=Counter(
                "fc_template_errors",
                "Output templates that failed and fell back",
                ["shadow"],
                registry=reg,
            ),
            evicted=Counter(
                "fc_state_evicted", "Events evicted by the per-key cap", ["shadow"], registry=reg
            ),
            reload_success=Gauge(
                "fc_rules_reload_success",
                "1 if the last rules (re)load succeeded",
                ["shadow"],
                registry=reg,
            ),
            reloads=Counter(
                "fc_rules_reloads", "Rules reloads", ["result", "shadow"], registry=reg
            ),
            ruleset=Gauge(
                "fc_ruleset_info", "The loaded ruleset", ["digest", "shadow"], registry=reg
            ),
            future=Counter(
                "fc_events_future",
                "Events dated more than app.max_future_skew ahead (dead-lettered), per hostname",
                ["hostname"],
                registry=reg,
            ),
            records_invalid=Counter(
                "fc_records_invalid",
                "Correlate records that could not be read (corrupt or from a newer version)",
                registry=reg,
            ),
            batch_size=Histogram(
                "fc_batch_size",
                "Messages per batch (ingest) and events per record (correlate)",
                ["stage"],
                buckets=_BATCH_BUCKETS,
                registry=reg,
            ),
            stage_seconds=Histogram(
                "fc_stage_seconds",
                "Time to process one batch (ingest: read to acknowledged) or record (correlate)",
                ["stage"],
                buckets=_STAGE_BUCKETS,
                registry=reg,
            ),
            consumer_lag=Gauge(
                "fc_consumer_lag",
                "Messages between the worker's position and the log end, per partition it owns",
                ["topic", "partition"],
                registry=reg,
            ),
            stalled=Gauge(
                "fc_stalled_partitions",
                "Partitions with lag > 0 and no progress for app.stall_timeout",
                registry=reg,
            ),
            unowned=Gauge(
                "fc_unowned_partitions",
                "Partitions of the consumed topics that no member of the group owns",
                registry=reg,
            ),
            keys_evicted=Counter(
                "fc_state_keys_evicted",
                "Keys dropped (least recently used first) by the global app.max_state_entries",
                ["shadow"],
                registry=reg,
            ),
            shadow_errors=Counter(
                "fc_shadow_errors",
                "Events (ingest) or records (correlate) the shadow rules failed on; the live "
                "rules are not affected",
                ["stage"],
                registry=reg,
            ),
            chain_records=Counter(
                "fc_chain_records",
                "Chain records (derived events and level progress) between correlate partitions",
                ["direction"],
                registry=reg,
            ),
            derived_events=Counter(
                "fc_derived_events",
                "Derived events taken from other partitions' chain records",
                ["direction"],
                registry=reg,
            ),
            level_lag=Gauge(
                "fc_chain_level_lag_seconds",
                "How far a chain level's watermark is behind the partition's watermark (a "
                "correlation's level is its depth among references; it waits for its upstreams "
                "on every partition)",
                ["partition", "level"],
                registry=reg,
            ),
            refused=Counter(
                "fc_outputs_refused",
                "State entries or incidents the Kafka client refused (e.g. above 8 MiB), logged",
                registry=reg,
            ),
            backpressure=Counter(
                "fc_ingest_backpressure",
                "Times ingest paused because correlate partitions were behind",
                registry=reg,
            ),
        )

    def register_series(self, *, shadow: bool) -> None:
        """Create the series that exist without any event (counters at 0): the live ones at
        start, the shadow ones when shadow rules are configured."""
        label = SHADOW if shadow else LIVE
        for counter in (self.duplicates, self.template_errors, self.evicted, self.keys_evicted):
            counter.labels(label)
        self.late.labels("correlate", label)
        if shadow:
            for stage in ("ingest", "correlate"):
                self.shadow_errors.labels(stage)

    def raise_to(self, counter: Counter, total: int, name: str) -> None:
        """Counters only go up: add what a stage counted (its running `total`, under `name`)
        since the last look."""
        previous = self.counted.get(name, 0)
        if total > previous:
            counter.inc(total - previous)
        self.counted[name] = max(total, previous)


def set_ruleset_metric(metrics: WorkerMetrics, ruleset: Ruleset, *, shadow: bool = False) -> None:
    """`ruleset{digest,shadow}` names the rules in use (one series per label) after a start or
    a reload; `reload_success` says the last reload worked."""
    label = SHADOW if shadow else LIVE
    for digest, shadow_label in list(_ruleset_series(metrics)):
        if shadow_label == label:
            metrics.ruleset.remove(digest, shadow_label)
    metrics.ruleset.labels(ruleset.digest, label).set(1)
    metrics.reload_success.labels(label).set(1)


def _ruleset_series(metrics: WorkerMetrics) -> list[tuple[str, str]]:
    return [
        (sample.labels["digest"], sample.labels["shadow"])
        for family in metrics.ruleset.collect()
        for sample in family.samples
    ]
