"""Prometheus metrics per notifier, in a registry the caller chooses (tests use their own)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from streams._metrics import PerRegistry

__all__ = ["NotifierMetrics"]

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, float("inf"))


class NotifierMetrics(PerRegistry):
    """Counters and a latency histogram labelled by notifier name.

    - `sent`: incidents delivered; `failed`: deliveries given up (a `DeliveryFailure` was returned);
    - `skipped`: records the notifier chose not to send (its own filters, already posted);
    - `retried`: retries scheduled after a failed attempt;
    - `dead_lettered`: failures the caller has written to the dead-letter topic (it calls
      `record_dead_lettered` after the write succeeded, so this counts what is really parked);
    - `latency`: seconds from the first attempt to the outcome, labelled `delivered`/`failed`.

    A registry holds the names once: use `shared(registry)` to get its one instance.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        reg = self.registry
        self.sent = Counter(
            "falco_correlator_notifications_sent",
            "Incidents delivered by a notifier",
            ["notifier"],
            registry=reg,
        )
        self.failed = Counter(
            "falco_correlator_notifications_failed",
            "Deliveries a notifier gave up (returned a DeliveryFailure)",
            ["notifier"],
            registry=reg,
        )
        self.skipped = Counter(
            "falco_correlator_notifications_skipped",
            "Incidents a notifier chose not to send (its own filters, or already posted)",
            ["notifier"],
            registry=reg,
        )
        self.retried = Counter(
            "falco_correlator_notifications_retried",
            "Retries scheduled after a failed delivery attempt",
            ["notifier"],
            registry=reg,
        )
        self.dead_lettered = Counter(
            "falco_correlator_notifications_dead_lettered",
            "Failed deliveries written to the dead-letter topic",
            ["notifier"],
            registry=reg,
        )
        self.latency = Histogram(
            "falco_correlator_notification_latency_seconds",
            "Seconds from the first delivery attempt to delivery or give-up",
            ["notifier", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )

    def record_dead_lettered(self, notifier: str) -> None:
        self.dead_lettered.labels(notifier=notifier).inc()

    def value(self, metric: str, notifier: str) -> float:
        """Current value of counter `metric` (`sent`, `failed`, ...) for one notifier."""
        sample = self.registry.get_sample_value(
            f"falco_correlator_notifications_{metric}_total", {"notifier": notifier}
        )
        return 0.0 if sample is None else sample
