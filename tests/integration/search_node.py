"""Helpers for the tests on a real OpenSearch node (`deploy/opensearch/opensearch.sh start`);
the `opensearch_url` fixture is in conftest.py."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

__all__ = ["DEFAULT_URL", "http_json", "opensearch_problem"]

DEFAULT_URL = "http://127.0.0.1:9200"


def http_json(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def opensearch_problem(url: str) -> str | None:
    """None when a node answers at `url` with a yellow or green cluster, else why not."""
    try:
        status, health = http_json(
            "GET", f"{url}/_cluster/health?wait_for_status=yellow&timeout=10s"
        )
    except OSError as exc:
        return str(exc)
    return None if status == 200 else f"HTTP {status}: {health}"
