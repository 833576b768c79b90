"""The pipeline for synchronous callers (`replay --enrich`): one private event loop.

Background work (a Harbor answer that outlived an incident's deadline, a report reload) only
advances while an incident is being enriched; that is enough for a batch run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from streams.enrich.metrics import EnrichmentMetrics
from streams.enrich.pipeline import EnrichmentPipeline
from streams.enrich.registry import load_enrichment
from streams.errors import ConfigError

__all__ = ["BlockingEnrichment", "read_enrichment_section"]


def read_enrichment_section(path: str) -> object:
    """The `enrichment:` value of a worker config file (None when absent)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data.get("enrichment")


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
        section = read_enrichment_section(path)
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
