"""Enrichment: image vulnerabilities (Harbor, Trivy reports), cluster posture (kube-bench,
kube-hunter), ownership and risk, added to each incident before it is emitted.

Adding an enricher type: its module (a class with `default_timeout`, `late`, `from_options`,
`enrich` and optionally `close`), one line in `ENRICHER_TYPES`, and its tests.
See docs/enrichment.md.
"""

from __future__ import annotations

from streams.enrich.harbor import HarborEnricher
from streams.enrich.metrics import EnrichmentMetrics
from streams.enrich.offline import BlockingEnrichment
from streams.enrich.ownership import OwnershipEnricher
from streams.enrich.pipeline import (
    Enricher,
    EnricherContext,
    EnricherSlot,
    EnrichmentError,
    EnrichmentPipeline,
)
from streams.enrich.posture import PostureEnricher
from streams.enrich.registry import (
    ENRICHER_TYPES,
    EnricherSpec,
    EnrichmentConfig,
    load_enrichment,
    parse_enrichment,
)
from streams.enrich.risk import RiskEnricher, RiskModel, score_incident
from streams.enrich.trivy import TrivyReportsEnricher

__all__ = [
    "ENRICHER_TYPES",
    "BlockingEnrichment",
    "Enricher",
    "EnricherContext",
    "EnricherSlot",
    "EnricherSpec",
    "EnrichmentConfig",
    "EnrichmentError",
    "EnrichmentMetrics",
    "EnrichmentPipeline",
    "HarborEnricher",
    "OwnershipEnricher",
    "PostureEnricher",
    "RiskEnricher",
    "RiskModel",
    "TrivyReportsEnricher",
    "load_enrichment",
    "parse_enrichment",
    "score_incident",
]
