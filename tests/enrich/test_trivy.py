"""Trivy JSON reports from a directory: matching, normalisation, reload on change."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from streams.enrich import EnricherContext, EnrichmentMetrics, TrivyReportsEnricher
from streams.enrich._images import parse_image
from streams.enrich.trivy import parse_trivy_report, trivy_keys

from .helpers import FIXTURES, FakeClock, fixture_json, make_incident

ALPINE_DIGEST = "sha256:c19173c5ada610a5989151111163d28a67368362762534d8a8121ce95cf2bd5a"


def reports(tmp_path: Path) -> Path:
    directory = tmp_path / "trivy"
    shutil.copytree(FIXTURES / "trivy", directory)
    return directory


def enricher(
    directory: Path, clock: FakeClock | None = None, **kwargs: Any
) -> TrivyReportsEnricher:
    context = EnricherContext(
        metrics=EnrichmentMetrics(CollectorRegistry()), clock=clock or FakeClock()
    )
    return TrivyReportsEnricher("trivy", str(directory), context, **kwargs)


def enrich_all(trivy: TrivyReportsEnricher, *incidents: dict[str, Any]) -> list[dict[str, Any]]:
    async def scenario() -> list[dict[str, Any]]:
        results = [await trivy.enrich(incident) for incident in incidents]
        await trivy.close()
        return results

    return asyncio.run(scenario())


def test_report_summary_from_the_real_format() -> None:
    summary = parse_trivy_report(fixture_json("trivy/alpine-310.json"), 3, "alpine-310.json")
    assert summary["image"] == "alpine:3.10"
    assert summary["scanner"]["name"] == "Trivy"
    assert summary["scanned_at"] == "2024-05-01T12:20:30.000000005Z"
    assert summary["counts"]["Critical"] == 2
    assert summary["counts"]["High"] == 1
    assert summary["counts"]["Medium"] == 1
    assert summary["fixable"] == 3
    assert summary["critical_fixable"] == 2
    assert summary["top"][0] == {
        "id": "CVE-2019-14697",
        "severity": "Critical",
        "package": "musl",
        "installed_version": "1.1.22-r3",
        "fixed_version": "1.1.22-r4",
        "cvss_score": 9.8,
        "link": "https://avd.aquasec.com/nvd/cve-2019-14697",
    }


def test_keys_are_normalised_docker_references() -> None:
    keys = trivy_keys(fixture_json("trivy/alpine-310.json"), normalize=True)
    assert keys == {"docker.io/library/alpine:3.10", f"docker.io/library/alpine@{ALPINE_DIGEST}"}
    raw = trivy_keys(fixture_json("trivy/alpine-310.json"), normalize=False)
    assert raw == {"alpine:3.10", f"alpine@{ALPINE_DIGEST}"}


def test_normalisation_rules() -> None:
    nginx = parse_image("nginx")
    assert nginx is not None
    assert nginx.tag_key() == "docker.io/library/nginx:latest"
    hub = parse_image("index.docker.io/library/nginx:1.25")
    assert hub is not None
    assert hub.tag_key() == "docker.io/library/nginx:1.25"
    local = parse_image("localhost:5000/app@sha256:ab")
    assert local is not None
    assert (local.registry, local.path, local.tag, local.digest) == (
        "localhost:5000",
        "app",
        None,
        "sha256:ab",
    )
    assert parse_image("") is None


def test_matches_by_tag_with_or_without_registry_and_by_digest(tmp_path: Path) -> None:
    trivy = enricher(reports(tmp_path))
    short, full, digest, registry, unknown = enrich_all(
        trivy,
        make_incident(container_image_repository="alpine", container_image_tag="3.10"),
        make_incident(
            container_image_repository="docker.io/library/alpine", container_image_tag="3.10"
        ),
        make_incident(
            container_image_repository="alpine",
            container_image_tag="other",
            container_image_digest=ALPINE_DIGEST,
        ),
        make_incident(
            container_image_repository="registry.example.com:5000/payments/api",
            container_image_tag="2.4.1",
        ),
        make_incident(container_image_repository="alpine", container_image_tag="3.99"),
    )
    assert short["image"] == full["image"] == digest["image"] == "alpine:3.10"
    assert short["report"] == "alpine-310.json"
    assert registry["counts"]["High"] == 1
    assert registry["high_fixable"] == 1
    assert unknown == {"status": "unknown image", "image": "docker.io/library/alpine:3.99"}


def test_without_normalisation_references_compare_as_written(tmp_path: Path) -> None:
    trivy = enricher(reports(tmp_path), normalize=False)
    written, qualified = enrich_all(
        trivy,
        make_incident(container_image_repository="alpine", container_image_tag="3.10"),
        make_incident(
            container_image_repository="docker.io/library/alpine", container_image_tag="3.10"
        ),
    )
    assert written["image"] == "alpine:3.10"
    assert qualified["status"] == "unknown image"


def test_directory_is_reloaded_when_files_change(tmp_path: Path) -> None:
    directory = reports(tmp_path)
    clock = FakeClock()
    trivy = enricher(directory, clock, reload_interval=30.0)
    incident = make_incident(container_image_repository="alpine", container_image_tag="3.10")

    async def scenario() -> list[dict[str, Any]]:
        first = await trivy.enrich(incident)
        data = fixture_json("trivy/alpine-310.json")
        data["Results"][0]["Vulnerabilities"] = []
        data["CreatedAt"] = "2024-06-01T00:00:00Z"
        path = directory / "alpine-310.json"
        path.write_bytes(orjson.dumps(data))
        os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)
        unchanged_yet = await trivy.enrich(incident)  # within the interval: no rescan
        clock.advance(31)
        stale = await trivy.enrich(incident)  # starts a background reload, answers at once
        await asyncio.sleep(0.2)
        fresh = await trivy.enrich(incident)
        await trivy.close()
        return [first, unchanged_yet, stale, fresh]

    first, unchanged_yet, stale, fresh = asyncio.run(scenario())
    assert first["total"] == unchanged_yet["total"] == stale["total"] == 4
    assert fresh["total"] == 0
    assert fresh["scanned_at"] == "2024-06-01T00:00:00Z"


def test_bad_files_are_skipped_and_counted(tmp_path: Path) -> None:
    directory = reports(tmp_path)
    (directory / "broken.json").write_text("{not json")
    (directory / "other.json").write_text('{"kind": "sbom"}')
    metrics = EnrichmentMetrics(CollectorRegistry())
    trivy = TrivyReportsEnricher("trivy", str(directory), EnricherContext(metrics=metrics))
    (result,) = enrich_all(
        trivy, make_incident(container_image_repository="alpine", container_image_tag="3.10")
    )
    assert result["status"] == "scanned"
    assert metrics.value("source_errors_total", {"enricher": "trivy"}) == 2


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    trivy = enricher(tmp_path / "nope")

    async def scenario() -> str:
        try:
            await trivy.enrich(make_incident())
        except Exception as exc:
            return str(exc)
        finally:
            await trivy.close()
        return ""

    assert asyncio.run(scenario()).startswith("cannot load trivy reports in")
