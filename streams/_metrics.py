"""One set of metric objects per Prometheus registry: a name can be registered only once."""

from __future__ import annotations

from typing import Any, Self
from weakref import WeakKeyDictionary

from prometheus_client import REGISTRY, CollectorRegistry

__all__ = ["PerRegistry"]

_INSTANCES: WeakKeyDictionary[CollectorRegistry, dict[type, Any]] = WeakKeyDictionary()


class PerRegistry:
    """Metrics classes built from a registry; `shared(registry)` returns its one instance."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = REGISTRY if registry is None else registry

    @classmethod
    def shared(cls, registry: CollectorRegistry | None = None) -> Self:
        """The instance of `registry` (default: the global one), created on first use."""
        reg = REGISTRY if registry is None else registry
        instances = _INSTANCES.setdefault(reg, {})
        if cls not in instances:
            instances[cls] = cls(reg)
        instance: Self = instances[cls]
        return instance
