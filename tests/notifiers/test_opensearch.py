"""The OpenSearch/Elasticsearch notifier without a cluster: documents and template (golden
files), configuration errors, and the bulk client against a scripted local server (batching,
item-level retries, auth, TLS). The real node: tests/integration/test_opensearch_sink.py.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
from collections import deque
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from streams.errors import ConfigError
from streams.notifiers import (
    NOTIFIER_TYPES,
    Delivered,
    DeliveryFailure,
    NotifierContext,
    NotifierMetrics,
    SearchIndexNotifier,
    load_notifiers,
)
from streams.notifiers._search_documents import (
    IndexSuffix,
    build_bulk_body,
    build_search_action,
    index_name,
)

from .servers import LocalServer, make_incident
from .tls import Certs, make_certs, server_context

GOLDEN = Path(__file__).parent / "golden"
FAST = {"backoff_base": "10ms", "backoff_max": "50ms", "timeout": "2s", "max_attempts": 4}
NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def falco_incident() -> dict[str, Any]:
    """An incident whose events carry the Falco field pairs that conflict when dots expand."""
    incident = make_incident(7)
    incident["events"][0]["output_fields"].update(
        {
            "container.image": "docker.io/library/alpine:3.20",
            "container.image.repository": "docker.io/library/alpine",
            "evt.time": 1685022245478445995,
            "evt.time.iso8601": "2023-05-25T13:44:05.478445995Z",
            "proc.aname[2]": "containerd-shim",
        }
    )
    return incident


def golden(name: str, value: Any) -> None:
    path = GOLDEN / name
    text = orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n"
    if os.environ.get("FC_UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{name} differs (FC_UPDATE_GOLDEN=1 rewrites)"


def notifier(options: dict[str, Any], **delivery: Any) -> SearchIndexNotifier:
    entry = {
        "name": "search",
        "type": "opensearch",
        "delivery": {**FAST, **delivery},
        "opensearch": options,
    }
    context = NotifierContext(metrics=NotifierMetrics(CollectorRegistry()))
    [built] = load_notifiers([entry], context)
    assert isinstance(built, SearchIndexNotifier)
    return built


# --- pure parts ----------------------------------------------------------------------------------


def test_document_flattens_falco_field_names_and_keeps_everything_else() -> None:
    action = build_search_action(
        falco_incident(),
        index_prefix="falco-incidents",
        suffix=IndexSuffix.DAILY,
        flatten=True,
        now=NOW,
    )
    assert action.index == "falco-incidents-2023.05.25"
    assert action.id == make_incident(7)["id"]
    golden("opensearch_document.json", action.document)
    fields = action.document["events"][0]["output_fields"]
    assert fields["container_image"] == "docker.io/library/alpine:3.20"
    assert fields["container_image_repository"] == "docker.io/library/alpine"
    assert action.document["context"]["k8s_ns_name"] == "default"
    assert action.document["@timestamp"] == "2023-05-25T13:44:05.478Z"


def test_document_without_flattening_is_the_incident_plus_timestamp() -> None:
    incident = falco_incident()
    action = build_search_action(
        incident, index_prefix="x", suffix=IndexSuffix.NONE, flatten=False, now=NOW
    )
    assert action.index == "x"
    assert {k: v for k, v in action.document.items() if k != "@timestamp"} == incident


def test_index_template_golden() -> None:
    config = notifier({"url": "http://127.0.0.1:9"}).config
    golden("opensearch_template.json", config.template())


@pytest.mark.parametrize(
    ("suffix", "expected"),
    [
        (IndexSuffix.DAILY, "falco-incidents-2023.05.25"),
        (IndexSuffix.MONTHLY, "falco-incidents-2023.05"),
        (IndexSuffix.ANNUALLY, "falco-incidents-2023"),
        (IndexSuffix.NONE, "falco-incidents"),
    ],
)
def test_index_name_takes_the_date_of_the_first_event(suffix: IndexSuffix, expected: str) -> None:
    # An update is detected days later; it must land in its incident's index to replace it.
    update = make_incident(1, status="update", count=9, detected_at="2023-05-28T00:00:00Z")
    assert index_name(update, "falco-incidents", suffix, NOW) == expected


def test_index_name_falls_back_to_now_without_a_usable_first_seen() -> None:
    incident = make_incident(1, first_seen=None, detected_at="garbage")
    assert index_name(incident, "p", IndexSuffix.DAILY, NOW) == "p-2026.01.02"


def test_bulk_body_versions_each_document_by_its_count() -> None:
    actions = [
        build_search_action(
            make_incident(i, count=i + 1),
            index_prefix="p",
            suffix=IndexSuffix.DAILY,
            flatten=True,
            now=NOW,
        )
        for i in range(2)
    ]
    lines = build_bulk_body(actions).decode().splitlines()
    assert len(lines) == 4
    meta = orjson.loads(lines[2])["index"]
    assert meta == {
        "_index": "p-2023.05.25",
        "_id": make_incident(1)["id"],
        "version": 2,
        "version_type": "external_gte",
    }
    assert orjson.loads(lines[3])["count"] == 2


def test_both_type_names_are_registered() -> None:
    assert NOTIFIER_TYPES["opensearch"] is SearchIndexNotifier
    assert NOTIFIER_TYPES["elasticsearch"] is SearchIndexNotifier


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "opensearch.url: required"),
        ({"url": "ftp://x"}, r"http\(s\) URL"),
        ({"url": "http://x", "index": "Falco"}, "not a valid index name"),
        ({"url": "http://x", "suffix": "weekly"}, "suffix"),
        ({"url": "http://x", "username": "u"}, "username and password go together"),
        (
            {"url": "http://x", "username": "u", "password": "p", "api_key": "k"},
            "either api_key or username/password",
        ),
        (
            {"url": "http://x", "password": "${env:FC_TEST_UNSET_SECRET}", "username": "u"},
            "FC_TEST_UNSET_SECRET is not set",
        ),
        ({"url": "http://x", "bulk_size": 5}, "unknown key"),
    ],
)
def test_configuration_errors_name_the_key(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        notifier(options)
    assert "notifiers[0].opensearch" in str(caught.value)


# --- the bulk client against a scripted server -------------------------------------------------


class BulkServer:
    """Answers `PUT _index_template/*` and `POST /_bulk` like a cluster, with scripted faults.

    `request_faults`: whole-request statuses, one per bulk request. `item_faults`: per document id,
    a queue of item statuses to answer before it is accepted.
    """

    def __init__(self) -> None:
        self.templates: dict[str, Any] = {}
        self.bulks: list[list[dict[str, Any]]] = []
        self.documents: dict[str, dict[str, Any]] = {}
        self.auth: list[str | None] = []
        self.request_faults: deque[int] = deque()
        self.item_faults: dict[str, deque[int]] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_put("/_index_template/{name}", self.template)
        app.router.add_post("/_bulk", self.bulk)
        return app

    async def template(self, request: web.Request) -> web.Response:
        self.auth.append(request.headers.get("Authorization"))
        self.templates[request.match_info["name"]] = await request.json()
        return web.json_response({"acknowledged": True})

    async def bulk(self, request: web.Request) -> web.Response:
        self.auth.append(request.headers.get("Authorization"))
        assert request.content_type == "application/x-ndjson"
        if self.request_faults:
            status = self.request_faults.popleft()
            return web.json_response({"error": "busy"}, status=status)
        lines = (await request.read()).decode().splitlines()
        batch, items = [], []
        for meta_line, doc_line in zip(lines[::2], lines[1::2], strict=True):
            meta, doc = orjson.loads(meta_line)["index"], orjson.loads(doc_line)
            batch.append(doc)
            faults = self.item_faults.get(meta["_id"])
            if faults:
                status = faults.popleft()
                error = {
                    "type": "mapper_parsing_exception" if status == 400 else "rejected",
                    "reason": f"scripted {status}",
                }
                items.append({"index": {"_id": meta["_id"], "status": status, "error": error}})
                continue
            self.documents[meta["_id"]] = doc
            items.append(
                {
                    "index": {
                        "_id": meta["_id"],
                        "_index": meta["_index"],
                        "status": 201,
                        "result": "created",
                    }
                }
            )
        self.bulks.append(batch)
        return web.json_response({"errors": False, "items": items})


def run_sends(
    server: BulkServer,
    options: dict[str, Any],
    incidents: list[dict[str, Any]],
    ssl_context: Any = None,
    **delivery: Any,
) -> tuple[list[Any], SearchIndexNotifier]:
    async def main() -> tuple[list[Any], SearchIndexNotifier]:
        async with LocalServer(server.app(), ssl_context=ssl_context) as local:
            sink = notifier({"url": local.url, **options}, **delivery)
            try:
                results = await asyncio.gather(*(sink.send(i) for i in incidents))
            finally:
                await sink.close()
            return list(results), sink

    return asyncio.run(main())


def test_concurrent_sends_share_one_bulk_request_after_one_template_install() -> None:
    server = BulkServer()
    incidents = [make_incident(i) for i in range(30)]
    results, sink = run_sends(server, {"flush_interval": "100ms"}, incidents)
    assert all(isinstance(r, Delivered) for r in results)
    assert sink.bulk_requests == 1
    assert [len(b) for b in server.bulks] == [30]
    assert list(server.templates) == ["falco-incidents"]
    assert server.templates["falco-incidents"]["index_patterns"] == ["falco-incidents-*"]


def test_batch_size_splits_bulk_requests() -> None:
    server = BulkServer()
    results, _ = run_sends(
        server, {"batch_size": 10, "flush_interval": "1s"}, [make_incident(i) for i in range(25)]
    )
    assert all(isinstance(r, Delivered) for r in results)
    assert sorted(len(b) for b in server.bulks) == [5, 10, 10]


def test_a_rejected_item_is_retried_alone_and_a_mapping_error_is_permanent() -> None:
    server = BulkServer()
    busy, broken, fine = make_incident(1), make_incident(2), make_incident(3)
    server.item_faults = {busy["id"]: deque([429, 503]), broken["id"]: deque([400])}
    results, _ = run_sends(server, {}, [busy, broken, fine])
    by_id = {r.incident_id: r for r in results}
    assert isinstance(by_id[busy["id"]], Delivered)
    assert by_id[busy["id"]].attempts == 3
    failure = by_id[broken["id"]]
    assert isinstance(failure, DeliveryFailure)
    assert failure.permanent
    assert "mapper_parsing_exception" in failure.last_error
    assert isinstance(by_id[fine["id"]], Delivered)
    assert by_id[fine["id"]].attempts == 1
    assert set(server.documents) == {busy["id"], fine["id"]}


def test_an_unavailable_cluster_is_retried_then_given_up_for_the_dead_letter_topic() -> None:
    server = BulkServer()
    server.request_faults = deque([503] * 10)
    [result], _ = run_sends(server, {}, [make_incident(1)], max_attempts=3)
    assert isinstance(result, DeliveryFailure)
    assert not result.permanent
    assert result.attempts == 3
    assert "HTTP 503" in result.last_error


def test_basic_auth_and_api_key_headers_never_show_the_secret_in_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FC_TEST_OS_PASSWORD", "s3cret-pw")
    server = BulkServer()
    run_sends(
        server, {"username": "falco", "password": "${env:FC_TEST_OS_PASSWORD}"}, [make_incident(1)]
    )
    expected = "Basic " + base64.b64encode(b"falco:s3cret-pw").decode()
    assert server.auth == [expected, expected]

    monkeypatch.setenv("FC_TEST_OS_KEY", "a2V5OnNlY3JldA==")
    keyed = BulkServer()
    keyed.request_faults = deque([401])
    [result], _ = run_sends(keyed, {"api_key": "${env:FC_TEST_OS_KEY}"}, [make_incident(1)])
    assert keyed.auth[-1] == "ApiKey a2V5OnNlY3JldA=="
    assert isinstance(result, DeliveryFailure)
    assert result.permanent  # 401: a wrong credential is not retried
    assert "a2V5OnNlY3JldA==" not in repr(result)


def test_https_with_a_private_ca(tmp_path: Path) -> None:
    certs: Certs = make_certs(tmp_path)
    server = BulkServer()
    results, _ = run_sends(
        server,
        {"tls": {"ca_file": str(certs.ca)}},
        [make_incident(1)],
        ssl_context=server_context(certs, require_client_cert=False),
    )
    assert isinstance(results[0], Delivered)
    untrusted = BulkServer()
    results, _ = run_sends(
        untrusted,
        {},
        [make_incident(1)],
        ssl_context=server_context(certs, require_client_cert=False),
    )
    assert isinstance(results[0], DeliveryFailure)
    assert "TLS verification failed" in results[0].last_error


def test_manage_template_false_never_touches_templates() -> None:
    server = BulkServer()
    results, _ = run_sends(server, {"manage_template": False}, [make_incident(1)])
    assert isinstance(results[0], Delivered)
    assert server.templates == {}
