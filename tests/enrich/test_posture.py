"""Posture: kube-bench and kube-hunter JSON, from files and a real local HTTP server."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from streams.enrich import EnricherContext, EnrichmentMetrics, PostureEnricher, load_enrichment
from streams.enrich.posture import parse_kube_bench, parse_kube_hunter
from streams.errors import ConfigError

from .helpers import FIXTURES, FakeClock, LocalServer, fixture_json, make_incident


def context(clock: FakeClock | None = None) -> EnricherContext:
    return EnricherContext(
        metrics=EnrichmentMetrics(CollectorRegistry()), clock=clock or FakeClock()
    )


def enrich(posture: PostureEnricher, *incidents: dict[str, Any]) -> list[dict[str, Any]]:
    async def scenario() -> list[dict[str, Any]]:
        results = [await posture.enrich(incident) for incident in incidents]
        await posture.close()
        return results

    return asyncio.run(scenario())


def test_kube_bench_parse_keeps_failed_checks() -> None:
    parsed = parse_kube_bench(fixture_json("kube-bench/worker-1.json"), "worker-1.json")
    assert parsed["benchmark"] == "cis-1.8"
    assert (parsed["passed"], parsed["warned"], len(parsed["failed"])) == (1, 1, 3)
    assert parsed["failed"][0]["id"] == "4.1.1"
    assert parsed["failed"][0]["node_type"] == "node"
    assert parsed["failed"][0]["section"] == "4.1"
    assert parsed["failed"][0]["scored"] is True
    bare_list = parse_kube_bench(fixture_json("kube-bench/control-plane-1.json"), "cp.json")
    assert [c["id"] for c in bare_list["failed"]] == ["1.2.1"]
    with pytest.raises(ValueError, match="not kube-bench JSON output"):
        parse_kube_bench({"vulnerabilities": []}, "x.json")


def test_kube_hunter_parse_links_the_knowledge_base() -> None:
    findings = parse_kube_hunter(fixture_json("kube-hunter.json"), "kh.json")
    assert len(findings) == 3
    assert findings[0] == {
        "vid": "KHV036",
        "vulnerability": "Anonymous Authentication",
        "category": "Remote Code Execution",
        "severity": "high",
        "location": "10.0.0.11:10250",
        "hunter": "Kubelet Secure Ports Hunter",
        "evidence": "The following containers have been exposed: nginx, calico-node",
        "kb": "https://aquasecurity.github.io/kube-hunter/kb/khv036",
    }


def test_failed_checks_of_the_node_from_one_file_per_node(tmp_path: Path) -> None:
    directory = tmp_path / "bench"
    shutil.copytree(FIXTURES / "kube-bench", directory)
    posture = PostureEnricher("posture", context(), kube_bench_dir=str(directory), max_checks=2)
    worker, fqdn, control, unknown = enrich(
        posture,
        make_incident(),
        make_incident(hostname="WORKER-1.cluster.local"),
        make_incident(hostname="control-plane-1"),
        make_incident(hostname="worker-9"),
    )
    assert worker["node"] == "worker-1"
    assert worker["cis"]["failed"] == 3
    assert worker["cis"]["warned"] == 1
    assert [c["id"] for c in worker["cis"]["checks"]] == ["4.1.1", "4.2.1"]
    assert worker["cis"]["truncated"] == 1
    assert "exposure" not in worker
    assert fqdn["cis"]["failed"] == 3
    assert control["cis"]["checks"][0]["id"] == "1.2.1"
    assert unknown["cis"] == {"status": "no results for node"}


def test_node_name_field_wins_over_hostname(tmp_path: Path) -> None:
    posture = PostureEnricher(
        "posture",
        context(),
        kube_bench=[("node-a", str(FIXTURES / "kube-bench/worker-1.json"))],
    )
    incident = make_incident(hostname="falco-xczjd")
    incident["events"][0]["output_fields"]["k8s.node.name"] = "node-a"
    (result,) = enrich(posture, incident)
    assert result["node"] == "node-a"
    assert result["cis"]["failed"] == 3


def test_kube_hunter_findings_on_the_node_by_address_or_name() -> None:
    posture = PostureEnricher(
        "posture",
        context(),
        kube_hunter=[str(FIXTURES / "kube-hunter.json")],
        nodes={"worker-1": ["10.0.0.11"]},
    )
    worker, by_ip_name, other = enrich(
        posture,
        make_incident(),
        make_incident(hostname="10.0.0.12"),
        make_incident(hostname="worker-2"),
    )
    assert worker["exposure"]["count"] == 2
    assert worker["exposure"]["by_severity"] == {"high": 1, "medium": 1}
    assert [f["vid"] for f in worker["exposure"]["findings"]] == ["KHV036", "KHV044"]
    assert by_ip_name["exposure"]["count"] == 1
    assert other["exposure"] == {"count": 0, "by_severity": {}, "findings": []}


def test_sources_from_urls_are_refreshed_periodically_and_survive_failures() -> None:
    bench = fixture_json("kube-bench/worker-1.json")
    state: dict[str, Any] = {"hunter": fixture_json("kube-hunter.json"), "fail": False}
    seen_auth: list[str | None] = []

    async def handle(request: web.Request) -> web.Response:
        seen_auth.append(request.headers.get("Authorization"))
        if state["fail"]:
            return web.Response(status=503)
        if request.path == "/bench/worker-1.json":
            return web.json_response(bench)
        return web.json_response(state["hunter"])

    async def scenario() -> list[dict[str, Any]]:
        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        clock = FakeClock()
        async with LocalServer(app) as server:
            section = [
                {
                    "type": "posture",
                    "posture": {
                        "kube_bench": [
                            {"node": "worker-1", "source": f"{server.url}/bench/worker-1.json"}
                        ],
                        "kube_hunter": [f"{server.url}/hunter.json"],
                        "nodes": {"worker-1": ["10.0.0.11"]},
                        "refresh": "5m",
                        "token": "${env:POSTURE_TOKEN}",
                    },
                }
            ]
            ctx = EnricherContext(
                metrics=EnrichmentMetrics(CollectorRegistry()),
                clock=clock,
                env={"POSTURE_TOKEN": "t0k"},
            )
            pipeline = load_enrichment(section, context=ctx, env={"POSTURE_TOKEN": "t0k"})
            results = []

            async def step() -> None:
                incident = await pipeline.enrich(make_incident())
                results.append(incident["enrichment"]["posture"])

            await step()
            state["hunter"] = {"nodes": [], "services": [], "vulnerabilities": []}
            clock.advance(301)
            await step()  # stale: refresh starts in the background
            await asyncio.sleep(0.2)
            await step()  # refreshed
            state["fail"] = True
            clock.advance(301)
            await step()
            await asyncio.sleep(0.2)
            await step()  # both sources fail: last good data, errors listed
            await pipeline.close()
            return results

    results = asyncio.run(scenario())
    assert [r["exposure"]["count"] for r in results] == [2, 2, 0, 0, 0]
    assert all(r["cis"]["failed"] == 3 for r in results)
    assert "source_errors" not in results[2]
    assert len(results[4]["source_errors"]) == 2
    assert "HTTP 503" in results[4]["source_errors"][0]
    assert set(seen_auth) == {"Bearer t0k"}


def test_unreadable_sources_on_first_load_are_an_error(tmp_path: Path) -> None:
    posture = PostureEnricher("posture", context(), kube_hunter=[str(tmp_path / "none.json")])

    async def scenario() -> str:
        try:
            await posture.enrich(make_incident())
        except Exception as exc:
            return str(exc)
        finally:
            await posture.close()
        return ""

    assert asyncio.run(scenario()).startswith("cannot load posture reports:")


def test_broken_report_is_skipped_while_others_load(tmp_path: Path) -> None:
    bad = tmp_path / "kh.json"
    bad.write_bytes(orjson.dumps({"nodes": []}))
    posture = PostureEnricher(
        "posture",
        context(),
        kube_bench=[("worker-1", str(FIXTURES / "kube-bench/worker-1.json"))],
        kube_hunter=[str(bad)],
    )
    (result,) = enrich(posture, make_incident())
    assert result["cis"]["failed"] == 3
    assert "not a kube-hunter JSON report" in result["source_errors"][0]


def test_config_needs_a_source() -> None:
    with pytest.raises(ConfigError, match=r"enrichment\[0\].posture: give kube_bench"):
        load_enrichment([{"type": "posture"}], metrics=EnrichmentMetrics(CollectorRegistry()))
