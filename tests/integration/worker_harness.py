"""Run the real `falco-correlator worker` against the local Kafka broker, from a test.

Everything here talks to a real broker on loopback (no mocks): a `WorkerProcess` is the console
script in a subprocess with its own YAML config (unique app id, topics and web port), and
`produce_events` / `consume_incidents` / `consume_all` play falcosidekick and a downstream
consumer with confluent-kafka clients. `replay_incidents` runs `falco-correlator replay` on the same
events: the reference the worker's output is compared with.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

VENV_BIN = Path(sys.executable).parent
_CONSOLE_SCRIPT = VENV_BIN / "falco-correlator"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def falco_correlator() -> list[str]:
    """The console script of this virtualenv (or `python -m streams.cli.main` as a fallback)."""
    if _CONSOLE_SCRIPT.exists():
        return [str(_CONSOLE_SCRIPT)]
    found = shutil.which("falco-correlator")
    if found:
        return [found]
    return [sys.executable, "-m", "streams.cli.main"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --- Falco-shaped events ---------------------------------------------------------------------


def format_ns(time_ns: int) -> str:
    """RFC 3339 UTC with 9 fractional digits, as Falco writes `time`."""
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


def falco_event(
    rule: str,
    time_ns: int,
    *,
    priority: str = "Warning",
    hostname: str = "node-1",
    container_id: str | None = "ee97d9c4186f",
    fields: dict[str, Any] | None = None,
    tags: Sequence[str] = ("container",),
) -> dict[str, Any]:
    """A falcosidekick-shaped payload (uuid, container plugin fields, evt.time in ns)."""
    output_fields: dict[str, Any] = {
        "container.id": container_id,
        "container.name": f"c-{container_id}" if container_id else None,
        "container.image.repository": "docker.io/library/alpine",
        "container.image.tag": "3.20",
        "evt.time": time_ns,
        "k8s.ns.name": "default",
        "k8s.pod.name": f"pod-{container_id}" if container_id else None,
        "proc.name": "sh",
        "proc.cmdline": "sh -c id",
        "user.name": "root",
    }
    output_fields.update(fields or {})
    return {
        "uuid": str(uuid.uuid4()),
        "hostname": hostname,
        "output": f"{format_ns(time_ns)[11:29]}: {priority} {rule} (container_id={container_id})",
        "priority": priority,
        "rule": rule,
        "source": "syscall",
        "tags": list(tags),
        "time": format_ns(time_ns),
        "output_fields": output_fields,
    }


# --- the worker process --------------------------------------------------------------------------


@dataclass
class WorkerTopics:
    events: str
    incidents: str
    dead_letter: str
    notify_dead_letter: str

    @classmethod
    def fresh(cls, prefix: str = "it") -> WorkerTopics:
        tag = uuid.uuid4().hex[:10]
        return cls(
            events=f"{prefix}-events-{tag}",
            incidents=f"{prefix}-incidents-{tag}",
            dead_letter=f"{prefix}-dlq-{tag}",
            notify_dead_letter=f"{prefix}-notify-dlq-{tag}",
        )

    def names(self) -> list[str]:
        return [self.events, self.incidents, self.dead_letter, self.notify_dead_letter]


@dataclass
class WorkerSettings:
    """What one worker's YAML config says (one per process; share app_id for one group)."""

    bootstrap: str
    app_id: str
    topics: WorkerTopics
    rules: list[Path]
    directory: Path
    partitions: int = 3
    lateness: str = "2s"
    tick_interval: str = "1s"
    store: str = "memory"
    log_level: str = "INFO"
    # further top-level sections of the config file (e.g. `enrichment`, `notifiers`)
    extra: dict[str, Any] = field(default_factory=dict)
    # The product default; the SIGKILL test shortens it so the killed member leaves sooner. A
    # 10 s timeout for every test coincided with intermittent rebalances and silent workers under
    # load (3 workers on 2 cores), most likely from missed heartbeats.
    session_timeout: str = "30s"
    # further keys of the `app:` section (e.g. `idle_timeout`, `stall_timeout`)
    app_extra: dict[str, Any] = field(default_factory=dict)

    def write(self, name: str, web_port: int) -> Path:
        data_dir = self.directory / f"{name}-data"
        config = {
            "kafka": {"bootstrap_servers": self.bootstrap},
            "topics": {
                "events": self.topics.events,
                "incidents": self.topics.incidents,
                "dead_letter": self.topics.dead_letter,
                "notify_dead_letter": self.topics.notify_dead_letter,
                "partitions": self.partitions,
                "replication_factor": 1,
            },
            "app": {
                "id": self.app_id,
                "rules": [str(p) for p in self.rules],
                "lateness": self.lateness,
                "tick_interval": self.tick_interval,
                "session_timeout": self.session_timeout,
                "store": self.store,
                "data_dir": str(data_dir),
                "web_port": web_port,
                "log_format": "console",
                "log_level": self.log_level,
                **self.app_extra,
            },
        }
        config.update(self.extra)
        path = self.directory / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return path


@dataclass
class WorkerProcess:
    """One `falco-correlator worker --config FILE` subprocess; logs go to `<name>.log`."""

    settings: WorkerSettings
    name: str = "worker"
    web_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    config_path: Path | None = None
    starts: int = 0

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, *, wait_ready: bool = True) -> WorkerProcess:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.config_path = self.settings.write(self.name, self.web_port)
        self.starts += 1
        self.log_path = self.settings.directory / f"{self.name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FC_")}
        env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONFAULTHANDLER"] = "1"  # a crash in a C extension leaves its Python stack
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start #{self.starts} at {time.time():.3f} =====\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [*falco_correlator(), "worker", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.settings.directory,
            )
        if wait_ready:
            self.wait_ready()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.web_port}{path}"

    def http_get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=timeout) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        """Seconds until /readyz answered 200; fails with the log tail otherwise."""
        started = time.monotonic()
        deadline = started + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if not self.running():
                self.fail(f"worker exited with {self.returncode()} before it was ready")
            try:
                status, body = self.http_get("/readyz", timeout=1.0)
                last = f"{status} {body[:200]!r}"
                if status == 200:
                    return time.monotonic() - started
            except (OSError, urllib.error.URLError) as exc:
                last = str(exc)
            time.sleep(0.25)
        self.fail(f"/readyz not 200 within {timeout:.0f} s (last: {last})")
        raise AssertionError  # unreachable

    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait: the return code (fails with the log tail on a timeout)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.fail(f"worker did not exit within {timeout:.0f} s of SIGTERM")
            raise AssertionError from None  # unreachable

    def kill(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        return self.process.wait(timeout=STOP_TIMEOUT_S)

    def stop_quietly(self) -> None:
        """Teardown: SIGTERM, then SIGKILL if it does not go; never raises."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(Exception):
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=15)
            return
        with contextlib.suppress(Exception):
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=15)

    # -- observation --------------------------------------------------------------------------

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def fail(self, message: str) -> None:
        pytest.fail(f"{self.name}: {message}\n--- {self.log_path} (tail) ---\n{self.log_tail()}")

    def metrics(self) -> dict[str, float]:
        """/metrics as {'name{labels}': value} (Prometheus text format)."""
        status, body = self.http_get("/metrics")
        assert status == 200, body
        return parse_metrics(body.decode())

    def metric_sum(self, name: str) -> float:
        return sum(v for k, v in self.metrics().items() if k.split("{")[0] == name)

    def wait_metric(
        self,
        name: str,
        predicate: Callable[[float], bool],
        timeout: float,
        what: str = "",
    ) -> float:
        deadline = time.monotonic() + timeout
        value = float("nan")
        while time.monotonic() < deadline:
            if not self.running():
                self.fail(f"worker exited with {self.returncode()} while waiting for {name}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                value = self.metric_sum(name)
                if predicate(value):
                    return value
            time.sleep(0.2)
        self.fail(f"{name} {what} not reached within {timeout:.0f} s (last {value})")
        raise AssertionError  # unreachable

    def wait_log(self, pattern: str, timeout: float) -> re.Match[str]:
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = regex.search(self.log_text())
            if found:
                return found
            time.sleep(0.2)
        self.fail(f"log line /{pattern}/ not seen within {timeout:.0f} s")
        raise AssertionError  # unreachable


_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)$")


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        found = _METRIC_LINE.match(line)
        if found:
            out[found.group(1)] = float(found.group(2))
    return out


# --- Kafka clients -------------------------------------------------------------------------------


def create_topics(admin: Any, names: Iterable[str], partitions: int) -> None:
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    futures = admin.create_topics(
        [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names],
        operation_timeout=30,
    )
    for future in futures.values():
        future.result(timeout=30)


def delete_topics_quietly(admin: Any, names: Iterable[str]) -> None:
    names = list(names)
    if not names:
        return
    with contextlib.suppress(Exception):
        for future in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result(timeout=30)


def worker_groups(app_id: str) -> list[str]:
    """The consumer groups of a worker: Faust's (correlate), the ingest and the notify stage."""
    return [app_id, f"{app_id}-ingest", f"{app_id}-notify"]


def internal_topics(admin: Any, app_id: str) -> list[str]:
    """The topics Faust declared for an app id (repartition, changelog, leader, ...)."""
    return [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{app_id}-")]


class EventProducer:
    """falcosidekick's Kafka output: no key, no headers, round-robin over the partitions."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        partitions: int,
        *,
        idempotent: bool = False,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.partitions = partitions
        self.sent = 0
        self.positions: list[tuple[int, int]] = []  # (partition, offset) per delivered message
        config: dict[str, Any] = {"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all"}
        if idempotent:  # retries across a broker outage keep each partition's order
            config["enable.idempotence"] = True
        config.update(options or {})
        self._producer = Producer(config)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        assert err is None, err
        self.positions.append((int(msg.partition() or 0), int(msg.offset() or 0)))

    def send_raw(
        self,
        value: bytes | None,
        *,
        key: bytes | None = None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> tuple[int, int]:
        """One message, flushed: its (partition, offset)."""
        part = self.sent % self.partitions if partition is None else partition
        self.sent += 1
        before = len(self.positions)
        kwargs: dict[str, Any] = {}
        if headers:
            kwargs["headers"] = headers
        self._producer.produce(
            self.topic,
            value=value,
            key=key,
            partition=part,
            on_delivery=self._on_delivery,
            **kwargs,
        )
        assert self._producer.flush(30) == 0
        assert len(self.positions) == before + 1
        return self.positions[-1]

    def send(self, event: dict[str, Any]) -> None:
        self.send_raw(orjson.dumps(event))

    def send_many(self, events: Iterable[dict[str, Any]]) -> None:
        """A burst (round-robin, one flush at the end): a backlog the worker finds at start."""
        for event in events:
            part = self.sent % self.partitions
            self.sent += 1
            self._producer.produce(
                self.topic,
                value=orjson.dumps(event),
                partition=part,
                on_delivery=self._on_delivery,
            )
            self._producer.poll(0)
        assert self._producer.flush(30) == 0
        assert len(self.positions) == self.sent

    def send_nowait(self, event: dict[str, Any]) -> None:
        """Round-robin, not flushed: librdkafka buffers it while the broker is away."""
        part = self.sent % self.partitions
        self.sent += 1
        self._producer.produce(
            self.topic, value=orjson.dumps(event), partition=part, on_delivery=self._on_delivery
        )
        self._producer.poll(0)

    def flush(self, timeout: float) -> None:
        """Wait until every message sent so far was acknowledged."""
        assert self._producer.flush(timeout) == 0, f"not delivered within {timeout:.0f} s"
        assert len(self.positions) == self.sent

    def close(self) -> None:
        self._producer.flush(30)


def _consumer(bootstrap: str, topics: list[str]) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("it-reader"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    consumer.subscribe(topics)
    return consumer


def message_json(msg: Message) -> Any:
    value = msg.value()
    assert value is not None, f"null value at {msg.topic()}/{msg.partition()}/{msg.offset()}"
    return orjson.loads(value)


def message_contains(msg: Message, needle: bytes) -> bool:
    value = msg.value()
    return value is not None and needle in value


class TopicReader:
    """Reads a topic from the beginning (own group); keeps every message read so far."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.messages: list[Message] = []
        self._consumer = _consumer(bootstrap, [topic])

    def poll_until(self, done: Callable[[list[Message]], bool], timeout: float) -> list[Message]:
        """Poll until `done(messages)` or the timeout; returns every message read."""
        deadline = time.monotonic() + timeout
        while not done(self.messages) and time.monotonic() < deadline:
            msg = self._consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    continue
                raise AssertionError(str(err))
            self.messages.append(msg)
        return self.messages

    def wait_count(self, count: int, timeout: float) -> list[Message]:
        return self.poll_until(lambda msgs: len(msgs) >= count, timeout)

    def drain(self, seconds: float) -> list[Message]:
        """Keep reading for `seconds` (to see that nothing more arrives)."""
        return self.poll_until(lambda _msgs: False, seconds)

    def values(self) -> list[dict[str, Any]]:
        return [message_json(m) for m in self.messages]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._consumer.close()


def end_offsets(bootstrap: str, topic: str, partitions: int) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("it-offsets")})
    try:
        total = 0
        for p in range(partitions):
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high
        return total
    finally:
        consumer.close()


# --- the reference: `falco-correlator replay` ----------------------------------------------------


def replay_incidents(
    rules: Sequence[Path],
    events: Sequence[dict[str, Any]],
    directory: Path,
    *,
    lateness: str = "2s",
    flush: bool = False,
) -> list[dict[str, Any]]:
    """Incidents of `falco-correlator replay` over the events, in the order they were produced."""
    path = directory / f"replay-input-{uuid.uuid4().hex[:6]}.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    command = [*falco_correlator(), "replay", "--lateness", lateness]
    for rule in rules:
        command += ["--rules", str(rule)]
    if flush:
        command.append("--flush")
    command.append(str(path))
    done = subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert b" 0 late" in done.stderr, done.stderr.decode()  # the input is in order enough
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def comparable(incident: dict[str, Any]) -> dict[str, Any]:
    """An incident without what legitimately differs between worker and replay (`detected_at`)."""
    return {k: v for k, v in incident.items() if k != "detected_at"}


def incident_signature(incident: dict[str, Any]) -> tuple[Any, ...]:
    return (
        incident["id"],
        incident["status"],
        incident["count"],
        incident["correlation"],
        json.dumps(incident["key"], sort_keys=True),
        incident["first_seen"],
        incident["last_seen"],
        tuple(e.get("uuid") for e in incident["events"]),
    )


# --- the per-test environment ------------------------------------------------------------------


class WorkerEnv:
    """Unique app ids and topics per test; stops its workers and deletes its topics afterwards."""

    def __init__(self, bootstrap: str, admin: Any, directory: Path) -> None:
        self.bootstrap = bootstrap
        self.admin = admin
        self.directory = directory
        self.workers: list[WorkerProcess] = []
        self.readers: list[TopicReader] = []
        self.producers: list[EventProducer] = []
        self.topics: set[str] = set()
        self.app_ids: set[str] = set()

    def rules_file(self, name: str, text: str) -> Path:
        path = self.directory / name
        path.write_text(text, encoding="utf-8")
        return path

    def settings(self, rules: Sequence[Path], **options: Any) -> WorkerSettings:
        app_id = unique("fc-it")
        topics = WorkerTopics.fresh("fc-it")
        self.app_ids.add(app_id)
        self.topics.update(topics.names())
        return WorkerSettings(
            bootstrap=self.bootstrap,
            app_id=app_id,
            topics=topics,
            rules=list(rules),
            directory=self.directory,
            **options,
        )

    def worker(self, settings: WorkerSettings, name: str = "worker") -> WorkerProcess:
        worker = WorkerProcess(settings, name=name)
        self.workers.append(worker)
        return worker

    def producer(
        self,
        settings: WorkerSettings,
        *,
        idempotent: bool = False,
        options: dict[str, Any] | None = None,
    ) -> EventProducer:
        producer = EventProducer(
            self.bootstrap,
            settings.topics.events,
            settings.partitions,
            idempotent=idempotent,
            options=options,
        )
        self.producers.append(producer)
        return producer

    def reader(self, topic: str) -> TopicReader:
        reader = TopicReader(self.bootstrap, topic)
        self.readers.append(reader)
        return reader

    def close(self) -> None:
        for worker in self.workers:
            worker.stop_quietly()
        for reader in self.readers:
            reader.close()
        for producer in self.producers:
            with contextlib.suppress(Exception):
                producer.close()
        # shown by pytest only when the test failed
        for worker in self.workers:
            print(f"--- {worker.name}: {worker.log_path} (rc {worker.returncode()}) ---")
            print(worker.log_tail(40))
        names = set(self.topics)
        with contextlib.suppress(Exception):
            for app_id in self.app_ids:
                names.update(internal_topics(self.admin, app_id))
        delete_topics_quietly(self.admin, names)
        if self.app_ids:  # the workers' consumer groups (the readers commit nothing)
            with contextlib.suppress(Exception):
                futures = self.admin.delete_consumer_groups(
                    sorted(g for a in self.app_ids for g in worker_groups(a)),
                    request_timeout=10,
                )
                for future in futures.values():
                    with contextlib.suppress(Exception):
                        future.result(timeout=10)


@contextlib.contextmanager
def worker_environment(bootstrap: str, admin: Any, directory: Path) -> Iterator[WorkerEnv]:
    """What each test module's `worker_env` fixture yields."""
    env = WorkerEnv(bootstrap, admin, directory)
    try:
        yield env
    finally:
        env.close()


# --- a mixed, real-time stream -----------------------------------------------------------------

SHELL = "Terminal shell in container"
EGRESS = "Unexpected outbound connection destination"
READ = "Read sensitive file untrusted"
WRITE_ETC = "Write below etc"
SNAPSHOT = "Falco internal: metrics snapshot"

# container id -> (pod, node): two containers share a pod, so pod keys and container keys differ
CONTAINERS = {
    "c0ffee000001": ("web-1", "node-a"),
    "c0ffee000002": ("web-1", "node-a"),
    "c0ffee000003": ("db-0", "node-b"),
    "c0ffee000004": ("batch-7", "node-b"),
}
SENSITIVE_FILES = [
    "/etc/shadow",
    "/etc/sudoers",
    "/etc/pam.conf",
    "/root/.ssh/id_rsa",
    "/etc/gshadow",
]


def container_event(rng: Any, rule: str, time_ns: int, cid: str) -> dict[str, Any]:
    pod, node = CONTAINERS[cid]
    fields: dict[str, Any] = {"k8s.pod.name": pod, "k8s.ns.name": "shop"}
    priority = "Warning"
    if rule == SHELL:
        fields.update({"proc.name": "bash", "proc.cmdline": "bash -i", "proc.tty": 34816})
        priority = "Notice"
    elif rule == EGRESS:
        fields.update(
            {
                "fd.name": f"10.0.0.5:4{rng.randint(1000, 9999)}->203.0.113.7:443",
                "fd.sip": "203.0.113.7",
                "proc.name": "curl",
            }
        )
        priority = "Critical"
    elif rule == READ:
        fields.update(
            {
                "fd.name": rng.choice(SENSITIVE_FILES),
                "proc.name": "cat",
                "proc.cmdline": "cat file",
                "proc.aname[2]": "runc",
                "proc.aname[3]": None,
            }
        )
    elif rule == WRITE_ETC:
        fields.update({"fd.name": "/etc/passwd", "proc.name": "sed"})
        priority = "Error"
    return falco_event(
        rule,
        time_ns,
        priority=priority,
        hostname=node,
        container_id=cid,
        fields=fields,
        tags=["container", "mitre_test"],
    )


def snapshot_event(time_ns: int, hostname: str) -> dict[str, Any]:
    event = falco_event(
        SNAPSHOT, time_ns, priority="Informational", hostname=hostname, container_id=None, tags=[]
    )
    event["source"] = "internal"
    event["output_fields"] = {
        "evt.time": time_ns,
        "falco.host_num_cpus": 4,
        "falco.version": "0.40.0",
    }
    return event


def backlog_stream(rng: Any, count: int, start_ns: int, step_ns: int) -> list[dict[str, Any]]:
    """Historical container events `step_ns` apart (a quarter up to 400 ms early)."""
    rules = [SHELL] * 3 + [EGRESS] * 3 + [READ] * 6 + [WRITE_ETC] * 2
    events = []
    for i in range(count):
        t = start_ns + i * step_ns
        if rng.random() < 0.25:
            t -= rng.randint(1, 400) * 1_000_000
        events.append(container_event(rng, rng.choice(rules), t, rng.choice(list(CONTAINERS))))
    return events


def produce_mixed_stream(
    rng: Any,
    send: Callable[[dict[str, Any]], None],
    *,
    slots: int = 140,
    spacing_s: float = 0.04,
    max_disorder_s: float = 0.5,
    stop: Callable[[], bool] | None = None,
) -> list[dict[str, Any]]:
    """Paced in real time (event time = wall time, some up to `max_disorder_s` older).

    Heartbeats: node-a all along, node-b for the first 40 % of the run, node-c once at the start.
    `stop` ends the stream early (checked before each slot). Returns the events in the order
    they were sent.
    """
    sent: list[dict[str, Any]] = []
    start = time.monotonic()
    next_beat = {"node-a": start, "node-b": start + 0.1, "node-c": start + 0.2}
    stop_b = start + slots * spacing_s * 0.4

    def emit(event: dict[str, Any]) -> None:
        send(event)
        sent.append(event)

    def event_time() -> int:
        now = time.time_ns()
        if rng.random() < 0.25:
            now -= int(rng.uniform(0.05, max_disorder_s) * 1e9)
        return now

    rules = [SHELL] * 3 + [EGRESS] * 3 + [READ] * 6 + [WRITE_ETC] * 2
    for slot in range(slots):
        if stop is not None and stop():
            break
        target = start + slot * spacing_s
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        now = time.monotonic()
        for host in list(next_beat):
            if now >= next_beat[host]:
                emit(snapshot_event(event_time(), host))
                if host == "node-c" or (host == "node-b" and now >= stop_b):
                    del next_beat[host]
                else:
                    next_beat[host] = now + 0.7
        emit(container_event(rng, rng.choice(rules), event_time(), rng.choice(list(CONTAINERS))))
    return sent


MIXED_RULES = f"""
- list: sensitive_reads
  items: ["{READ}", "Read sensitive file trusted after startup"]
- macro: shell_event
  condition: rule = "{SHELL}"

- correlation: Shell then egress
  type: sequence
  by: [container.id]
  within: 3s
  steps:
    - name: shell
      condition: shell_event
    - name: egress
      condition: rule = "{EGRESS}"
  severity: Critical
  output: "shell then egress in {{{{ key['container.id'] }}}} to {{{{ steps.egress['fd.name'] }}}}"
  tags: [mitre_execution]

- correlation: Sensitive read burst
  type: count
  by: [container.id]
  condition: rule in (sensitive_reads)
  threshold: 3
  within: 2s
  suppress: 3s
  output: "{{{{ events|length }}}} reads in {{{{ key['container.id'] }}}} (match {{{{ count }}}})"

- correlation: Many sensitive files in a pod
  type: distinct
  by: [k8s.ns.name, k8s.pod.name]
  condition: rule in (sensitive_reads)
  field: fd.name
  threshold: 3
  within: 3s
  output: "{{{{ events|length }}}} files in {{{{ key['k8s.pod.name'] }}}}"

- correlation: Write below etc and shell
  type: all
  by: [container.id]
  within: 2s
  suppress: 2s
  steps:
    - name: write
      condition: rule = "{WRITE_ETC}"
    - name: shell
      condition: shell_event
  output: "etc write and shell in {{{{ key['container.id'] }}}}"

- correlation: Sensor silent
  type: absence
  by: [hostname]
  within: 1500ms
  trigger:
    condition: 'rule = "{SNAPSHOT}"'
  expect:
    condition: 'rule = "{SNAPSHOT}"'
  severity: Critical
  output: "no metrics from {{{{ key['hostname'] }}}}"
"""


# --- consumer groups ---------------------------------------------------------------------------


def group_members(admin: Any, group: str) -> tuple[Any, list[set[tuple[str, int]]]]:
    """The group's state and each member's assigned (topic, partition)s."""
    description = admin.describe_consumer_groups([group])[group].result(timeout=10)
    members = [
        {(tp.topic, tp.partition) for tp in (m.assignment.topic_partitions if m.assignment else [])}
        for m in description.members
    ]
    return description.state, members


def wait_groups_shared(
    admin: Any,
    settings: WorkerSettings,
    workers: Sequence[WorkerProcess],
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Wait until Faust's group (owning the correlate topic) and the ingest group (owning the
    events topic) are both stable with one member per worker, each owning partitions of its
    topic, and every worker is ready. Returns what the groups looked like."""
    from confluent_kafka import ConsumerGroupState

    groups = {
        settings.app_id: f"{settings.app_id}-correlate",
        f"{settings.app_id}-ingest": settings.topics.events,
    }
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline:
        for worker in workers:
            if not worker.running():
                worker.fail(f"exited with {worker.returncode()} while its group formed")
        with contextlib.suppress(Exception):
            seen = {group: group_members(admin, group) for group in groups}
            if all(
                state == ConsumerGroupState.STABLE
                and len(members) == len(workers)
                and all(any(t == groups[group] for t, _ in m) for m in members)
                for group, (state, members) in seen.items()
            ) and all(w.http_get("/readyz")[0] == 200 for w in workers):
                return seen
        time.sleep(0.5)
    pytest.fail(f"groups of {settings.app_id} not shared by {len(workers)} workers: {seen}")
    raise AssertionError  # unreachable


# --- a broker of the test's own (to stop and restart it) ---------------------------------------

KAFKA_SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "kafka.sh"


class LocalBroker:
    """A single-node KRaft broker started by deploy/kafka/kafka.sh on free ports, with its data
    in `directory`: a test may stop it and start it again with its data (`start(keep=True)`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.controller_port = free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.transcript = directory.parent / f"{directory.name}-kafka.sh.log"

    def _env(self, keep: bool) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
        env.update(
            KAFKA_PORT=str(self.port),
            KAFKA_CONTROLLER_PORT=str(self.controller_port),
            FC_KAFKA_DIR=str(self.directory),
            FC_KAFKA_KEEP="1" if keep else "0",
            PYTHON=sys.executable,  # the readiness check needs confluent-kafka
            KAFKA_STOP_TIMEOUT="30",
        )
        return env

    def _run(self, *args: str, keep: bool = False, timeout: float = 150) -> float:
        started = time.monotonic()
        with self.transcript.open("ab") as log:
            log.write(f"\n$ kafka.sh {' '.join(args)} (at {time.time():.3f})\n".encode())
            log.flush()
            done = subprocess.run(
                [str(KAFKA_SCRIPT), *args],
                env=self._env(keep),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
                check=False,
            )
        if done.returncode != 0:
            pytest.fail(
                f"kafka.sh {' '.join(args)} failed ({done.returncode}):\n"
                + self.transcript.read_text(errors="replace")[-3000:]
                + "\n--- broker log ---\n"
                + self.log_tail()
            )
        return time.monotonic() - started

    def start(self, *, keep: bool = False) -> float:
        """Seconds until the broker answered."""
        return self._run("start", *(["--keep"] if keep else []), keep=keep)

    def stop(self) -> float:
        return self._run("stop")

    def stop_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self._run("stop", timeout=60)

    def log_tail(self, lines: int = 40) -> str:
        path = self.directory / "kafka.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --- load -------------------------------------------------------------------------------------


@contextlib.contextmanager
def cpu_burners(count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`count` processes spinning on a core each, killed (by pid) on exit."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", "while True: pass"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            with contextlib.suppress(Exception):
                proc.kill()
        for proc in procs:
            with contextlib.suppress(Exception):
                proc.wait(timeout=10)


# --- a real local webhook receiver --------------------------------------------------------------


class ThreadedWebhook:
    """tests/notifiers/servers.py's WebhookReceiver served on 127.0.0.1 from a background thread
    (its own asyncio loop), for tests that run the worker as a subprocess."""

    def __init__(self) -> None:
        from notifiers.servers import WebhookReceiver

        self.receiver = WebhookReceiver()
        self.url = ""
        self._loop: Any = None
        self._thread: Any = None
        self._stop: Any = None

    def __enter__(self) -> ThreadedWebhook:
        import asyncio
        import threading

        from notifiers.servers import LocalServer

        started = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            self._stop = asyncio.Event()
            async with LocalServer(self.receiver.app()) as server:
                self.url = f"{server.url}/hook"
                started.set()
                await self._stop.wait()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(serve())
            except BaseException as exc:  # reported to the test by __enter__
                failure.append(exc)
                started.set()
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, name="webhook-receiver", daemon=True)
        self._thread.start()
        assert started.wait(30), "the webhook receiver did not start"
        if failure:
            raise failure[0]
        return self

    def incident_ids(self) -> list[str]:
        return [d.incident_id for d in list(self.receiver.accepted)]

    def wait_ids(self, ids: set[str], timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not ids <= set(self.incident_ids()):
            time.sleep(0.2)
        return self.incident_ids()

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop may be closed already
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
