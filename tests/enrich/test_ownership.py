"""Ownership tables (YAML and CSV): kinds, precedence, patterns, reload, errors."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streams.enrich import EnrichmentMetrics, OwnershipEnricher, load_enrichment
from streams.enrich.ownership import load_tables
from streams.errors import ConfigError

from .helpers import FIXTURES, FakeClock, make_incident

TABLES = [str(FIXTURES / "owners.yaml"), str(FIXTURES / "owners.csv")]


def ownership(tables: list[str] = TABLES, **options: Any) -> OwnershipEnricher:
    pipeline = load_enrichment(
        [{"type": "ownership", "ownership": {"tables": tables, **options}}],
        metrics=EnrichmentMetrics(CollectorRegistry()),
    )
    enricher = pipeline.slots[0].enricher
    assert isinstance(enricher, OwnershipEnricher)
    return enricher


def enrich(enricher: OwnershipEnricher, *incidents: dict[str, Any]) -> list[dict[str, Any]]:
    async def scenario() -> list[dict[str, Any]]:
        results = [await enricher.enrich(incident) for incident in incidents]
        await enricher.close()
        return results

    return asyncio.run(scenario())


def test_pod_prefix_wins_and_the_longest_prefix_is_chosen() -> None:
    plain, canary = enrich(
        ownership(),
        make_incident(),
        make_incident(k8s_pod_name="checkout-canary-5c7d"),
    )
    assert plain == {
        "owner": "bob@example.com",
        "team": "Checkout",
        "environment": "prod",
        "criticality": "high",
        "slack_channel": "#checkout",
        "matched_by": {"kind": "pod_prefix", "key": "checkout-", "table": "owners.yaml"},
    }
    assert canary["team"] == "Checkout Canary"


def test_image_namespace_and_hostname_in_precedence_order() -> None:
    image, namespace, pattern, hostname, nobody = enrich(
        ownership(),
        make_incident(
            k8s_pod_name="api-1", container_image_repository="nginx", k8s_ns_name="payments"
        ),
        make_incident(k8s_pod_name="api-1", container_image_repository="quay.io/x/y"),
        make_incident(
            k8s_pod_name="api-1", container_image_repository="quay.io/x/y", k8s_ns_name="dev-42"
        ),
        make_incident(
            k8s_pod_name="api-1", container_image_repository="quay.io/x/y", k8s_ns_name="other"
        ),
        make_incident(
            k8s_pod_name="api-1",
            container_image_repository="quay.io/x/y",
            k8s_ns_name="other",
            hostname="control-plane-1",
        ),
    )
    assert image["matched_by"] == {
        "kind": "image",
        "key": "docker.io/library/*",
        "table": "owners.yaml",
    }
    assert namespace["team"] == "Payments"
    assert namespace["slack_channel"] == "#payments-security"
    assert pattern["team"] == "Platform"
    assert pattern["environment"] == "dev"
    assert hostname["matched_by"] == {"kind": "hostname", "key": "worker-*", "table": "owners.csv"}
    assert hostname["pagerduty"] == "PD123"
    assert nobody == {"status": "no owner"}


def test_csv_rows_and_exact_image_keys_are_normalised() -> None:
    (exporter,) = enrich(
        ownership(),
        make_incident(
            k8s_pod_name="node-exporter-x",
            container_image_repository="quay.io/prometheus/node-exporter",
            k8s_ns_name="monitoring",
        ),
    )
    assert exporter["team"] == "Observability"
    assert "pagerduty" not in exporter  # empty cells are left out


def test_precedence_is_configurable() -> None:
    (result,) = enrich(ownership(precedence=["namespace", "pod_prefix"]), make_incident())
    assert result["matched_by"]["kind"] == "namespace"


def test_tables_reload_after_the_interval(tmp_path: Path) -> None:
    table = tmp_path / "owners.yaml"
    shutil.copy(FIXTURES / "owners.yaml", table)
    clock = FakeClock()
    from streams.enrich import EnricherContext

    enricher = OwnershipEnricher(
        "ownership",
        [str(table)],
        EnricherContext(metrics=EnrichmentMetrics(CollectorRegistry()), clock=clock),
        reload_interval=10.0,
        initial=load_tables([str(table)]),
    )

    async def scenario() -> list[str]:
        teams = [(await enricher.enrich(make_incident()))["team"]]
        table.write_text("pod_prefixes:\n  checkout-: {team: Renamed}\n")
        clock.advance(11)
        teams.append((await enricher.enrich(make_incident()))["team"])
        await asyncio.sleep(0.2)
        teams.append((await enricher.enrich(make_incident()))["team"])
        await enricher.close()
        return teams

    assert asyncio.run(scenario()) == ["Checkout", "Checkout", "Renamed"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("t.yaml", "teams: {}\n", "t.yaml: unknown section 'teams'"),
        ("t.yaml", "namespaces: [a]\n", "t.yaml: namespaces: expected a mapping"),
        ("t.yaml", "namespaces:\n  a: text\n", "t.yaml: namespaces.a: expected a mapping"),
        ("t.csv", "kind,key,team\npod,x,T\n", "t.csv:2: unknown kind 'pod'"),
        ("t.csv", "key,team\nx,T\n", "t.csv: the header must have kind and key"),
        ("t.yaml", "a: [\n", "t.yaml: invalid YAML"),
    ],
)
def test_broken_tables_fail_at_config_load(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        ownership([str(path)])
    assert str(info.value).startswith(f"enrichment[0].ownership.tables: {message}")


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"ownership.tables: required"):
        ownership([])
    with pytest.raises(ConfigError, match=r"ownership.precedence\[1\]: unknown kind 'team'"):
        ownership(precedence=["namespace", "team"])
