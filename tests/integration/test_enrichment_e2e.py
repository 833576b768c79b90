"""End to end on the real broker: an attack chain in a pod whose image has critical CVEs in a
(local, fake) Harbor yields an incident on the incidents topic with the CVE summary and a risk
score raised by them."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from enrich.helpers import FakeHarbor, LocalServer, fixture_json
from worker_harness import WorkerEnv, create_topics

pytestmark = pytest.mark.integration

RULES = """
- correlation: Shell then egress
  type: sequence
  by: [container.id]
  within: 1m
  steps:
    - {name: shell, condition: rule = "Terminal shell in container"}
    - {name: egress, condition: rule = "Outbound Connection to C2 Servers"}
  output: "shell then egress in {{ key['container.id'] }}"
"""


class HarborThread:
    """The fake Harbor served from its own event loop, beside the worker subprocess."""

    def __init__(self, harbor: FakeHarbor) -> None:
        self.harbor = harbor
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with LocalServer(self.harbor.app()) as server:
            self.url = server.url
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> HarborThread:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()


def _event(rule: str, at_ns: int, priority: str) -> dict[str, Any]:
    seconds, nanos = divmod(at_ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"
    return {
        "rule": rule,
        "priority": priority,
        "hostname": "worker-1",
        "time": stamp,
        "output": rule,
        "output_fields": {
            "container.id": "ee97d9c4186f",
            "container.image.repository": "harbor.example.com/payments/checkout-api",
            "container.image.tag": "1.4.2",
            "k8s.ns.name": "payments",
            "k8s.pod.name": "checkout-7d9f-x2",
        },
    }


def test_an_attack_in_a_vulnerable_image_is_enriched_with_cves_and_risk(
    worker_env: WorkerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    harbor = FakeHarbor()
    harbor.artifacts[("payments", "checkout-api", "1.4.2")] = fixture_json(
        "harbor-vulnerabilities.json"
    )
    monkeypatch.setenv("HARBOR_ROBOT_NAME", harbor.username)
    monkeypatch.setenv("HARBOR_ROBOT_SECRET", harbor.password)
    rules = worker_env.rules_file("chain.yaml", RULES)
    with HarborThread(harbor) as served:
        enrichment = {
            "deadline": "3s",
            "enrichers": [
                {
                    "type": "harbor",
                    "harbor": {
                        "url": served.url,
                        "username": "${env:HARBOR_ROBOT_NAME}",
                        "password": "${env:HARBOR_ROBOT_SECRET}",
                        "hosts": ["harbor.example.com"],
                    },
                },
                {"type": "risk"},
            ],
        }
        settings = worker_env.settings([rules], lateness="1s", extra={"enrichment": enrichment})
        create_topics(worker_env.admin, settings.topics.names(), settings.partitions)
        worker_env.worker(settings).start()
        producer = worker_env.producer(settings)
        now = time.time_ns()
        producer.send(_event("Terminal shell in container", now, "Notice"))
        producer.send(_event("Outbound Connection to C2 Servers", now + 10**9, "Critical"))
        reader = worker_env.reader(settings.topics.incidents)
        [message] = reader.wait_count(1, timeout=40)

    incident = reader.values()[0]
    vulns = incident["enrichment"]["harbor"]
    assert vulns["status"] == "scanned"
    assert vulns["counts"]["Critical"] > 0
    assert vulns["critical_fixable"] > 0
    assert vulns["top"][0]["severity"] == "Critical"
    risk = incident["enrichment"]["risk"]
    factors = {f["factor"]: f["points"] for f in risk["factors"]}
    assert factors.get("critical_fixable", 0) > 0, risk
    assert risk["score"] > factors["critical_fixable"]  # severity adds to it
    assert harbor.vulnerability_requests >= 1
    assert message is not None
