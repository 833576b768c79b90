"""Prometheus metrics per enricher, in a registry the caller chooses (tests use their own)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streams._metrics import PerRegistry

__all__ = ["CIRCUIT_STATES", "EnrichmentMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))

# Gauge values of `falco_correlator_enrichment_circuit_state`.
CIRCUIT_STATES: dict[str, int] = {"closed": 0, "half-open": 1, "open": 2}


class EnrichmentMetrics(PerRegistry):
    """Metrics labelled by enricher name.

    - `latency{enricher,outcome}`: seconds per enrichment call; outcome `ok`, `error`, `timeout`;
    - `errors{enricher,reason}`: enrichments that ended with `enrichment.<name>.error`
      (reason `error`, `timeout`, `deadline`);
    - `cache_hits` / `cache_misses{enricher}`: lookups answered from / not in an enricher's cache;
    - `circuit_state{enricher}`: 0 closed, 1 half-open, 2 open (enrichers with a breaker);
    - `source_errors{enricher}`: failed (re)loads of report files/URLs (old data stays in use).

    A registry holds the names once: use `shared(registry)` to get its one instance.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        reg = self.registry
        self.latency = Histogram(
            "falco_correlator_enrichment_latency_seconds",
            "Seconds an enricher took for one incident",
            ["enricher", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self.errors = Counter(
            "falco_correlator_enrichment_errors",
            "Enrichments that ended with an error entry in the incident",
            ["enricher", "reason"],
            registry=reg,
        )
        self.cache_hits = Counter(
            "falco_correlator_enrichment_cache_hits",
            "Lookups answered from an enricher's cache",
            ["enricher"],
            registry=reg,
        )
        self.cache_misses = Counter(
            "falco_correlator_enrichment_cache_misses",
            "Lookups not in an enricher's cache",
            ["enricher"],
            registry=reg,
        )
        self.circuit_state = Gauge(
            "falco_correlator_enrichment_circuit_state",
            "Circuit breaker state of an enricher: 0 closed, 1 half-open, 2 open",
            ["enricher"],
            registry=reg,
        )
        self.source_errors = Counter(
            "falco_correlator_enrichment_source_errors",
            "Failed loads of an enricher's report files or URLs",
            ["enricher"],
            registry=reg,
        )

    def set_circuit(self, enricher: str, state: str) -> None:
        self.circuit_state.labels(enricher=enricher).set(CIRCUIT_STATES[state])

    def value(self, metric: str, labels: dict[str, str]) -> float:
        """Current value of a sample (`errors_total`, `cache_hits_total`, `circuit_state`)."""
        sample = self.registry.get_sample_value(f"falco_correlator_enrichment_{metric}", labels)
        return 0.0 if sample is None else sample
