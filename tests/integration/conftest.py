"""Fixtures for tests against a real Kafka broker (`deploy/kafka/kafka.sh start`).

Outside CI a missing broker skips these tests with a hint; in CI (`CI` set) it fails them, because
a skipped integration suite would hide that the broker never started.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported, not in __all__
    AdminClient,
    NewTopic,
)

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
_PROBE_TIMEOUT_S = 10.0
_ADMIN_TIMEOUT_S = 30.0


def _broker_error(bootstrap: str) -> str | None:
    """None when a cluster answers a metadata request at `bootstrap`, else why not."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        admin.list_topics(timeout=_PROBE_TIMEOUT_S)
    except KafkaException as exc:
        return str(exc)
    return None


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Bootstrap servers of a broker that answers; skips (fails in CI) when there is none."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP)
    error = _broker_error(bootstrap)
    if error is not None:
        message = (
            f"no Kafka broker answers at {bootstrap} ({error}); "
            "start one with `deploy/kafka/kafka.sh start` or set KAFKA_BOOTSTRAP_SERVERS"
        )
        if os.environ.get("CI", "").lower() not in {"", "0", "false"}:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return bootstrap


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


@pytest.fixture
def make_topic(kafka_admin: AdminClient) -> Iterator[Callable[..., str]]:
    """Creates uniquely named topics (`make_topic(partitions=3)`), deleted after the test."""
    created: list[str] = []

    def create(prefix: str = "it", *, partitions: int = 3, replication_factor: int = 1) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        futures = kafka_admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=replication_factor)],
            operation_timeout=_ADMIN_TIMEOUT_S,
        )
        futures[name].result(timeout=_ADMIN_TIMEOUT_S)
        created.append(name)
        return name

    yield create

    if created:
        futures = kafka_admin.delete_topics(created, operation_timeout=_ADMIN_TIMEOUT_S)
        for future in futures.values():
            future.result(timeout=_ADMIN_TIMEOUT_S)


@pytest.fixture
def worker_env(kafka_bootstrap: str, kafka_admin: AdminClient, tmp_path: Path) -> Iterator[Any]:
    """Unique app ids and topics for one test's workers; stopped and deleted afterwards."""
    from worker_harness import worker_environment

    with worker_environment(kafka_bootstrap, kafka_admin, tmp_path) as env:
        yield env


@pytest.fixture(scope="session")
def opensearch_url() -> str:
    """URL of an OpenSearch node that answers (OPENSEARCH_URL, default 127.0.0.1:9200); skips
    (fails in CI) when there is none: start one with `deploy/opensearch/opensearch.sh start`."""
    from search_node import DEFAULT_URL, opensearch_problem

    url = os.environ.get("OPENSEARCH_URL", DEFAULT_URL).rstrip("/")
    problem = opensearch_problem(url)
    if problem is not None:
        message = (
            f"no OpenSearch node answers at {url} ({problem}); start one with "
            "`deploy/opensearch/opensearch.sh start` or set OPENSEARCH_URL"
        )
        if os.environ.get("CI", "").lower() not in {"", "0", "false"}:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return url
