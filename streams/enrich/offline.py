"""The pipeline for synchronous callers (`replay --enrich`): one private event loop.

Background work (a Harbor answer that outlived an incident's deadline, a report reload) only
advances while an incident is being enriched; that is enough for a batch run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from streams._config_fields import read_config_file
from streams.enrich.metrics import EnrichmentMetrics
from streams.enrich.pipeline import EnrichmentPipeline
from streams.enrich.registry import EnrichmentConfig, load_enrichment, parse_enrichment
from streams.errors import ConfigError

__all__ = ["BlockingEnrichment", "read_enrichment_section"]


def read_enrichment_section(
    path: str, env: Mapping[str, str] | None = None
) -> EnrichmentConfig | None:
    """The `enrichment:` section of a worker config file, typed (an EnrichmentConfig), or None
    when absent. Read like the worker reads it: YAML problems and section errors are located
    ConfigErrors (`worker.yaml:12:9: enrichment[0].harbor.url: required`)."""
    return read_config_file(path).read_section(
        "enrichment", lambda section: parse_enrichment(section, env=env)
    )


class BlockingEnrichment:
    """`enrich(incident)` runs the pipeline to completion (bounded by its deadline)."""

    def __init__(self, pipeline: EnrichmentPipeline) -> None:
        self.pipeline = pipeline
        self._runner = asyncio.Runner()

    @classmethod
    def from_config_file(
        cls,
        path: str | None,
        env: Mapping[str, str] | None = None,
        metrics: EnrichmentMetrics | None = None,
    ) -> BlockingEnrichment:
        """From the `enrichment:` section of the worker config at `path`; ConfigError names
        the problem (`--enrich` without a config, or an enricher's key)."""
        if path is None:
            raise ConfigError("--enrich needs --config FILE with an `enrichment:` section")
        section = read_enrichment_section(path, env)
        if section is None:
            raise ConfigError(f"{path}: no `enrichment:` section")
        return cls(load_enrichment(section, env=env, metrics=metrics))

    def enrich(self, incident: dict[str, Any]) -> dict[str, Any]:
        return self._runner.run(self.pipeline.enrich(incident))

    def close(self) -> None:
        try:
            self._runner.run(self.pipeline.close())
        finally:
            self._runner.close()

    def __enter__(self) -> BlockingEnrichment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
