"""`falco-correlator doctor` against the real broker, a real OpenSearch node and real local HTTP
servers playing Slack's Web API, a webhook receiver and Harbor (no mocks)."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web
from confluent_kafka import Producer

from streams.core.loader import load_rules
from streams.runtime.doctor import run_doctor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from enrich.helpers import FakeHarbor
from notifiers.servers import LocalServer, WebhookReceiver
from search_node import http_json

pytestmark = pytest.mark.integration

RULES = Path(__file__).resolve().parents[2] / "rules"
SLACK_TOKEN = "xoxb-doctor-token-1234567890"  # a test value, checked never to be printed

SHIPPED_CORRELATIONS = len(
    load_rules([str(Path(__file__).resolve().parents[2] / "rules")]).correlations
)


class Servers:
    """Fake Slack (auth.test), a webhook receiver and a fake Harbor on a background loop."""

    def __init__(self) -> None:
        self.webhook = WebhookReceiver()
        self.harbor = FakeHarbor(project_ids={"payments": 7, "dockerhub-proxy": 9})
        self.slack_calls: list[str] = []
        self.slack_posts: list[Any] = []
        self.loop = asyncio.new_event_loop()
        self._servers: list[LocalServer] = []
        self.urls: dict[str, str] = {}
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _auth_test(self, request: web.Request) -> web.Response:
        self.slack_calls.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != f"Bearer {SLACK_TOKEN}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        return web.json_response({"ok": True, "user": "falco-bot", "team": "Security"})

    async def _post_message(self, request: web.Request) -> web.Response:
        self.slack_posts.append(await request.json())
        return web.json_response({"ok": True, "channel": "C123", "ts": "1700000000.000100"})

    async def _start(self) -> None:
        slack = web.Application()
        slack.router.add_post("/api/auth.test", self._auth_test)
        slack.router.add_post("/api/chat.postMessage", self._post_message)
        for name, app in (
            ("slack", slack),
            ("webhook", self.webhook.app()),
            ("harbor", self.harbor.app()),
        ):
            server = LocalServer(app)
            await server.__aenter__()
            self._servers.append(server)
            self.urls[name] = server.url

    async def _stop(self) -> None:
        for server in self._servers:
            await server.__aexit__(None, None, None)

    def __enter__(self) -> Servers:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def servers() -> Iterator[Servers]:
    with Servers() as running:
        yield running


def falco_event(image: str, index: int) -> dict[str, Any]:
    return {
        "uuid": str(uuid.uuid4()),
        "time": "2026-12-01T10:00:00.000000001Z",
        "rule": "Terminal shell in container",
        "priority": "Notice",
        "source": "syscall",
        "hostname": "worker-1",
        "output": "A shell was spawned in a container",
        "tags": ["container", "shell"],
        "output_fields": {
            "container.id": f"c0ffee{index:06d}",
            "container.image.repository": image,
            "container.image.tag": "1.0",
            "k8s.ns.name": "payments",
            "k8s.pod.name": f"checkout-{index}",
            "proc.name": "bash",
        },
    }


@pytest.fixture
def events_topic(make_topic: Callable[..., str], kafka_bootstrap: str) -> Callable[..., str]:
    def create(images: list[str]) -> str:
        topic = make_topic("it-doctor-events", partitions=2)
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        for index, image in enumerate(images):
            producer.produce(topic, orjson.dumps(falco_event(image, index)))
        producer.produce(topic, b"not json at all")
        assert producer.flush(30) == 0
        return topic

    return create


def write_config(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "worker.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def base_config(bootstrap: str, topic: str, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": bootstrap},
        "topics": {"events": topic, "partitions": 2, "replication_factor": 1},
        "app": {
            "id": f"it-doctor-{uuid.uuid4().hex[:8]}",
            "rules": [str(RULES)],
            "store": "rocksdb",
            "data_dir": str(tmp_path / "data"),
        },
        **extra,
    }


def doctor(config: Path, env: dict[str, str], *args: str) -> tuple[int, list[str]]:
    out = io.StringIO()
    # generous: the checks wait on a broker and a search node shared with the rest of the suite
    code = run_doctor(
        config_path=str(config), env=env, out=out, timeout=20.0, send_test="--send-test" in args
    )
    return code, out.getvalue().splitlines()


def line(lines: list[str], status: str, fragment: str) -> str:
    found = [text for text in lines if text.startswith(status) and fragment in text]
    assert found, f"no {status} line with {fragment!r} in:\n" + "\n".join(lines)
    return found[0]


def test_a_healthy_deployment_passes_and_every_service_is_called_once(
    tmp_path: Path,
    servers: Servers,
    events_topic: Callable[..., str],
    kafka_bootstrap: str,
    opensearch_url: str,
    request: pytest.FixtureRequest,
) -> None:
    index = f"it-doctor-{uuid.uuid4().hex[:6]}"
    request.addfinalizer(lambda: http_json("DELETE", f"{opensearch_url}/{index}*"))
    request.addfinalizer(lambda: http_json("DELETE", f"{opensearch_url}/_index_template/{index}"))
    harbor_host = servers.urls["harbor"].removeprefix("http://")
    topic = events_topic([f"{harbor_host}/payments/checkout"] * 6 + ["alpine"] * 2)
    config = write_config(
        tmp_path,
        base_config(
            kafka_bootstrap,
            topic,
            tmp_path,
            notifiers=[
                {
                    "name": "slack",
                    "type": "slack",
                    "slack": {
                        "token": "${env:SLACK_BOT_TOKEN}",
                        "channel": "#security",
                        "base_url": servers.urls["slack"] + "/api/",
                    },
                },
                {
                    "name": "soar",
                    "type": "webhook",
                    "webhook": {"url": servers.urls["webhook"] + "/x"},
                },
                {
                    "name": "search",
                    "type": "opensearch",
                    "opensearch": {"url": opensearch_url, "index": index, "template_name": index},
                },
            ],
            enrichment=[
                {
                    "type": "harbor",
                    "harbor": {
                        "url": servers.urls["harbor"],
                        "username": "${env:HARBOR_ROBOT_NAME}",
                        "password": "${env:HARBOR_ROBOT_SECRET}",
                        "projects": [{"registry": "docker.io", "project": "dockerhub-proxy"}],
                    },
                },
                {"type": "risk"},
            ],
        ),
    )
    env = {
        "SLACK_BOT_TOKEN": SLACK_TOKEN,
        "HARBOR_ROBOT_NAME": servers.harbor.username,
        "HARBOR_ROBOT_SECRET": servers.harbor.password,
    }

    code, lines = doctor(config, env, "--send-test")

    assert code == 0, "\n".join(lines)
    assert not [text for text in lines if text.startswith("FAIL")]
    line(lines, "OK", "secret notifiers[0].slack.token: resolved from env:SLACK_BOT_TOKEN")
    line(lines, "OK", f"rules: {SHIPPED_CORRELATIONS} correlations")
    line(lines, "OK", f"topic {topic}: (events) 2 partitions")
    line(lines, "WARN", "1 of the last 9 messages are not Falco events")
    line(lines, "OK", "auth.test: bot falco-bot in team Security, posts to #security")
    line(lines, "OK", "notifier soar: test incident delivered")
    line(lines, "OK", "notifier search: " + opensearch_url)
    line(lines, "OK", "Harbor " + servers.urls["harbor"] + ": dockerhub-proxy readable")
    line(lines, "OK", "the 8 images of the recent events all map to Harbor projects")
    assert lines[-1].startswith("doctor: ")
    assert "0 FAIL" in lines[-1]
    assert len(servers.slack_calls) == 1
    line(lines, "OK", "notifier slack: test incident delivered")
    assert len(servers.slack_posts) == 1
    assert len(servers.webhook.accepted) == 1  # exactly one test incident
    assert orjson.loads(servers.webhook.accepted[0].body)["correlation"] == (
        "falco-correlator doctor test"
    )
    # secret values are never printed
    assert not any(SLACK_TOKEN in text or servers.harbor.password in text for text in lines)


def test_problems_are_failures_with_what_to_fix_and_secrets_stay_hidden(
    tmp_path: Path,
    servers: Servers,
    events_topic: Callable[..., str],
    kafka_bootstrap: str,
) -> None:
    topic = events_topic(["registry.corp/team-a/api"] * 5)
    config = write_config(
        tmp_path,
        base_config(
            kafka_bootstrap,
            topic,
            tmp_path,
            notifiers=[
                {
                    "name": "slack",
                    "type": "slack",
                    "slack": {
                        "token": "${env:SLACK_BOT_TOKEN}",
                        "channel": "#security",
                        "base_url": servers.urls["slack"] + "/api/",
                    },
                },
                {"name": "pager", "type": "webhook", "webhook": {"url": "${env:PAGER_URL}"}},
                {
                    "name": "soar",
                    "type": "webhook",
                    "webhook": {"url": servers.urls["webhook"] + "/x"},
                },
            ],
            enrichment=[
                {
                    "type": "harbor",
                    "harbor": {
                        "url": servers.urls["harbor"],
                        "username": "${env:HARBOR_ROBOT_NAME}",
                        "password": "${env:HARBOR_ROBOT_SECRET}",
                        "projects": [{"registry": "harbor.example.com", "project": "team-x"}],
                    },
                },
            ],
        ),
    )
    env = {
        "SLACK_BOT_TOKEN": "xoxb-revoked-token",
        "HARBOR_ROBOT_NAME": "robot$wrong",
        "HARBOR_ROBOT_SECRET": "wrong-secret-value",
    }

    code, lines = doctor(config, env)

    assert code == 1
    line(lines, "FAIL", "secret notifiers[1].webhook.url: secret environment variable PAGER_URL")
    line(lines, "FAIL", "notifier slack: auth.test: invalid_auth")
    line(lines, "WARN", "notifier soar: not called")
    assert len(servers.webhook.accepted) == 0  # no --send-test: webhooks are not called
    line(lines, "FAIL", "Harbor " + servers.urls["harbor"] + ": 401 for team-x")
    mismatch = line(lines, "WARN", "images from registry.corp (5 of 5)")
    assert "harbor.hosts" in mismatch
    assert not any("xoxb-revoked-token" in t or "wrong-secret-value" in t for t in lines)


def test_harbor_hosts_fix_the_registry_mismatch_and_an_old_state_dir_is_reported(
    tmp_path: Path,
    servers: Servers,
    events_topic: Callable[..., str],
    kafka_bootstrap: str,
) -> None:
    topic = events_topic(["registry.corp/payments/api"] * 4)
    (tmp_path / "data" / "old-tables").mkdir(parents=True)
    (tmp_path / "data" / "old-tables" / "000001.sst").write_bytes(b"x")
    config = write_config(
        tmp_path,
        base_config(
            kafka_bootstrap,
            topic,
            tmp_path,
            enrichment=[
                {
                    "type": "harbor",
                    "harbor": {
                        "url": servers.urls["harbor"],
                        "hosts": ["registry.corp"],
                        "username": "${env:HARBOR_ROBOT_NAME}",
                        "password": "${env:HARBOR_ROBOT_SECRET}",
                    },
                },
            ],
        ),
    )
    env = {
        "HARBOR_ROBOT_NAME": servers.harbor.username,
        "HARBOR_ROBOT_SECRET": servers.harbor.password,
    }
    code, lines = doctor(config, env)
    assert code == 0, "\n".join(lines)
    line(lines, "OK", "the 4 images of the recent events all map to Harbor projects")
    line(lines, "WARN", "holds table state, but the cluster has no changelog topic")
    line(lines, "WARN", "notifiers: none configured")


def test_unreachable_kafka_and_the_command_line_exit_code(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {
            "kafka": {"bootstrap_servers": "127.0.0.1:1"},
            "app": {"rules": [str(RULES)], "store": "memory"},
        },
    )
    # the environment wins over the file: this one must not point at the test broker
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "KAFKA_BOOTSTRAP_SERVERS" and not k.startswith("FC_")
    }
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli.main",
            "doctor",
            "--config",
            str(config),
            "--timeout",
            "2s",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=env,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL  kafka: 127.0.0.1:1 does not answer" in result.stdout
    assert "OK    rules:" in result.stdout
    assert time.monotonic() - started < 60
