"""Risk: each factor from its input, caps, missing inputs, escalation, configuration."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streams.enrich import EnrichmentMetrics, RiskEnricher, RiskModel, load_enrichment
from streams.enrich.risk import score_incident
from streams.errors import ConfigError

from .helpers import make_incident


def incident_with(severity: str = "Warning", **enrichment: Any) -> dict[str, Any]:
    incident = make_incident()
    incident["severity"] = severity
    incident["enrichment"] = enrichment
    return incident


def factors(result: dict[str, Any]) -> dict[str, float]:
    return {f["factor"]: f["points"] for f in result["factors"]}


HARBOR = {"status": "scanned", "critical_fixable": 3, "high_fixable": 1}
POSTURE = {
    "node": "worker-1",
    "cis": {"failed": 12},
    "exposure": {"count": 2, "by_severity": {"high": 1, "medium": 1}},
}
OWNER = {"team": "Payments", "criticality": "critical", "environment": "prod"}


@pytest.mark.parametrize(
    ("severity", "points"),
    [("Emergency", 40), ("Critical", 40), ("Error", 30), ("Warning", 20), ("notice", 10)],
)
def test_severity_factor(severity: str, points: int) -> None:
    result = score_incident(incident_with(severity), RiskModel())
    assert factors(result)["severity"] == points


def test_distinct_rules_beyond_the_first() -> None:
    incident = incident_with()
    assert factors(score_incident(incident, RiskModel()))["distinct_rules"] == 5
    for index in range(3):
        incident["events"].append({"step": "s", "rule": f"r{index}"})
    assert factors(score_incident(incident, RiskModel()))["distinct_rules"] == 15  # capped


def test_critical_and_high_cves_with_fixes_harbor_before_trivy() -> None:
    result = score_incident(
        incident_with(harbor=HARBOR, trivy={"status": "scanned", "critical_fixable": 1}),
        RiskModel(),
    )
    got = factors(result)
    assert got["critical_fixable"] == 20  # 3 x 10, capped at 20
    assert got["high_fixable"] == 2
    detail = next(f for f in result["factors"] if f["factor"] == "critical_fixable")
    assert detail["detail"] == "3 Critical CVEs with a fix (harbor)"
    trivy_only = score_incident(
        incident_with(
            harbor={"status": "unknown image"}, trivy={"status": "scanned", "critical_fixable": 1}
        ),
        RiskModel(),
    )
    assert factors(trivy_only)["critical_fixable"] == 10


def test_cis_failures_and_exposure() -> None:
    got = factors(score_incident(incident_with(posture=POSTURE), RiskModel()))
    assert got["cis_failed"] == 10  # 12, capped
    assert got["exposure"] == 15  # high 10 + medium 5


def test_owner_criticality() -> None:
    result = score_incident(incident_with(ownership=OWNER), RiskModel())
    assert factors(result)["criticality"] == 15
    low = score_incident(incident_with(ownership={"criticality": "low"}), RiskModel())
    assert "criticality" not in factors(low)  # zero points are not listed


def test_full_example_is_capped_at_100_and_factors_are_sorted() -> None:
    result = score_incident(
        incident_with("Critical", harbor=HARBOR, posture=POSTURE, ownership=OWNER), RiskModel()
    )
    assert result["score"] == 100
    points = [f["points"] for f in result["factors"]]
    assert points == sorted(points, reverse=True)
    assert sum(points) == 107


def test_docs_example() -> None:
    """The worked example in docs/enrichment.md."""
    incident = incident_with(
        "Warning",
        harbor={"status": "scanned", "critical_fixable": 3, "high_fixable": 2},
        posture={
            "node": "worker-1",
            "cis": {"failed": 4},
            "exposure": {"by_severity": {"high": 1}},
        },
        ownership={"team": "Payments", "criticality": "high"},
    )
    result = score_incident(incident, RiskModel())
    assert factors(result) == {
        "severity": 20,
        "distinct_rules": 5,
        "critical_fixable": 20,
        "high_fixable": 4,
        "cis_failed": 4,
        "exposure": 10,
        "criticality": 10,
    }
    assert result["score"] == 73


def test_failed_inputs_are_listed_as_unavailable() -> None:
    result = score_incident(
        incident_with(harbor={"error": "HTTP 500"}, posture={"error": "timed out after 2s"}),
        RiskModel(),
    )
    assert result["unavailable"] == ["harbor: HTTP 500", "posture: timed out after 2s"]
    assert result["score"] == 25


def test_escalation_raises_severity_and_records_why() -> None:
    enricher = (
        load_enrichment(
            [
                {
                    "type": "risk",
                    "risk": {
                        "escalate": [
                            {"min_score": 80, "severity": "critical"},
                            {"min_score": 45, "severity": "Error", "environments": ["prod"]},
                            {"min_score": 10, "severity": "Debug"},
                        ]
                    },
                }
            ],
            metrics=EnrichmentMetrics(CollectorRegistry()),
        )
        .slots[0]
        .enricher
    )
    assert isinstance(enricher, RiskEnricher)

    def run(incident: dict[str, Any]) -> dict[str, Any]:
        return asyncio.run(enricher.enrich(incident))

    high = incident_with("Warning", harbor=HARBOR, posture=POSTURE, ownership=OWNER)
    result = run(high)
    assert high["severity"] == "Critical"
    assert result["escalation"] == {
        "from": "Warning",
        "to": "Critical",
        "rule": 0,
        "reason": "risk 87 >= 80",
    }
    medium = incident_with("Warning", harbor=HARBOR, ownership={"environment": "prod"})
    assert run(medium)["escalation"]["to"] == "Error"
    staging = incident_with("Warning", harbor=HARBOR, ownership={"environment": "staging"})
    assert "escalation" not in run(staging)  # never lowered to Debug either
    assert staging["severity"] == "Warning"


def test_risk_runs_late_in_the_pipeline() -> None:
    pipeline = load_enrichment([{"type": "risk"}], metrics=EnrichmentMetrics(CollectorRegistry()))
    assert pipeline.slots[0].late


def test_weights_are_configurable() -> None:
    pipeline = load_enrichment(
        [
            {
                "type": "risk",
                "risk": {
                    "severity": {"Warning": 35},
                    "critical_fixable": {"per": 5, "max": 50},
                    "exposure": {"high": 1},
                    "criticality": {"critical": 0},
                    "sources": {"vulnerabilities": ["trivy"]},
                },
            }
        ],
        metrics=EnrichmentMetrics(CollectorRegistry()),
    )
    enricher = pipeline.slots[0].enricher
    assert isinstance(enricher, RiskEnricher)
    result = asyncio.run(
        enricher.enrich(
            incident_with(
                trivy={"status": "scanned", "critical_fixable": 8},
                harbor=HARBOR,
                posture={"exposure": {"by_severity": {"high": 3}}},
                ownership=OWNER,
            )
        )
    )
    got = factors(result)
    assert got["severity"] == 35
    assert got["critical_fixable"] == 40
    assert got["exposure"] == 3
    assert "criticality" not in got


@pytest.mark.parametrize(
    ("risk", "message"),
    [
        ({"severity": {"Bad": 1}}, "enrichment[0].risk.severity.Bad: not a Falco priority"),
        ({"escalate": [{"min_score": 80}]}, "enrichment[0].risk.escalate[0].severity: required"),
        (
            {"escalate": [{"min_score": 80, "severity": "Huge"}]},
            "enrichment[0].risk.escalate[0].severity: not a Falco priority",
        ),
        ({"cis_failed": {"per": -1}}, "enrichment[0].risk.cis_failed.per: expected a number"),
        ({"weights": {}}, "enrichment[0].risk.weights: unknown key"),
    ],
)
def test_config_errors(risk: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_enrichment(
            [{"type": "risk", "risk": risk}], metrics=EnrichmentMetrics(CollectorRegistry())
        )
    assert str(info.value).startswith(message)
