"""Harbor enricher against a real local HTTP server speaking Harbor's v2 API format."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streams.enrich import EnricherContext, EnrichmentMetrics, load_enrichment
from streams.enrich.harbor import HarborEnricher, harbor_path
from streams.errors import ConfigError

from .helpers import FakeClock, FakeHarbor, LocalServer, fixture_json, make_incident

ENV = {"HARBOR_ROBOT_NAME": "robot$falco-enricher", "HARBOR_ROBOT_SECRET": "s3cret"}
DIGEST = "sha256:4bcff63911fcb4448bd4fdacec207030997caf25e9bea4045fa6c8c44de311d1"


def harbor_config(url: str, **options: Any) -> list[dict[str, Any]]:
    harbor = {
        "url": url,
        "username": "${env:HARBOR_ROBOT_NAME}",
        "password": "${env:HARBOR_ROBOT_SECRET}",
        "hosts": ["harbor.example.com"],
        **options,
    }
    return [{"type": "harbor", "timeout": "2s", "harbor": harbor}]


class Setup:
    def __init__(self, url: str, deadline: str = "3s", **options: Any) -> None:
        self.clock = FakeClock()
        self.metrics = EnrichmentMetrics(CollectorRegistry())
        context = EnricherContext(metrics=self.metrics, env=ENV, clock=self.clock)
        section = {"deadline": deadline, "enrichers": harbor_config(url, **options)}
        self.pipeline = load_enrichment(section, env=ENV, context=context)
        enricher = self.pipeline.slots[0].enricher
        assert isinstance(enricher, HarborEnricher)
        self.enricher = enricher

    async def enrich(self, **context: Any) -> dict[str, Any]:
        incident = await self.pipeline.enrich(make_incident(**context))
        result: dict[str, Any] = incident["enrichment"]["harbor"]
        return result

    def metric(self, metric: str, **labels: str) -> float:
        return self.metrics.value(metric, {"enricher": "harbor", **labels})


def with_checkout(harbor: FakeHarbor, repository: str = "checkout-api") -> FakeHarbor:
    harbor.artifacts[("payments", repository, "1.4.2")] = fixture_json(
        "harbor-vulnerabilities.json"
    )
    return harbor


def test_summary_counts_worst_cves_scanner_and_link() -> None:
    async def scenario() -> dict[str, Any]:
        harbor = with_checkout(FakeHarbor())
        async with LocalServer(harbor.app()) as server:
            setup = Setup(server.url)
            result = await setup.enrich()
            await setup.pipeline.close()
            assert result["link"] == (
                f"{server.url}/harbor/projects/7/repositories/checkout-api"
                f"/artifacts-tab/artifacts/{DIGEST}"
            )
            return result

    result = asyncio.run(scenario())
    assert result["status"] == "scanned"
    assert result["project"] == "payments"
    assert result["repository"] == "checkout-api"
    assert result["reference"] == "1.4.2"
    assert result["scanner"] == {"name": "Trivy", "vendor": "Aqua Security", "version": "v0.50.1"}
    assert result["scanned_at"] == "2024-05-02T09:15:27.114Z"
    assert result["severity"] == "Critical"
    assert result["counts"] == {
        "Critical": 3,
        "High": 1,
        "Medium": 1,
        "Low": 1,
        "Negligible": 0,
        "Unknown": 1,
    }
    assert result["total"] == 7
    assert result["fixable"] == 5
    assert result["critical_fixable"] == 2
    assert result["high_fixable"] == 1
    # worst first: Critical with a fix (by CVSS, id, package), Critical unfixed, High, ...
    assert [(v["id"], v["package"]) for v in result["top"]] == [
        ("CVE-2023-38545", "curl"),
        ("CVE-2023-38545", "libcurl"),
        ("CVE-2024-0001", "busybox"),
        ("CVE-2023-42363", "busybox"),
        ("CVE-2024-2511", "libssl3"),
    ]
    assert result["top"][0] == {
        "id": "CVE-2023-38545",
        "severity": "Critical",
        "package": "curl",
        "installed_version": "8.2.1-r0",
        "fixed_version": "8.4.0-r0",
        "cvss_score": 9.8,
        "link": "https://avd.aquasec.com/nvd/cve-2023-38545",
    }
    assert result["top"][2]["fixed_version"] is None


def test_nested_repository_name_is_url_encoded_twice() -> None:
    async def scenario() -> tuple[list[str], dict[str, Any]]:
        harbor = with_checkout(FakeHarbor(), "team/checkout-api")
        async with LocalServer(harbor.app()) as server:
            setup = Setup(server.url)
            result = await setup.enrich(
                container_image_repository="harbor.example.com/payments/team/checkout-api"
            )
            await setup.pipeline.close()
            return harbor.raw_paths, result

    raw_paths, result = asyncio.run(scenario())
    assert raw_paths[0] == (
        "/api/v2.0/projects/payments/repositories/team%252Fcheckout-api"
        "/artifacts/1.4.2/additions/vulnerabilities"
    )
    assert result["repository"] == "team/checkout-api"
    assert "/repositories/team%252Fcheckout-api/" in result["link"]


def test_registry_host_and_prefix_map_to_a_proxy_project() -> None:
    async def scenario() -> tuple[list[str], dict[str, Any], dict[str, Any]]:
        harbor = FakeHarbor()
        harbor.artifacts[("dockerhub", "library/alpine", DIGEST)] = fixture_json(
            "harbor-vulnerabilities.json"
        )
        projects = [
            {"registry": "docker.io", "project": "dockerhub", "project_id": 3},
            {"registry": "registry.corp", "prefix": "team-a", "project": "team-a"},
        ]
        async with LocalServer(harbor.app()) as server:
            setup = Setup(server.url, projects=projects)
            by_digest = await setup.enrich(
                container_image_repository="alpine", container_image_digest=DIGEST
            )
            prefixed = await setup.enrich(
                container_image_repository="registry.corp/team-a/svc/api",
                container_image_tag="2",
            )
            await setup.pipeline.close()
            return harbor.raw_paths, by_digest, prefixed

    raw_paths, by_digest, prefixed = asyncio.run(scenario())
    assert raw_paths[0] == (
        "/api/v2.0/projects/dockerhub/repositories/library%252Falpine"
        f"/artifacts/{DIGEST}/additions/vulnerabilities"
    )
    assert by_digest["critical_fixable"] == 2
    assert "/harbor/projects/3/repositories/library%252Falpine/" in by_digest["link"]
    assert raw_paths[1].startswith("/api/v2.0/projects/team-a/repositories/svc%252Fapi/")
    assert prefixed == {
        "image": "registry.corp/team-a/svc/api:2",
        "project": "team-a",
        "repository": "svc/api",
        "reference": "2",
        "status": "unknown image",
    }


def test_image_outside_harbor_is_not_looked_up() -> None:
    async def scenario() -> tuple[int, dict[str, Any], dict[str, Any]]:
        harbor = FakeHarbor()
        async with LocalServer(harbor.app()) as server:
            setup = Setup(server.url)
            other = await setup.enrich(container_image_repository="quay.io/org/app")
            none = await setup.enrich(container_image_repository=None)
            await setup.pipeline.close()
            return harbor.vulnerability_requests, other, none

    requests, other, none = asyncio.run(scenario())
    assert requests == 0
    assert other == {"status": "not in harbor", "image": "quay.io/org/app:1.4.2"}
    assert none == {"status": "no image"}


def test_unknown_image_404_is_marked_and_cached() -> None:
    async def scenario() -> tuple[int, dict[str, Any], Setup]:
        harbor = FakeHarbor()
        async with LocalServer(harbor.app()) as server:
            setup = Setup(server.url)
            first = await setup.enrich()
            second = await setup.enrich()
            await setup.pipeline.close()
            assert first == second
            return harbor.vulnerability_requests, first, setup

    requests, result, setup = asyncio.run(scenario())
    assert result["status"] == "unknown image"
    assert result["image"] == "harbor.example.com/payments/checkout-api:1.4.2"
    assert requests == 1
    assert setup.metric("cache_hits_total") == 1
    assert setup.metric("errors_total", reason="error") == 0


def test_unauthorized_is_an_error_and_opens_the_circuit_instead_of_retrying() -> None:
    async def scenario() -> tuple[int, list[dict[str, Any]], Setup]:
        harbor = with_checkout(FakeHarbor(password="other"))
        async with LocalServer(harbor.app()) as server:
            setup = Setup(server.url, failure_threshold=2)
            results = [await setup.enrich() for _ in range(4)]
            await setup.pipeline.close()
            return harbor.vulnerability_requests + len(harbor.raw_paths), results, setup

    _count, results, setup = asyncio.run(scenario())
    assert results[0] == {"error": "unauthorized"}
    assert results[1] == {"error": "unauthorized"}
    assert results[2] == {"error": "circuit open: Harbor unavailable (unauthorized)"}
    assert results[3] == results[2]
    assert setup.enricher.circuit_state == "open"
    assert setup.metric("errors_total", reason="error") == 4


def test_unauthorized_requests_stop_after_the_threshold() -> None:
    async def scenario() -> int:
        harbor = with_checkout(FakeHarbor(password="other"))
        async with LocalServer(harbor.app()) as server:
            setup = Setup(server.url, failure_threshold=2)
            for _ in range(5):
                await setup.enrich()
            await setup.pipeline.close()
            return len(harbor.raw_paths)

    assert asyncio.run(scenario()) == 2


def test_server_error_500_sets_error_and_is_not_cached() -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any], Setup]:
        harbor = with_checkout(FakeHarbor(mode="500"))
        async with LocalServer(harbor.app()) as server:
            setup = Setup(server.url)
            failed = await setup.enrich()
            harbor.mode = "ok"
            recovered = await setup.enrich()
            await setup.pipeline.close()
            return failed, recovered, setup

    failed, recovered, setup = asyncio.run(scenario())
    assert failed == {"error": "HTTP 500"}
    assert recovered["status"] == "scanned"
    assert setup.metric("errors_total", reason="error") == 1


def test_slow_harbor_incident_leaves_within_the_deadline_with_error() -> None:
    async def scenario() -> tuple[float, dict[str, Any], Setup]:
        harbor = with_checkout(FakeHarbor(mode="slow", delay=0.8))
        async with LocalServer(harbor.app()) as server:
            setup = Setup(server.url, deadline="300ms")
            started = time.monotonic()
            incident = await setup.pipeline.enrich(make_incident())
            elapsed = time.monotonic() - started
            await setup.pipeline.close()
            return elapsed, incident, setup

    elapsed, incident, setup = asyncio.run(scenario())
    assert elapsed < 0.6
    assert incident["enrichment"]["harbor"] == {"error": "deadline of 0.3s exceeded"}
    assert incident["id"] == "0" * 32
    assert incident["events"]
    assert setup.metric("errors_total", reason="deadline") == 1


def test_cache_hits_within_ttl_and_refetch_after_it() -> None:
    async def scenario() -> tuple[list[int], Setup]:
        harbor = with_checkout(FakeHarbor())
        async with LocalServer(harbor.app()) as server:
            setup = Setup(server.url, cache_ttl="5m")
            counts = []
            for advance in (0, 10, 290, 1):
                setup.clock.advance(advance)
                result = await setup.enrich()
                assert result["status"] == "scanned"
                counts.append(harbor.vulnerability_requests)
            await setup.pipeline.close()
            return counts, setup

    counts, setup = asyncio.run(scenario())
    assert counts == [1, 1, 2, 2]
    assert setup.metric("cache_hits_total") == 2
    assert setup.metric("cache_misses_total") == 2


def test_concurrent_lookups_share_one_request_and_concurrency_is_bounded() -> None:
    async def scenario() -> tuple[int, int, list[Any]]:
        harbor = FakeHarbor(mode="slow", delay=0.1)
        async with LocalServer(harbor.app()) as server:
            setup = Setup(server.url, concurrency=2)
            same = await asyncio.gather(*(setup.enrich() for _ in range(5)))
            shared = harbor.vulnerability_requests
            tags = [f"v{i}" for i in range(6)]
            await asyncio.gather(*(setup.enrich(container_image_tag=t) for t in tags))
            await setup.pipeline.close()
            return shared, harbor.max_in_flight, same

    shared, max_in_flight, same = asyncio.run(scenario())
    assert shared == 1
    assert all(result["status"] == "unknown image" for result in same)
    assert max_in_flight == 2


def test_circuit_opens_after_consecutive_failures_and_closes_after_a_good_trial() -> None:
    async def scenario() -> tuple[list[Any], list[str], list[float], int]:
        harbor = with_checkout(FakeHarbor(mode="500"))
        async with LocalServer(harbor.app()) as server:
            setup = Setup(server.url, failure_threshold=3, cooldown="30s", cache_ttl="1ms")
            results, states, gauges = [], [], []

            async def step() -> None:
                results.append(await setup.enrich())
                states.append(setup.enricher.circuit_state)
                gauges.append(setup.metric("circuit_state"))

            for _ in range(4):
                await step()  # 3 failures open it; the 4th is refused
            requests_while_open = harbor.vulnerability_requests
            setup.clock.advance(31)
            await step()  # half-open trial fails: open again
            setup.clock.advance(31)
            harbor.mode = "ok"
            await step()  # trial succeeds: closed
            await setup.pipeline.close()
            assert requests_while_open == 3
            return results, states, gauges, harbor.vulnerability_requests

    results, states, gauges, requests = asyncio.run(scenario())
    assert states == ["closed", "closed", "open", "open", "open", "closed"]
    assert gauges == [0, 0, 2, 2, 2, 0]
    assert results[3] == {"error": "circuit open: Harbor unavailable (HTTP 500)"}
    assert results[4] == {"error": "HTTP 500"}
    assert results[5]["status"] == "scanned"
    assert requests == 5


def test_connection_refused_counts_as_a_failure() -> None:
    async def scenario() -> dict[str, Any]:
        async with LocalServer(FakeHarbor().app()) as server:
            url = server.url
        setup = Setup(url)  # the server is gone: connections are refused
        result = await setup.enrich()
        await setup.pipeline.close()
        return result

    result = asyncio.run(scenario())
    assert result["error"].startswith("request failed: ClientConnectorError")


def test_empty_addition_means_not_scanned() -> None:
    async def scenario() -> dict[str, Any]:
        harbor = FakeHarbor()
        harbor.artifacts[("payments", "checkout-api", "1.4.2")] = {}
        async with LocalServer(harbor.app()) as server:
            setup = Setup(server.url)
            result = await setup.enrich()
            await setup.pipeline.close()
            return result

    result = asyncio.run(scenario())
    assert result["status"] == "not scanned"


def test_harbor_path_encodes_reference_and_names() -> None:
    assert harbor_path("p", "a/b/c", "sha256:ab") == (
        "/api/v2.0/projects/p/repositories/a%252Fb%252Fc/artifacts/sha256:ab"
        "/additions/vulnerabilities"
    )


@pytest.mark.parametrize(
    ("harbor", "env", "message"),
    [
        ({}, ENV, "enrichment.enrichers[0].harbor.url: required"),
        ({"url": "ftp://x"}, ENV, "enrichment.enrichers[0].harbor.url: expected an http(s) URL"),
        (
            {"url": "https://h", "username": "${env:NOPE}", "password": "x"},
            ENV,
            "enrichment.enrichers[0].harbor.username: secret environment variable NOPE is not set",
        ),
        (
            {"url": "https://h", "username": "u"},
            ENV,
            "enrichment.enrichers[0].harbor.password: username and password go together",
        ),
        (
            {"url": "https://h", "projects": [{"project": "x"}]},
            ENV,
            "enrichment.enrichers[0].harbor.projects[0].registry: required",
        ),
        (
            {"url": "https://h", "cache_ttl": "soon"},
            ENV,
            "enrichment.enrichers[0].harbor.cache_ttl: invalid duration",
        ),
        ({"url": "https://h", "tpo": 3}, ENV, "enrichment.enrichers[0].harbor.tpo: unknown key"),
    ],
)
def test_config_errors_name_the_key(
    harbor: dict[str, Any], env: dict[str, str], message: str
) -> None:
    section = {"enrichers": [{"type": "harbor", "harbor": harbor}]}
    with pytest.raises(ConfigError) as info:
        load_enrichment(section, env=env, metrics=EnrichmentMetrics(CollectorRegistry()))
    assert str(info.value).startswith(message)


def test_secrets_never_show_in_the_config_repr() -> None:
    pipeline = load_enrichment(
        harbor_config("https://h"), env=ENV, metrics=EnrichmentMetrics(CollectorRegistry())
    )
    enricher = pipeline.slots[0].enricher
    assert isinstance(enricher, HarborEnricher)
    assert "s3cret" not in repr(enricher.config)
