"""`doctor`'s Kafka checks: the cluster, the topics, the consumer group, the last events."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import orjson

from streams.core.events import event_from_dict
from streams.errors import EventError
from streams.runtime.config import WorkerConfig
from streams.runtime.kafka_options import confluent_config

if TYPE_CHECKING:
    from streams.runtime.doctor import Doctor

__all__ = ["changelog_topic", "check_kafka"]

_RECENT = 50
# Fields the shipped correlations group or match by; Falco sets them with the container plugin
# (container.*) and its Kubernetes metadata (k8s.*).
_EXPECTED_FIELDS = ("container.id", "k8s.ns.name", "k8s.pod.name", "container.image.repository")


def changelog_topic(app_id: str) -> str:
    return f"{app_id}-correlation-state-changelog"


def check_kafka(doctor: Doctor, config: WorkerConfig, timeout: float) -> list[dict[str, Any]]:
    """The checks; returns the last events of the events topic (for the enricher checks)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    servers = config.kafka.bootstrap_servers
    admin = AdminClient({**confluent_config(config.kafka), "log_level": 0})
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        doctor.fail(
            "kafka", f"{servers} does not answer: {exc.args[0]}",
            "check kafka.bootstrap_servers, security_protocol and credentials, and that the "
            "NetworkPolicy allows the broker ports",
        )
        return []
    doctor.ok("kafka", f"{servers} answers: {len(metadata.brokers)} broker(s)")
    topics = config.topics
    for role, name in (
        ("events", topics.events),
        ("incidents", topics.incidents),
        ("dead_letter", topics.dead_letter),
        ("notify_dead_letter", topics.notify_dead_letter),
    ):
        topic = metadata.topics.get(name)
        area = f"topic {name}"
        if topic is None or topic.error is not None:
            fix = "the worker creates it at start with topics.partitions"
            if role == "events":
                fix += "; create it first if falcosidekick may write before (auto-created " \
                       "topics get the broker's default partitions)"
            doctor.warn(area, f"({role}) does not exist yet", fix)
            continue
        count = len(topic.partitions)
        if count != topics.partitions:
            doctor.warn(
                area,
                f"({role}) has {count} partitions, topics.partitions says {topics.partitions}",
                "the worker never changes existing topics; increase them with kafka-topics "
                "--alter if you want more parallelism",
            )
        else:
            doctor.ok(area, f"({role}) {count} partitions")
    _check_state_vs_changelog(doctor, config, set(metadata.topics))
    if topics.events in metadata.topics:
        _check_group(doctor, config, admin, timeout, len(metadata.topics[topics.events].partitions))
        return _recent_events(doctor, config, timeout)
    return []


def _check_state_vs_changelog(doctor: Doctor, config: WorkerConfig, existing: set[str]) -> None:
    from streams.runtime.doctor import local_state

    changelog = changelog_topic(config.app.id)
    state = local_state(config)
    if changelog in existing:
        doctor.ok("state", f"changelog topic {changelog} exists")
    elif state:
        doctor.warn(
            "state",
            f"app.data_dir {config.app.data_dir} holds table state, but the cluster has no "
            f"changelog topic {changelog}: it belongs to a reset or another cluster",
            "nothing to do: at start the worker discards local state that does not match its "
            "changelog (logged as a warning) and rebuilds it; check app.id and the brokers if "
            "this cluster was not reset (docs/configuration.md)",
        )


def ingest_group(app_id: str) -> str:
    """`<app id>-ingest`, as streams/runtime/ingest_service.py names it (no import: doctor
    must not load the worker's Kafka clients to print a diagnosis)."""
    return f"{app_id}-ingest"


def _check_group(doctor: Doctor, config: WorkerConfig, admin: Any, timeout: float,
                 partitions: int) -> None:
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    group = ingest_group(config.app.id)  # the consumer group that reads the events topic
    try:
        [description] = admin.describe_consumer_groups([group], request_timeout=timeout).values()
        described = description.result(timeout=timeout)
        state = str(described.state).rsplit(".", 1)[-1]
        members = len(described.members)
    except KafkaException as exc:
        doctor.warn(f"group {group}", f"cannot be described: {exc.args[0]}",
                    "the principal needs DESCRIBE on the group")
        return
    consumer = Consumer({**confluent_config(config.kafka), "group.id": group,
                         "enable.auto.commit": False, "log_level": 0})
    try:
        wanted = [TopicPartition(config.topics.events, p) for p in range(partitions)]
        committed = consumer.committed(wanted, timeout=timeout)
        lag = 0
        for tp in committed:
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
            lag += high - (tp.offset if tp.offset >= 0 else low)
    except KafkaException as exc:
        doctor.warn(f"group {group}", f"offsets cannot be read: {exc.args[0]}")
        return
    finally:
        consumer.close()
    message = f"{state}, {members} member(s), {lag} event(s) behind on {config.topics.events}"
    if members == 0:
        doctor.warn(f"group {group}", message, "no worker is running in this group")
    else:
        doctor.ok(f"group {group}", message)


def _recent_events(doctor: Doctor, config: WorkerConfig, timeout: float) -> list[dict[str, Any]]:
    """The last events of each partition (about 50 in all), read without joining any group."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    topic = config.topics.events
    consumer = Consumer({**confluent_config(config.kafka), "log_level": 0,
                         "group.id": f"{config.app.id}-doctor-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False})
    events: list[dict[str, Any]] = []
    invalid = 0
    try:
        metadata = consumer.list_topics(topic, timeout=timeout)
        partitions = sorted(metadata.topics[topic].partitions)
        per_partition = max(1, _RECENT // max(1, len(partitions)))
        assignment, wanted = [], 0
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout
            )
            start = max(low, high - per_partition)
            if high > start:
                assignment.append(TopicPartition(topic, partition, start))
                wanted += high - start
        if assignment:
            consumer.assign(assignment)
        deadline = time.monotonic() + timeout
        read = 0
        while read < wanted and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=wanted - read, timeout=0.5):
                if message.error() is not None:
                    continue
                read += 1
                try:
                    raw = orjson.loads(message.value() or b"")
                    event_from_dict(raw, read)
                except (orjson.JSONDecodeError, EventError):
                    invalid += 1
                    continue
                events.append(raw)
    except KafkaException as exc:
        doctor.warn(f"topic {topic}", f"cannot be read: {exc.args[0]}",
                    "the principal needs READ on the topic")
        return []
    finally:
        consumer.close()
    _report_events(doctor, topic, events, invalid)
    return events


def _report_events(doctor: Doctor, topic: str, events: list[dict[str, Any]], invalid: int) -> None:
    area = f"events on {topic}"
    if invalid:
        doctor.warn(area, f"{invalid} of the last {invalid + len(events)} messages are not "
                    "Falco events", "only falcosidekick's Kafka output should write to it")
    if not events:
        doctor.warn(area, "no Falco event yet",
                    "configure falcosidekick's Kafka output to this topic (docs/falco.md)")
        return
    missing = [
        name for name in _EXPECTED_FIELDS
        if not any((e.get("output_fields") or {}).get(name) is not None for e in events)
    ]
    if missing:
        doctor.warn(
            area, f"none of the last {len(events)} events has {', '.join(missing)}",
            "run Falco with its container plugin and Kubernetes metadata and include these "
            "fields in the rules' output (docs/falco.md); the shipped correlations group by them",
        )
    else:
        doctor.ok(area, f"the last {len(events)} events are Falco alerts with container and "
                  "Kubernetes fields")
