"""All enrichers from one config: what a responder gets on an incident."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from streams.enrich import EnricherContext, EnrichmentMetrics, load_enrichment

from .helpers import FIXTURES, FakeHarbor, LocalServer, fixture_json, make_incident

ENV = {"HARBOR_ROBOT_NAME": "robot$falco-enricher", "HARBOR_ROBOT_SECRET": "s3cret"}


def config(harbor_url: str, trivy_dir: Path) -> dict[str, Any]:
    return {
        "deadline": "1s",
        "enrichers": [
            {
                "type": "harbor",
                "harbor": {
                    "url": harbor_url,
                    "username": "${env:HARBOR_ROBOT_NAME}",
                    "password": "${env:HARBOR_ROBOT_SECRET}",
                    "hosts": ["harbor.example.com"],
                },
            },
            {"type": "trivy", "trivy": {"directory": str(trivy_dir)}},
            {
                "type": "posture",
                "posture": {
                    "kube_bench_dir": str(FIXTURES / "kube-bench"),
                    "kube_hunter": [str(FIXTURES / "kube-hunter.json")],
                    "nodes": {"worker-1": ["10.0.0.11"]},
                },
            },
            {
                "type": "ownership",
                "ownership": {
                    "tables": [str(FIXTURES / "owners.yaml"), str(FIXTURES / "owners.csv")]
                },
            },
            {"type": "risk", "risk": {"escalate": [{"min_score": 80, "severity": "Critical"}]}},
        ],
    }


def test_attack_chain_in_a_vulnerable_pod_gets_cves_posture_owner_and_raised_risk() -> None:
    async def scenario() -> tuple[dict[str, Any], float, EnrichmentMetrics]:
        harbor = FakeHarbor()
        harbor.artifacts[("payments", "checkout-api", "1.4.2")] = fixture_json(
            "harbor-vulnerabilities.json"
        )
        metrics = EnrichmentMetrics(CollectorRegistry())
        async with LocalServer(harbor.app()) as server:
            pipeline = load_enrichment(
                config(server.url, FIXTURES / "trivy"),
                env=ENV,
                context=EnricherContext(metrics=metrics, env=ENV),
            )
            started = time.monotonic()
            incident = await pipeline.enrich(make_incident())
            elapsed = time.monotonic() - started
            await pipeline.close()
        return incident, elapsed, metrics

    incident, elapsed, metrics = asyncio.run(scenario())
    enrichment = incident["enrichment"]
    assert elapsed < 1.0
    assert list(enrichment) == ["harbor", "trivy", "posture", "ownership", "risk"]
    assert enrichment["harbor"]["critical_fixable"] == 2
    assert enrichment["trivy"]["status"] == "unknown image"
    assert enrichment["posture"]["cis"]["failed"] == 3
    assert enrichment["posture"]["exposure"]["by_severity"] == {"high": 1, "medium": 1}
    assert enrichment["ownership"]["slack_channel"] == "#checkout"
    risk = enrichment["risk"]
    # Warning 20 + 2 rules 5 + 2 critical fixable 20 + 1 high fixable 2 + 3 CIS 3
    # + exposure 15 + criticality high 10
    assert risk["score"] == 75
    assert {f["factor"] for f in risk["factors"]} == {
        "severity",
        "distinct_rules",
        "critical_fixable",
        "high_fixable",
        "cis_failed",
        "exposure",
        "criticality",
    }
    assert incident["severity"] == "Warning"  # 75 < 80: not escalated
    assert orjson.loads(orjson.dumps(incident)) == incident
    for name in enrichment:
        assert metrics.value("latency_seconds_count", {"enricher": name, "outcome": "ok"}) == 1
