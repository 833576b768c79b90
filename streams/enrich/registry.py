"""The `enrichment:` section of the worker config, and the enricher types it can name.

```yaml
enrichment:                       # a list of enrichers, or {deadline: 3s, enrichers: [...]}
  - type: harbor                  # registry key below
    name: harbor                  # key under incident.enrichment (default: the type)
    timeout: 2s                   # this enricher's budget (capped by the deadline)
    harbor: {url: https://harbor.example.com, username: "${env:HARBOR_ROBOT_NAME}", ...}
  - type: risk
```
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from streams._config_fields import Fields, named_items
from streams.enrich.harbor import HarborEnricher
from streams.enrich.metrics import EnrichmentMetrics
from streams.enrich.ownership import OwnershipEnricher
from streams.enrich.pipeline import (
    DEFAULT_DEADLINE,
    Enricher,
    EnricherContext,
    EnricherSlot,
    EnricherType,
    EnrichmentPipeline,
)
from streams.enrich.posture import PostureEnricher
from streams.enrich.risk import RiskEnricher
from streams.enrich.trivy import TrivyReportsEnricher

__all__ = [
    "ENRICHER_TYPES",
    "EnricherSpec",
    "EnrichmentConfig",
    "load_enrichment",
    "parse_enrichment",
]

ENRICHER_TYPES: dict[str, type[EnricherType]] = {
    "harbor": HarborEnricher,
    "trivy": TrivyReportsEnricher,
    "posture": PostureEnricher,
    "ownership": OwnershipEnricher,
    "risk": RiskEnricher,
}


OptionsT = TypeVar("OptionsT")


@dataclass(frozen=True, slots=True)
class EnricherSpec(Generic[OptionsT]):
    """One parsed entry of the `enrichment:` list; `options` is the type's own typed config
    (`EnricherSpec[RiskModel]`), or the unread section of a type without `parse_options`."""

    type: str
    name: str
    timeout: float
    options: OptionsT


@dataclass(frozen=True, slots=True)
class EnrichmentConfig:
    """The `enrichment:` section, typed: what `load_enrichment` builds a pipeline from."""

    deadline: float = DEFAULT_DEADLINE
    enrichers: tuple[EnricherSpec[Any], ...] = ()

    @property
    def kinds(self) -> dict[str, str]:
        """Enricher name -> type: what `incident.enrichment[name]` was made by."""
        return {spec.name: spec.type for spec in self.enrichers}


def parse_enrichment(
    section: object,
    *,
    env: Mapping[str, str] | None = None,
    types: Mapping[str, type[EnricherType]] | None = None,
    path: str = "enrichment",
) -> EnrichmentConfig:
    """The `enrichment:` config value (a list of enrichers, or {deadline, enrichers}), typed,
    secrets resolved from `env`, without I/O. The first problem raises ConfigError naming its
    key, e.g. `enrichment[0].harbor.url: required`."""
    known = ENRICHER_TYPES if types is None else types
    deadline = DEFAULT_DEADLINE
    items: object = section
    list_path = path
    if isinstance(section, Mapping):
        top = Fields(section, path, env)
        deadline = top.seconds("deadline", DEFAULT_DEADLINE)
        items = top.raw("enrichers", [])
        list_path = top.key("enrichers")
        top.finish()
    specs: list[EnricherSpec[Any]] = []
    for item in named_items(
        items, list_path, known, what="enricher", env=env, name_defaults_to_type=True
    ):
        options = item.fields
        timeout = options.seconds("timeout", min(item.kind.default_timeout, deadline))
        parse = getattr(item.kind, "parse_options", None)
        section_options = options.section(item.type)
        parsed = _Unparsed(section_options) if parse is None else parse(section_options)
        options.finish()
        specs.append(EnricherSpec(item.type, item.name, timeout, parsed))
    return EnrichmentConfig(deadline, tuple(specs))


def load_enrichment(
    section: object,
    *,
    env: Mapping[str, str] | None = None,
    metrics: EnrichmentMetrics | None = None,
    context: EnricherContext | None = None,
    types: Mapping[str, type[EnricherType]] | None = None,
    path: str = "enrichment",
) -> EnrichmentPipeline:
    """A pipeline from the `enrichment:` config value, or from an EnrichmentConfig already
    parsed (the worker config holds it typed); None gives an empty pipeline, which only makes
    sure `enrichment` is an object. ConfigError names the key of the first problem."""
    known = ENRICHER_TYPES if types is None else types
    metrics = metrics or (context.metrics if context else EnrichmentMetrics.shared())
    ctx = context or EnricherContext(metrics=metrics, env=env)
    config = (
        section
        if isinstance(section, EnrichmentConfig)
        else parse_enrichment(section, env=env, types=known, path=path)
    )
    slots = [
        EnricherSlot(_create(known[spec.type], spec, ctx), spec.timeout, known[spec.type].late)
        for spec in config.enrichers
    ]
    return EnrichmentPipeline(slots, deadline=config.deadline, metrics=metrics)


@dataclass(frozen=True, slots=True)
class _Unparsed:
    """The section of a type without `parse_options`: read by its `from_options` at start."""

    options: Fields = field(repr=False)


def _create(
    kind: type[EnricherType], spec: EnricherSpec[Any], context: EnricherContext
) -> Enricher:
    if isinstance(spec.options, _Unparsed):
        return kind.from_options(spec.name, spec.options.options, context)
    create = kind.create  # type: ignore[attr-defined]  # the built-in types have it
    enricher: Enricher = create(spec.name, spec.options, context)
    return enricher
