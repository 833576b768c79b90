"""The enrichment stage: every enricher runs concurrently under a bounded deadline.

An incident is never held past the pipeline's deadline and never dropped: an enricher that
fails or runs late leaves `enrichment.<name> = {"error": "..."}` and the failure is counted.
Enrichers marked `late` (risk) run after the others and read their results.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from streams._config_fields import Fields
from streams.enrich.metrics import EnrichmentMetrics
from streams.errors import CorrelatorError

__all__ = [
    "DEFAULT_DEADLINE",
    "Enricher",
    "EnricherContext",
    "EnricherSlot",
    "EnricherType",
    "EnrichmentError",
    "EnrichmentPipeline",
]

log = logging.getLogger("streams.enrich")

DEFAULT_DEADLINE = 3.0
_MAX_ERROR_CHARS = 300


class EnrichmentError(CorrelatorError):
    """An enricher could not produce its result; the message goes to `enrichment.<name>.error`."""


@runtime_checkable
class Enricher(Protocol):
    """Adds one named section to an incident's `enrichment`.

    `enrich` reads the incident (it must not change it, except the documented escalation of
    the risk enricher) and returns a JSON-ready dict. It may raise: the pipeline turns any
    exception into `{"error": ...}`. An enricher may also have `async close()`.
    """

    name: str

    async def enrich(self, incident: Mapping[str, Any]) -> dict[str, Any]: ...


@dataclass
class EnricherContext:
    """What enrichers share: metrics, the environment for secrets, an injectable clock."""

    metrics: EnrichmentMetrics = field(default_factory=EnrichmentMetrics.shared)
    env: Mapping[str, str] | None = None
    clock: Callable[[], float] = time.monotonic


class EnricherType(Protocol):
    """A configurable kind of enricher: the registry maps its `type` name to this.

    The built-in types also split `from_options` in two: `parse_options(options)` reads the
    config section into a typed value (secrets as `Secret`) without I/O, when the worker's
    configuration is read, and `create(name, config, context)` builds the enricher at start.
    A type with only `from_options` is read when it is built."""

    default_timeout: ClassVar[float]
    late: ClassVar[bool]

    @classmethod
    def from_options(cls, name: str, options: Fields, context: EnricherContext) -> Enricher: ...


@dataclass(frozen=True, slots=True)
class EnricherSlot:
    """An enricher in a pipeline, with its own timeout (capped by the pipeline deadline)."""

    enricher: Enricher
    timeout: float = DEFAULT_DEADLINE
    late: bool = False


class EnrichmentPipeline:
    """Runs enrichers on an incident: `await pipeline.enrich(incident)` returns it enriched."""

    def __init__(
        self,
        enrichers: Sequence[EnricherSlot | Enricher] = (),
        *,
        deadline: float = DEFAULT_DEADLINE,
        metrics: EnrichmentMetrics | None = None,
    ) -> None:
        self.deadline = deadline
        self.metrics = metrics or EnrichmentMetrics.shared()
        self.slots = [
            item if isinstance(item, EnricherSlot) else EnricherSlot(item, deadline)
            for item in enrichers
        ]
        names = [slot.enricher.name for slot in self.slots]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate enricher names: {', '.join(duplicates)}")

    @property
    def names(self) -> list[str]:
        return [slot.enricher.name for slot in self.slots]

    async def enrich(self, incident: dict[str, Any]) -> dict[str, Any]:
        """Add `enrichment.<name>` for every enricher; returns within the deadline (plus
        scheduling jitter) whatever the enrichers do."""
        enrichment = incident.get("enrichment")
        if not isinstance(enrichment, dict):
            enrichment = {}
            incident["enrichment"] = enrichment
        if not self.slots:
            return incident
        loop = asyncio.get_running_loop()
        end = loop.time() + self.deadline
        for late in (False, True):
            stage = [slot for slot in self.slots if slot.late is late]
            if stage:
                await self._run_stage(stage, incident, enrichment, end)
        return incident

    async def close(self) -> None:
        for slot in self.slots:
            close = getattr(slot.enricher, "close", None)
            if close is not None:
                try:
                    await close()
                except Exception:
                    log.exception("closing enricher %s failed", slot.enricher.name)

    async def _run_stage(
        self,
        stage: list[EnricherSlot],
        incident: dict[str, Any],
        enrichment: dict[str, Any],
        end: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        tasks = {
            slot.enricher.name: asyncio.ensure_future(self._run_one(slot, incident, end))
            for slot in stage
        }
        # the guard only matters for an enricher that ignores cancellation
        _done, pending = await asyncio.wait(
            tasks.values(), timeout=max(end - loop.time(), 0.0) + 0.05
        )
        for name, task in tasks.items():
            if task in pending:
                task.cancel()
                task.add_done_callback(_ignore_result)
                self._count_error(name, "deadline", self.deadline)
                enrichment[name] = {"error": f"deadline of {self.deadline:g}s exceeded"}
            else:
                enrichment[name] = task.result()

    async def _run_one(
        self, slot: EnricherSlot, incident: Mapping[str, Any], end: float
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        name = slot.enricher.name
        started = loop.time()
        remaining = end - started
        budget = min(slot.timeout, remaining)
        if budget <= 0:
            self._count_error(name, "deadline", 0.0)
            return {"error": f"deadline of {self.deadline:g}s exceeded"}
        try:
            async with asyncio.timeout(budget):
                result = await slot.enricher.enrich(incident)
        except TimeoutError:
            reason = "timeout" if slot.timeout < remaining else "deadline"
            self._count_error(name, reason, loop.time() - started)
            if reason == "timeout":
                return {"error": f"timed out after {slot.timeout:g}s"}
            return {"error": f"deadline of {self.deadline:g}s exceeded"}
        except Exception as exc:
            self._count_error(name, "error", loop.time() - started)
            return {"error": _error_text(exc)}
        if not isinstance(result, dict):
            self._count_error(name, "error", loop.time() - started)
            return {"error": f"enricher returned {type(result).__name__}, not a mapping"}
        self.metrics.latency.labels(enricher=name, outcome="ok").observe(loop.time() - started)
        return result

    def _count_error(self, name: str, reason: str, seconds: float) -> None:
        outcome = "error" if reason == "error" else "timeout"
        self.metrics.latency.labels(enricher=name, outcome=outcome).observe(seconds)
        self.metrics.errors.labels(enricher=name, reason=reason).inc()


def _error_text(exc: Exception) -> str:
    if isinstance(exc, EnrichmentError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        log.warning("enricher failed unexpectedly: %s", text)
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."


def _ignore_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
