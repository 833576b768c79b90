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

import re
from collections.abc import Mapping

from streams.enrich._options import Options
from streams.enrich.harbor import HarborEnricher
from streams.enrich.metrics import EnrichmentMetrics
from streams.enrich.ownership import OwnershipEnricher
from streams.enrich.pipeline import (
    DEFAULT_DEADLINE,
    EnricherContext,
    EnricherSlot,
    EnricherType,
    EnrichmentPipeline,
)
from streams.enrich.posture import PostureEnricher
from streams.enrich.risk import RiskEnricher
from streams.enrich.trivy import TrivyReportsEnricher
from streams.errors import ConfigError

__all__ = ["ENRICHER_TYPES", "load_enrichment"]

ENRICHER_TYPES: dict[str, type[EnricherType]] = {
    "harbor": HarborEnricher,
    "trivy": TrivyReportsEnricher,
    "posture": PostureEnricher,
    "ownership": OwnershipEnricher,
    "risk": RiskEnricher,
}

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def load_enrichment(
    section: object,
    *,
    env: Mapping[str, str] | None = None,
    metrics: EnrichmentMetrics | None = None,
    context: EnricherContext | None = None,
    types: Mapping[str, type[EnricherType]] | None = None,
    path: str = "enrichment",
) -> EnrichmentPipeline:
    """A pipeline from the `enrichment:` config value (None: an empty pipeline, which only
    makes sure `enrichment` is an object). The first problem raises ConfigError naming its
    key, e.g. `enrichment[0].harbor.url: required`. Secrets are resolved here from `env`."""
    known = ENRICHER_TYPES if types is None else types
    metrics = metrics or (context.metrics if context else EnrichmentMetrics.shared())
    ctx = context or EnricherContext(metrics=metrics, env=env)
    deadline = DEFAULT_DEADLINE
    items: object = section
    list_path = path
    if isinstance(section, Mapping):
        top = Options(section, path, env)
        deadline = top.seconds("deadline", DEFAULT_DEADLINE)
        items = top.raw("enrichers", [])
        list_path = top.key("enrichers")
        top.finish()
    if items is None:
        items = []
    if not isinstance(items, list):
        raise ConfigError(f"{list_path}: expected a list of enrichers")
    slots: list[EnricherSlot] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        options = Options(item, f"{list_path}[{index}]", env)
        type_name = str(options.string("type"))
        enricher_type = known.get(type_name)
        if enricher_type is None:
            raise ConfigError(
                f"{options.key('type')}: unknown type {type_name!r} (known: {', '.join(known)})"
            )
        name = str(options.string("name", type_name))
        if not _NAME.fullmatch(name):
            raise ConfigError(f"{options.key('name')}: {name!r} is not a valid name")
        if name in seen:
            raise ConfigError(f"{options.key('name')}: duplicate enricher name {name!r}")
        seen.add(name)
        timeout = options.seconds("timeout", min(enricher_type.default_timeout, deadline))
        enricher = enricher_type.from_options(name, options.section(type_name), ctx)
        options.finish()
        slots.append(EnricherSlot(enricher, timeout, enricher_type.late))
    return EnrichmentPipeline(slots, deadline=deadline, metrics=metrics)
