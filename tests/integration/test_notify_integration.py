"""The notify stage against the real broker and real local HTTP servers (no mocks).

Each test produces incident records to a fresh incidents topic, runs the stage in-process
(its own consumer group, as in the worker) and checks what the servers received, what landed in
the dead-letter topic and what was committed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]
from prometheus_client import CollectorRegistry

from streams.runtime.config import AppConfig, KafkaConfig, TopicsConfig, WorkerConfig
from streams.runtime.dead_letter import NOTIFIER_HEADER
from streams.runtime.notify import NotifyStage
from streams.runtime.notify_wiring import build_notify_stage

# The real local servers of the notifier tests; tests/integration is not a package, so they are
# imported as pytest itself names them when it collects tests/notifiers (`notifiers.<module>`).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from notifiers.fake_slack import FakeSlack
from notifiers.servers import (
    LocalServer,
    WebhookReceiver,
    closed_port_url,
    make_incident,
)

pytestmark = pytest.mark.integration

_DEADLINE_S = 40.0
FAST = {"backoff_base": "50ms", "backoff_max": "200ms", "timeout": "1s"}
CLI = [sys.executable, "-m", "streams.cli.main"]
RULES = Path(__file__).resolve().parents[2] / "rules"


@pytest.fixture
def worker_config(
    kafka_bootstrap: str, make_topic: Callable[..., str], kafka_admin: Any
) -> Iterator[WorkerConfig]:
    """A config with fresh topics and app id; the topics the stage creates (Slack threads) and
    the worker's internal ones are deleted afterwards."""
    config = WorkerConfig(
        kafka=KafkaConfig(bootstrap_servers=kafka_bootstrap),
        topics=replace(
            TopicsConfig(),
            incidents=make_topic("it-incidents", partitions=3),
            notify_dead_letter=make_topic("it-notify-dlq", partitions=2),
        ),
        app=replace(AppConfig(), id=f"it-notify-{uuid.uuid4().hex[:10]}"),
        delivery={"commit_interval": "100ms", "shutdown_grace": "2s"},
    )
    yield config
    topics = kafka_admin.list_topics(timeout=10).topics
    created = [name for name in topics if name.startswith(f"{config.app.id}-")]
    if created:
        for future in kafka_admin.delete_topics(created, operation_timeout=30).values():
            future.result(timeout=30)


async def produce(config: WorkerConfig, incidents: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=config.kafka.bootstrap_servers)
    await producer.start()
    try:
        for incident in incidents:
            await producer.send_and_wait(
                config.topics.incidents, orjson.dumps(incident), key=incident["id"].encode()
            )
    finally:
        await producer.stop()


@asynccontextmanager
async def running(config: WorkerConfig) -> AsyncIterator[NotifyStage]:
    stage = build_notify_stage(config, registry=CollectorRegistry())
    task = asyncio.create_task(stage.run())
    try:
        yield stage
    finally:
        stage.stop()
        await asyncio.wait_for(task, 30)


async def eventually(check: Callable[[], bool], what: str, deadline: float = _DEADLINE_S) -> None:
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def partitions(config: WorkerConfig, topic: str) -> list[TopicPartition]:
    admin = AdminClient({"bootstrap.servers": config.kafka.bootstrap_servers})
    metadata = admin.list_topics(topic, timeout=10).topics[topic]
    return [TopicPartition(topic, p) for p in sorted(metadata.partitions)]


async def committed_all(config: WorkerConfig, topic: str, group: str) -> bool:
    """The group's committed offsets are the topic's end offsets on every partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=config.kafka.bootstrap_servers, group_id=group)
    await consumer.start()
    try:
        tps = partitions(config, topic)
        end = await consumer.end_offsets(tps)
        behind = [tp for tp in tps if (await consumer.committed(tp) or 0) != end[tp]]
        return bool(tps) and not behind
    finally:
        await consumer.stop()


async def until_committed(config: WorkerConfig, topic: str, group: str) -> None:
    end = time.monotonic() + _DEADLINE_S
    while not await committed_all(config, topic, group):
        assert time.monotonic() < end, f"group {group} did not commit {topic} to its end"
        await asyncio.sleep(0.2)


async def read_all(config: WorkerConfig, topic: str) -> list[Any]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=config.kafka.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps = partitions(config, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        records: list[Any] = []
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


def key_id(headers: dict[str, str]) -> str:
    return headers["Idempotency-Key"].split(":")[0]


# --- (a) outage: 429 with Retry-After, then 500s, then slow ------------------------------------


def test_every_incident_reaches_slack_after_429s_500s_and_slowness(
    worker_config: WorkerConfig,
) -> None:
    incidents = [make_incident(i) for i in range(8)]

    async def main() -> FakeSlack:
        faults = ["429", "429", "500", "500", "500", "slow", "slow"]
        async with FakeSlack(faults=faults, retry_after=1, slow_seconds=1.5) as slack:
            entry = {
                "name": "slack",
                "type": "slack",
                "delivery": FAST | {"rate": 20, "burst": 5, "max_attempts": 15},
                "slack": {"webhook_url": slack.webhook_url},
            }
            config = replace(worker_config, notifiers=[entry])
            async with running(config) as stage:
                await produce(config, incidents)
                await eventually(
                    lambda: (
                        {key_id(r.headers) for r in slack.accepted} == {i["id"] for i in incidents}
                        and stage.metrics.value("sent", "slack") == len(incidents)
                    ),
                    "every incident accepted",
                )
                await until_committed(config, config.topics.incidents, stage.group_id)
            assert stage.metrics.value("retried", "slack") >= 7
            assert stage.metrics.value("failed", "slack") == 0
            return slack

    slack = asyncio.run(main())

    assert slack.problems == []
    # Retry-After: after each 429 nothing reaches the server for a second.
    for index, request in enumerate(slack.requests[:-1]):
        if request.outcome == "429":
            assert slack.requests[index + 1].at - request.at >= 0.95
    # Duplicates (a slow answer timed out, then a retry) carry the same idempotency key.
    keys = Counter(r.headers["Idempotency-Key"] for r in slack.accepted)
    assert set(keys) == {f"{i['id']}:new:1" for i in incidents}


# --- (b) bot mode: updates in the incident's thread, threads survive a restart -----------------


def test_bot_mode_posts_updates_in_the_thread_of_their_incident(
    worker_config: WorkerConfig,
) -> None:
    first = make_incident(1)
    update = make_incident(1, status="update", count=2)
    later = make_incident(1, status="update", count=3)
    other = make_incident(2)

    async def main() -> FakeSlack:
        async with FakeSlack() as slack:
            entry = {
                "name": "bot",
                "type": "slack",
                "delivery": FAST | {"rate": 50, "burst": 5},
                "slack": {"token": slack.token, "channel": "#sec", "base_url": slack.api_url},
            }
            config = replace(worker_config, notifiers=[entry])
            async with running(config):
                await produce(config, [first, update, other])
                await eventually(lambda: len(slack.accepted) == 3, "three messages")
            # A new stage knows the thread only from the compacted topic.
            async with running(config) as stage:
                await produce(config, [later, first])  # `first` again: a redelivery
                await eventually(lambda: len(slack.accepted) == 4, "the later update")
                await until_committed(config, config.topics.incidents, stage.group_id)
            return slack

    slack = asyncio.run(main())

    assert slack.problems == []
    by_text = {r.ts: r for r in slack.accepted}
    news = [r for r in slack.accepted if "thread_ts" not in r.payload]
    replies = [r for r in slack.accepted if "thread_ts" in r.payload]
    assert len(news) == 2
    assert len(replies) == 2
    thread = next(r.ts for r in news if first["id"] in str(r.payload))
    assert [r.payload["thread_ts"] for r in replies] == [thread, thread]
    assert "2 in total" in replies[0].payload["text"]
    assert "3 in total" in replies[1].payload["text"]
    assert by_text[thread].payload["channel"] == "#sec"


# --- (c) webhook: HMAC signature and idempotency keys ------------------------------------------


def test_webhook_requests_are_signed_and_duplicates_share_a_key(
    worker_config: WorkerConfig,
) -> None:
    incidents = [make_incident(i) for i in range(10)]
    incidents += [make_incident(3, status="update", count=2)]
    receiver = WebhookReceiver(secret="hmac-s3cret", faults=["500", "slow", "503|1"])

    async def main() -> None:
        async with LocalServer(receiver.app()) as server:
            entry = {
                "name": "soar",
                "type": "webhook",
                "delivery": FAST | {"timeout": "500ms"},
                "webhook": {"url": f"{server.url}/hook", "hmac_secret": "${env:IT_HMAC}"},
            }
            config = replace(worker_config, notifiers=[entry])
            os.environ["IT_HMAC"] = "hmac-s3cret"
            try:
                async with running(config) as stage:
                    await produce(config, incidents)
                    await eventually(
                        lambda: stage.metrics.value("sent", "soar") == len(incidents), "all sent"
                    )
                    await until_committed(config, config.topics.incidents, stage.group_id)
            finally:
                del os.environ["IT_HMAC"]

    asyncio.run(main())

    assert receiver.bad_signatures == 0
    expected = {f"{i['id']}:{i['status']}:{i['count']}" for i in incidents}
    keys = receiver.keys()
    assert set(keys) == expected
    # The slow request was accepted but timed out client-side: its retry has the same key.
    assert sum(keys.values()) >= len(expected)
    for delivery in receiver.accepted:
        body = orjson.loads(delivery.body)
        assert delivery.key == f"{body['id']}:{body['status']}:{body['count']}"


# --- (d) routing ---------------------------------------------------------------------------------


def test_each_notifier_gets_exactly_the_incidents_its_route_selects(
    worker_config: WorkerConfig,
) -> None:
    cases = {
        "crit-prod": make_incident(1, severity="Critical", namespace="prod-api"),
        "warn-prod": make_incident(2, severity="Warning", namespace="prod-web"),
        "crit-dev": make_incident(3, severity="Critical", namespace="dev"),
        "update-prod": make_incident(1, status="update", count=2, namespace="prod-api"),
        "notice-k8s": make_incident(4, severity="Notice", namespace="dev", tags=["k8s"]),
        "other-corr": make_incident(5, correlation="Crypto miner", severity="Error"),
    }
    routes = {
        "critical": {"min_severity": "critical"},
        "prod": {"namespaces": ["prod-*"], "statuses": ["new"]},
        "updates": {"statuses": ["update"]},
        "k8s": {"tags": ["k8s"]},
        "shells": {"correlations": ["Shell then *"], "min_severity": "warning"},
    }
    expected = {
        "critical": {"crit-prod", "crit-dev", "update-prod"},
        "prod": {"crit-prod", "warn-prod"},
        "updates": {"update-prod"},
        "k8s": {"notice-k8s"},
        "shells": {"crit-prod", "warn-prod", "crit-dev", "update-prod"},
    }
    receiver = WebhookReceiver()

    async def main() -> None:
        async with LocalServer(receiver.app()) as server:
            entries = [
                {
                    "name": name,
                    "type": "webhook",
                    "route": route,
                    "delivery": FAST,
                    "webhook": {"url": f"{server.url}/{name}"},
                }
                for name, route in routes.items()
            ]
            config = replace(worker_config, notifiers=entries)
            total = sum(len(v) for v in expected.values())
            async with running(config) as stage:
                await produce(config, list(cases.values()))
                await eventually(lambda: len(receiver.accepted) >= total, "routed deliveries")
                await until_committed(config, config.topics.incidents, stage.group_id)

    asyncio.run(main())

    label = {orjson.dumps([i["id"], i["status"]]): name for name, i in cases.items()}
    received: dict[str, list[str]] = {name: [] for name in routes}
    for delivery in receiver.accepted:
        body = orjson.loads(delivery.body)
        received[delivery.path.strip("/")].append(label[orjson.dumps([body["id"], body["status"]])])
    assert {name: sorted(got) for name, got in received.items()} == {
        name: sorted(want) for name, want in expected.items()
    }


# --- (e) a notifier down for good: dead-letter topic, then `redeliver` -------------------------


class PortServer(LocalServer):
    """A LocalServer on a given port: the receiver "comes back" at the URL it had."""

    def __init__(self, app: web.Application, port: int) -> None:
        super().__init__(app)
        self.wanted_port = port

    async def __aenter__(self) -> PortServer:
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.wanted_port))
        self.port = self.wanted_port
        await web.SockSite(self._runner, sock).start()
        return self


def _redeliver(config_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "redeliver", "--config", str(config_file), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).parents[2],
    )


def _config_file(tmp_path: Path, config: WorkerConfig) -> Path:
    path = tmp_path / "worker.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap_servers": config.kafka.bootstrap_servers},
                "topics": {
                    "incidents": config.topics.incidents,
                    "notify_dead_letter": config.topics.notify_dead_letter,
                },
                "app": {"id": config.app.id},
                "notifiers": config.notifiers,
                "delivery": config.delivery,
            }
        )
    )
    return path


def test_a_dead_notifier_dead_letters_and_redeliver_sends_once_it_is_back(
    worker_config: WorkerConfig, tmp_path: Path
) -> None:
    incidents = [make_incident(i) for i in range(4)]
    urls = {"soar": closed_port_url("/soar"), "siem": closed_port_url("/siem")}
    entries = [
        {
            "name": name,
            "type": "webhook",
            "delivery": FAST | {"max_attempts": 2},
            "webhook": {"url": url},
        }
        for name, url in urls.items()
    ]
    config = replace(worker_config, notifiers=entries)
    config_file = _config_file(tmp_path, config)
    dlq = config.topics.notify_dead_letter

    async def stage_run() -> list[Any]:
        async with running(config) as stage:
            await produce(config, incidents)
            await eventually(
                lambda: (
                    stage.metrics.value("dead_lettered", "siem") == len(incidents)
                    and stage.metrics.value("dead_lettered", "soar") == len(incidents)
                ),
                "dead letters",
            )
            await until_committed(config, config.topics.incidents, stage.group_id)
        return await read_all(config, dlq)

    records = asyncio.run(stage_run())

    assert len(records) == 2 * len(incidents)
    for record in records:
        value = orjson.loads(record.value)
        assert dict(record.headers)[NOTIFIER_HEADER] == value["notifier"].encode()
        assert record.key == value["incident"]["id"].encode()
        assert value["attempts"] == 2
        assert value["last_error"].startswith("ClientConnectorError")
        assert value["failed_at"].endswith("Z")
    assert Counter(orjson.loads(r.value)["notifier"] for r in records) == {"soar": 4, "siem": 4}

    # Still down: everything fails again and stays in the topic.
    still_down = _redeliver(config_file)
    assert still_down.returncode == 1, still_down.stderr
    assert "0 delivered, 8 failed again" in still_down.stderr

    soar, siem = WebhookReceiver(), WebhookReceiver()

    async def serve(receiver: WebhookReceiver, name: str, *args: str) -> Any:
        port = int(urls[name].rsplit(":", 1)[1].split("/")[0])
        async with PortServer(receiver.app(), port):
            return await asyncio.to_thread(_redeliver, config_file, *args)

    only_soar = asyncio.run(serve(soar, "soar", "--notifier", "soar"))
    assert only_soar.returncode == 0, only_soar.stderr
    assert "4 delivered, 0 failed again (dead-lettered again), 4 of other notifiers kept" in (
        only_soar.stderr
    )
    assert sorted(soar.keys()) == sorted(f"{i['id']}:new:1" for i in incidents)

    rest = asyncio.run(serve(siem, "siem"))
    assert rest.returncode == 0, rest.stderr
    assert "4 delivered, 0 failed again" in rest.stderr
    assert sorted(siem.keys()) == sorted(f"{i['id']}:new:1" for i in incidents)
    assert sum(soar.keys().values()) == len(incidents)  # soar's records were not sent again

    nothing_left = _redeliver(config_file)
    assert nothing_left.returncode == 0, nothing_left.stderr
    assert "0 delivered, 0 failed again" in nothing_left.stderr


# --- (f) hostile event text ----------------------------------------------------------------------


def test_a_hostile_command_line_renders_harmlessly(worker_config: WorkerConfig) -> None:
    hostile = "curl x; echo '<!channel> <@U123> <https://evil|click>' & sh"
    incident = make_incident(7, output=f"Shell ran {hostile}")
    incident["events"][0]["output_fields"]["proc.cmdline"] = hostile

    async def main() -> FakeSlack:
        async with FakeSlack() as slack:
            entry = {
                "name": "slack",
                "type": "slack",
                "delivery": FAST,
                "slack": {"webhook_url": slack.webhook_url},
            }
            config = replace(worker_config, notifiers=[entry])
            async with running(config):
                await produce(config, [incident])
                await eventually(lambda: len(slack.requests) >= 1, "the message")
            return slack

    slack = asyncio.run(main())

    assert slack.problems == []  # the fake rejects any unescaped <, > or &
    [request] = slack.accepted
    text = orjson.dumps(request.payload).decode()
    assert "&lt;!channel&gt;" in text
    assert "&lt;https://evil|click&gt;" in text
    assert "<!channel>" not in text
    assert "<https://evil" not in text


# --- the worker: the stage runs inside it, its metrics on the worker's /metrics ----------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _metrics(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return None


def test_the_worker_runs_the_stage_and_serves_its_metrics(
    worker_config: WorkerConfig, make_topic: Callable[..., str], tmp_path: Path
) -> None:
    incidents = [make_incident(i) for i in range(3)]
    receiver = WebhookReceiver()
    web_port = _free_port()
    config = replace(
        worker_config,
        topics=replace(
            worker_config.topics, events=make_topic("it-events"), dead_letter=make_topic("it-dlq")
        ),
    )

    async def main() -> str:
        async with LocalServer(receiver.app()) as server:
            entry = {"name": "hook", "type": "webhook", "webhook": {"url": f"{server.url}/h"}}
            path = _config_file(tmp_path, replace(config, notifiers=[entry]))
            settings = yaml.safe_load(path.read_text())
            settings["topics"] |= {"events": config.topics.events,
                                   "dead_letter": config.topics.dead_letter}  # fmt: skip
            settings["app"] |= {"store": "memory", "data_dir": str(tmp_path / "data"),
                                "web_port": web_port, "rules": [str(RULES)]}  # fmt: skip
            path.write_text(yaml.safe_dump(settings))
            worker = subprocess.Popen(
                [*CLI, "worker", "--config", str(path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                await eventually(lambda: _metrics(web_port) is not None, "the worker's /metrics")
                await produce(config, incidents)
                await eventually(lambda: len(receiver.accepted) == 3, "deliveries")
                # the receiver counts a request when it arrives; the notifier counts it as sent
                # once it has read the answer, a moment later
                sent = 'falco_correlator_notifications_sent_total{notifier="hook"} 3.0'
                await eventually(lambda: sent in (_metrics(web_port) or ""), "the sent counter")
                exposition = _metrics(web_port) or ""
            finally:
                worker.send_signal(signal.SIGTERM)
                _, stderr = await asyncio.to_thread(worker.communicate, timeout=30)
            assert worker.returncode == 0, stderr
            await until_committed(config, config.topics.incidents, f"{config.app.id}-notify")
            return exposition

    exposition = asyncio.run(main())

    assert 'falco_correlator_notifications_sent_total{notifier="hook"} 3.0' in exposition
    assert "falco_correlator_notify_records_total 3.0" in exposition
    assert "fc_events_total" in exposition or "fc_rules_reloads" in exposition


def test_the_worker_reports_a_bad_notifier_at_start_naming_the_key(
    worker_config: WorkerConfig, tmp_path: Path
) -> None:
    entry = {"name": "hook", "type": "webhook", "webhook": {"url": "${env:IT_NO_SUCH_HOOK}"}}
    path = _config_file(tmp_path, replace(worker_config, notifiers=[entry]))

    done = subprocess.run(
        [*CLI, "worker", "--config", str(path), "--rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 2, done.stderr
    assert "notifiers[0].webhook.url: secret environment variable IT_NO_SUCH_HOOK" in done.stderr


# --- isolation: a slow notifier does not hold back another -------------------------------------


def test_a_slow_notifier_does_not_hold_back_a_fast_one(worker_config: WorkerConfig) -> None:
    incidents = [make_incident(i) for i in range(6)]
    slow = WebhookReceiver(faults=["slow"] * 6, slow_seconds=1.0)
    fast = WebhookReceiver()

    async def main() -> int:
        async with LocalServer(slow.app()) as slow_server, LocalServer(fast.app()) as fast_server:
            entries = [
                {
                    "name": name,
                    "type": "webhook",
                    "delivery": FAST | {"timeout": "5s", "concurrency": 1},
                    "webhook": {"url": f"{server.url}/{name}"},
                }
                for name, server in (("slow", slow_server), ("fast", fast_server))
            ]
            config = replace(worker_config, notifiers=entries)
            async with running(config) as stage:
                await produce(config, incidents)
                await eventually(lambda: len(fast.accepted) == 6, "the fast notifier")
                slow_meanwhile = int(stage.metrics.value("sent", "slow"))
                await eventually(lambda: stage.metrics.value("sent", "slow") == 6, "the slow one")
                await until_committed(config, config.topics.incidents, stage.group_id)
            return slow_meanwhile

    slow_meanwhile = asyncio.run(main())

    # The slow receiver answers one request a second, one at a time: when the fast one had
    # all six, the slow one had finished at most one.
    assert slow_meanwhile <= 1
    assert len(slow.accepted) == 6
