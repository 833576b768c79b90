"""The pipeline: concurrency, per-enricher timeouts, the overall deadline, errors, config."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest
from prometheus_client import CollectorRegistry

from streams._config_fields import Fields
from streams.enrich import (
    ENRICHER_TYPES,
    Enricher,
    EnricherContext,
    EnricherSlot,
    EnrichmentError,
    EnrichmentMetrics,
    EnrichmentPipeline,
    load_enrichment,
)
from streams.errors import ConfigError

from .helpers import make_incident


class Sleepy:
    """Answers after `delay` seconds; `fail` raises instead; `stubborn` ignores one cancel."""

    default_timeout: ClassVar[float] = 1.0
    late: ClassVar[bool] = False

    def __init__(
        self, name: str, delay: float = 0.0, fail: Exception | None = None, stubborn: bool = False
    ) -> None:
        self.name = name
        self.delay = delay
        self.fail = fail
        self.stubborn = stubborn
        self.seen: list[dict[str, Any]] = []
        self.closed = False

    @classmethod
    def from_options(cls, name: str, options: Fields, context: EnricherContext) -> Sleepy:
        enricher = cls(name, options.number("delay", 0.0, minimum=0.0))
        options.finish()
        return enricher

    async def enrich(self, incident: Mapping[str, Any]) -> dict[str, Any]:
        self.seen.append(dict(incident["enrichment"]))
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            if not self.stubborn:
                raise
            await asyncio.sleep(0.3)
        if self.fail is not None:
            raise self.fail
        return {"answer": self.name}

    async def close(self) -> None:
        self.closed = True


def pipeline(*slots: EnricherSlot | Enricher, deadline: float = 1.0) -> EnrichmentPipeline:
    return EnrichmentPipeline(
        slots, deadline=deadline, metrics=EnrichmentMetrics(CollectorRegistry())
    )


def run(pipe: EnrichmentPipeline, incident: dict[str, Any] | None = None) -> tuple[Any, float]:
    async def scenario() -> tuple[Any, float]:
        started = time.monotonic()
        result = await pipe.enrich(incident if incident is not None else make_incident())
        elapsed = time.monotonic() - started
        await pipe.close()
        return result, elapsed

    return asyncio.run(scenario())


def errors(pipe: EnrichmentPipeline, name: str, reason: str) -> float:
    return pipe.metrics.value("errors_total", {"enricher": name, "reason": reason})


def test_sleepy_is_an_enricher() -> None:
    assert isinstance(Sleepy("x"), Enricher)


def test_enrichers_run_concurrently_and_each_result_goes_under_its_name() -> None:
    pipe = pipeline(Sleepy("a", 0.2), Sleepy("b", 0.2), Sleepy("c", 0.2))
    incident, elapsed = run(pipe)
    assert incident["enrichment"] == {
        "a": {"answer": "a"},
        "b": {"answer": "b"},
        "c": {"answer": "c"},
    }
    assert elapsed < 0.35


def test_per_enricher_timeout_sets_error_and_counts_it() -> None:
    pipe = pipeline(EnricherSlot(Sleepy("slow", 5.0), timeout=0.1), Sleepy("fast"))
    incident, elapsed = run(pipe)
    assert incident["enrichment"]["slow"] == {"error": "timed out after 0.1s"}
    assert incident["enrichment"]["fast"] == {"answer": "fast"}
    assert elapsed < 0.3
    assert errors(pipe, "slow", "timeout") == 1
    latency = pipe.metrics.value(
        "latency_seconds_count", {"enricher": "slow", "outcome": "timeout"}
    )
    assert latency == 1


def test_overall_deadline_bounds_the_incident_even_with_long_timeouts() -> None:
    pipe = pipeline(EnricherSlot(Sleepy("slow", 5.0), timeout=10.0), deadline=0.2)
    incident, elapsed = run(pipe)
    assert incident["enrichment"]["slow"] == {"error": "deadline of 0.2s exceeded"}
    assert elapsed < 0.4
    assert errors(pipe, "slow", "deadline") == 1


def test_an_enricher_that_ignores_cancellation_cannot_hold_the_incident() -> None:
    pipe = pipeline(
        EnricherSlot(Sleepy("stubborn", 5.0, stubborn=True), timeout=10.0), deadline=0.1
    )
    incident, elapsed = run(pipe)
    assert incident["enrichment"]["stubborn"] == {"error": "deadline of 0.1s exceeded"}
    assert elapsed < 0.3


def test_exceptions_become_error_entries_and_the_incident_is_kept() -> None:
    original = make_incident()
    pipe = pipeline(
        Sleepy("known", fail=EnrichmentError("harbor said no")),
        Sleepy("bug", fail=KeyError("x")),
        Sleepy("ok"),
    )
    incident, _ = run(pipe, original)
    assert incident is original
    assert incident["enrichment"]["known"] == {"error": "harbor said no"}
    assert incident["enrichment"]["bug"] == {"error": "KeyError: 'x'"}
    assert incident["enrichment"]["ok"] == {"answer": "ok"}
    assert errors(pipe, "known", "error") == 1
    assert errors(pipe, "bug", "error") == 1


def test_a_result_that_is_not_a_mapping_is_an_error() -> None:
    class Wrong:
        name = "wrong"

        async def enrich(self, incident: Mapping[str, Any]) -> Any:
            return ["not", "a", "dict"]

    incident, _ = run(pipeline(Wrong()))
    assert incident["enrichment"]["wrong"] == {"error": "enricher returned list, not a mapping"}


def test_late_enrichers_see_the_results_of_the_others() -> None:
    late = Sleepy("late")
    pipe = pipeline(EnricherSlot(late, 1.0, late=True), Sleepy("early", 0.05))
    incident, _ = run(pipe)
    assert late.seen == [{"early": {"answer": "early"}}]
    assert list(incident["enrichment"]) == ["early", "late"]


def test_missing_or_broken_enrichment_object_is_replaced_and_empty_pipeline_is_a_no_op() -> None:
    incident = make_incident()
    incident["enrichment"] = None
    result, _ = run(pipeline(), incident)
    assert result["enrichment"] == {}


def test_close_reaches_every_enricher() -> None:
    a, b = Sleepy("a"), Sleepy("b")
    run(pipeline(a, b))
    assert a.closed
    assert b.closed


def test_duplicate_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate enricher names: a"):
        pipeline(Sleepy("a"), Sleepy("a"))


def test_config_list_and_mapping_forms() -> None:
    types = {**ENRICHER_TYPES, "sleepy": Sleepy}
    metrics = EnrichmentMetrics(CollectorRegistry())
    listed = load_enrichment(
        [{"type": "sleepy"}, {"type": "sleepy", "name": "two", "timeout": "250ms"}],
        types=types,
        metrics=metrics,
    )
    assert listed.names == ["sleepy", "two"]
    assert listed.deadline == 3.0
    assert [slot.timeout for slot in listed.slots] == [1.0, 0.25]
    mapped = load_enrichment(
        {"deadline": "500ms", "enrichers": [{"type": "sleepy", "sleepy": {"delay": 0.01}}]},
        types=types,
        metrics=metrics,
    )
    assert mapped.deadline == 0.5
    assert mapped.slots[0].timeout == 0.5  # the type's default, capped by the deadline
    assert load_enrichment(None, metrics=metrics).names == []


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("harbor", "enrichment: expected a list of enrichers"),
        ([{"name": "x"}], "enrichment[0].type: required"),
        ([{"type": "nope"}], "enrichment[0].type: unknown type 'nope' (known: harbor, trivy,"),
        ([{"type": "sleepy"}, {"type": "sleepy"}], "enrichment[1].name: duplicate enricher"),
        ([{"type": "sleepy", "name": "a b"}], "enrichment[0].name: 'a b' is not a valid name"),
        ([{"type": "sleepy", "sleepy": {"dealy": 1}}], "enrichment[0].sleepy.dealy: unknown key"),
        ([{"type": "sleepy", "extra": 1}], "enrichment[0].extra: unknown key"),
        ({"deadline": "0s"}, "enrichment.deadline: must be positive"),
        ({"enrichers": [{}]}, "enrichment.enrichers[0].type: required"),
        ({"enricher": []}, "enrichment.enricher: unknown key"),
    ],
)
def test_config_errors_name_the_key(section: object, message: str) -> None:
    types = {**ENRICHER_TYPES, "sleepy": Sleepy}
    with pytest.raises(ConfigError) as info:
        load_enrichment(section, types=types, metrics=EnrichmentMetrics(CollectorRegistry()))
    assert str(info.value).startswith(message)
