"""The OpenSearch notifier against a real OpenSearch node (`deploy/opensearch/opensearch.sh start`)
and, for the dead-letter path, the real notify stage on the real Kafka broker. No mocks.

Outside CI a missing node skips these tests with a hint; in CI (`CI` set) it fails them.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry

from streams.notifiers import (
    Delivered,
    DeliveryFailure,
    NotifierContext,
    NotifierMetrics,
    SearchIndexNotifier,
    load_notifiers,
)
from streams.runtime.config import AppConfig, KafkaConfig, TopicsConfig, WorkerConfig
from streams.runtime.dead_letter import NOTIFIER_HEADER
from streams.runtime.notify import NotifyStage
from streams.runtime.notify_wiring import build_notify_stage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from notifiers.servers import make_incident
from search_node import http_json as _http

pytestmark = pytest.mark.integration

FAST = {"backoff_base": "50ms", "backoff_max": "200ms", "timeout": "5s", "max_attempts": 3}


@pytest.fixture
def index_prefix(opensearch_url: str) -> Iterator[str]:
    """A fresh index prefix and template name; both deleted afterwards."""
    prefix = f"it-incidents-{uuid.uuid4().hex[:10]}"
    yield prefix
    _http("DELETE", f"{opensearch_url}/{prefix}*?expand_wildcards=all")
    _http("DELETE", f"{opensearch_url}/_index_template/{prefix}")


def sink(url: str, prefix: str, **options: Any) -> SearchIndexNotifier:
    entry = {
        "name": "search",
        "type": "opensearch",
        "delivery": FAST,
        "opensearch": {
            "url": url,
            "index": prefix,
            "template_name": prefix,
            "replicas": 0,
            **options,
        },
    }
    [built] = load_notifiers([entry], NotifierContext(metrics=NotifierMetrics(CollectorRegistry())))
    assert isinstance(built, SearchIndexNotifier)
    return built


def send_all(notifier: SearchIndexNotifier, *batches: list[dict[str, Any]]) -> list[Any]:
    """Each batch concurrently, the batches one after the other; then close."""

    async def main() -> list[Any]:
        results: list[Any] = []
        try:
            for batch in batches:
                results.extend(await asyncio.gather(*(notifier.send(i) for i in batch)))
        finally:
            await notifier.close()
        return results

    return asyncio.run(main())


def search(url: str, prefix: str, query: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    _http("POST", f"{url}/{prefix}*/_refresh")
    body = {"size": 1000, "version": True, "query": query or {"match_all": {}}}
    status, answer = _http("POST", f"{url}/{prefix}*/_search", body)
    assert status == 200, answer
    return list(answer["hits"]["hits"])


def falco_pairs_incident(index: int) -> dict[str, Any]:
    incident = make_incident(index)
    incident["events"][0]["output_fields"].update(
        {
            "container.image": "docker.io/library/alpine:3.20",
            "container.image.repository": "docker.io/library/alpine",
            "evt.time": 1685022245478445995,
            "evt.time.iso8601": "2023-05-25T13:44:05.478445995Z",
        }
    )
    # the same field a number in one event and a string in the other
    incident["events"][1]["output_fields"]["user.loginuid"] = "unknown"
    return incident


def test_template_maps_incident_fields_and_falco_field_pairs_index_without_conflict(
    opensearch_url: str, index_prefix: str
) -> None:
    incident = falco_pairs_incident(1)
    [result] = send_all(sink(opensearch_url, index_prefix), [incident])
    assert isinstance(result, Delivered), result

    status, template = _http("GET", f"{opensearch_url}/_index_template/{index_prefix}")
    assert status == 200
    assert template["index_templates"][0]["index_template"]["index_patterns"] == [
        f"{index_prefix}-*"
    ]
    index = f"{index_prefix}-2023.05.25"
    status, mapping = _http("GET", f"{opensearch_url}/{index}/_mapping")
    assert status == 200, mapping
    properties = mapping[index]["mappings"]["properties"]
    assert properties["first_seen"]["type"] == "date_nanos"
    assert properties["@timestamp"]["type"] == "date"
    assert properties["id"]["type"] == "keyword"
    assert properties["output"]["type"] == "text"
    fields = properties["events"]["properties"]["output_fields"]["properties"]
    for name in ("container_image", "container_image_repository", "evt_time", "user_loginuid"):
        assert fields[name]["type"] == "keyword", name

    [hit] = search(opensearch_url, index_prefix, {"term": {"context.k8s_ns_name": "default"}})
    assert hit["_id"] == incident["id"]
    assert hit["_index"] == index


def test_an_update_replaces_its_incident_and_an_older_redelivery_does_not(
    opensearch_url: str, index_prefix: str
) -> None:
    new = make_incident(3)
    update = make_incident(
        3,
        status="update",
        count=4,
        last_seen="2023-05-25T13:59:00Z",
        detected_at="2023-05-26T00:01:00.000000000Z",
    )
    results = send_all(sink(opensearch_url, index_prefix), [new], [update], [new])
    assert all(isinstance(r, Delivered) for r in results), results
    assert "409" in results[2].detail

    [hit] = search(opensearch_url, index_prefix)
    assert hit["_id"] == new["id"]
    assert hit["_index"] == f"{index_prefix}-2023.05.25"  # the first event's day, not detection
    assert hit["_version"] == 4
    assert hit["_source"]["status"] == "update"
    assert hit["_source"]["count"] == 4


def test_many_concurrent_incidents_go_in_few_bulk_requests(
    opensearch_url: str, index_prefix: str
) -> None:
    incidents = [falco_pairs_incident(i) for i in range(250)]
    notifier = sink(opensearch_url, index_prefix, batch_size=100)
    results = send_all(notifier, incidents)
    assert all(isinstance(r, Delivered) for r in results)
    assert notifier.bulk_requests <= 5
    assert {hit["_id"] for hit in search(opensearch_url, index_prefix)} == {
        i["id"] for i in incidents
    }


def test_a_document_the_cluster_refuses_is_a_permanent_failure_and_the_rest_is_stored(
    opensearch_url: str, index_prefix: str
) -> None:
    broken = make_incident(11, last_seen="not a time")
    fine = make_incident(12)
    results = send_all(sink(opensearch_url, index_prefix), [broken, fine])
    by_id = {r.incident_id: r for r in results}
    failure = by_id[broken["id"]]
    assert isinstance(failure, DeliveryFailure)
    assert failure.permanent
    assert failure.attempts == 1
    assert "mapper_parsing_exception" in failure.last_error
    assert isinstance(by_id[fine["id"]], Delivered)
    assert [hit["_id"] for hit in search(opensearch_url, index_prefix)] == [fine["id"]]


# --- through the worker's notify stage: Kafka in, OpenSearch out, refusals dead-lettered ------


@pytest.fixture
def stage_config(
    kafka_bootstrap: str, make_topic: Callable[..., str], kafka_admin: Any
) -> Iterator[WorkerConfig]:
    config = WorkerConfig(
        kafka=KafkaConfig(bootstrap_servers=kafka_bootstrap),
        topics=replace(
            TopicsConfig(),
            incidents=make_topic("it-os-incidents", partitions=2),
            notify_dead_letter=make_topic("it-os-notify-dlq", partitions=1),
        ),
        app=replace(AppConfig(), id=f"it-os-{uuid.uuid4().hex[:10]}"),
        delivery={"commit_interval": "100ms", "shutdown_grace": "2s"},
    )
    yield config
    created = [n for n in kafka_admin.list_topics(timeout=10).topics if n.startswith(config.app.id)]
    if created:
        for future in kafka_admin.delete_topics(created, operation_timeout=30).values():
            future.result(timeout=30)


@asynccontextmanager
async def running(config: WorkerConfig) -> AsyncIterator[NotifyStage]:
    stage = build_notify_stage(config, registry=CollectorRegistry())
    task = asyncio.create_task(stage.run())
    try:
        yield stage
    finally:
        stage.stop()
        await asyncio.wait_for(task, 30)


async def dead_letters(config: WorkerConfig, want: int, deadline: float = 40.0) -> list[Any]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=config.kafka.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(config.topics.notify_dead_letter, 0)])
        records: list[Any] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        while len(records) < want and loop.time() < end:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


def test_notify_stage_indexes_incidents_and_dead_letters_what_opensearch_refuses(
    opensearch_url: str, index_prefix: str, stage_config: WorkerConfig
) -> None:
    good = [make_incident(i) for i in range(5)]
    refused = make_incident(99, first_seen="yesterday-ish")
    entry = {
        "name": "search",
        "type": "opensearch",
        "delivery": FAST,
        "opensearch": {
            "url": opensearch_url,
            "index": index_prefix,
            "template_name": index_prefix,
            "replicas": 0,
        },
    }
    config = replace(stage_config, notifiers=[entry])

    async def main() -> list[Any]:
        async with running(config) as stage:
            producer = AIOKafkaProducer(bootstrap_servers=config.kafka.bootstrap_servers)
            await producer.start()
            try:
                for incident in [*good, refused]:
                    await producer.send_and_wait(
                        config.topics.incidents,
                        orjson.dumps(incident),
                        key=incident["id"].encode(),
                    )
            finally:
                await producer.stop()
            records = await dead_letters(config, 1)
            loop = asyncio.get_running_loop()
            end = loop.time() + 30
            while loop.time() < end and (
                stage.metrics.value("sent", "search") < len(good)
                or stage.metrics.value("dead_lettered", "search") < 1
            ):
                await asyncio.sleep(0.1)
            assert stage.metrics.value("sent", "search") == len(good)
            assert stage.metrics.value("dead_lettered", "search") == 1
            return records

    [record] = asyncio.run(main())
    assert dict(record.headers)[NOTIFIER_HEADER] == b"search"
    parked = orjson.loads(record.value)
    assert parked["incident"]["id"] == refused["id"]
    assert parked["permanent"] is True
    assert "mapper_parsing_exception" in parked["last_error"]
    assert {hit["_id"] for hit in search(opensearch_url, index_prefix)} == {i["id"] for i in good}
