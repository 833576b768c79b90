"""`replay --enrich` support: the pipeline from a config file, run without an event loop."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from streams.enrich import BlockingEnrichment, EnrichmentMetrics
from streams.errors import ConfigError

from .helpers import FIXTURES, make_incident

CONFIG = f"""
kafka: {{bootstrap_servers: "127.0.0.1:9092"}}
enrichment:
  deadline: 2s
  enrichers:
    - type: trivy
      trivy: {{directory: "{FIXTURES / "trivy"}"}}
    - type: ownership
      ownership: {{tables: ["{FIXTURES / "owners.yaml"}"]}}
    - type: risk
"""


def test_enriches_incidents_synchronously_from_the_worker_config(tmp_path: Path) -> None:
    path = tmp_path / "worker.yaml"
    path.write_text(CONFIG)
    metrics = EnrichmentMetrics(CollectorRegistry())
    with BlockingEnrichment.from_config_file(str(path), {}, metrics) as enrichment:
        first = enrichment.enrich(
            make_incident(container_image_repository="alpine", container_image_tag="3.10")
        )
        second = enrichment.enrich(make_incident())
    assert first["enrichment"]["trivy"]["critical_fixable"] == 2
    assert first["enrichment"]["ownership"]["team"] == "Checkout"
    assert first["enrichment"]["risk"]["score"] > second["enrichment"]["risk"]["score"]
    assert second["enrichment"]["trivy"]["status"] == "unknown image"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "--enrich needs --config FILE"),
        ("kafka: {}\n", "no `enrichment:` section"),
        ("- a\n", "the configuration must be a mapping of sections"),
        ("enrichment: [{type: nope}]\n", "enrichment[0].type: unknown type 'nope'"),
    ],
)
def test_config_problems_are_reported(tmp_path: Path, content: str | None, message: str) -> None:
    path = None
    if content is not None:
        file = tmp_path / "worker.yaml"
        file.write_text(content)
        path = str(file)
    with pytest.raises(ConfigError) as info:
        BlockingEnrichment.from_config_file(path, {}, EnrichmentMetrics(CollectorRegistry()))
    assert message in str(info.value)
