"""The local broker works with both Kafka clients the project uses.

confluent-kafka is the admin/tooling client; aiokafka is what Faust runs on, so its consumer-group
protocol (join, sync, offset commit) is what matters most.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from confluent_kafka import Consumer, KafkaError, Message, Producer

pytestmark = pytest.mark.integration

_MESSAGES = 30
_PARTITIONS = 3
_DEADLINE_S = 60.0


def test_confluent_kafka_produces_to_every_partition_and_a_group_consumes_all(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic("smoke-confluent", partitions=_PARTITIONS)
    delivered: list[tuple[int | None, bytes | None]] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        assert err is None, err
        delivered.append((msg.partition(), msg.value()))

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    for i in range(_MESSAGES):
        producer.produce(
            topic, key=f"k{i}".encode(), value=f"v{i}".encode(), on_delivery=on_delivery
        )
    assert producer.flush(30) == 0
    assert {partition for partition, _ in delivered} == set(range(_PARTITIONS))

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"smoke-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    received: list[bytes] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + _DEADLINE_S
        while len(received) < _MESSAGES and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            value = msg.value()
            assert value is not None
            received.append(value)
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()

    assert sorted(received) == sorted(f"v{i}".encode() for i in range(_MESSAGES))


async def _aiokafka_round_trip(bootstrap: str, topic: str, group: str) -> tuple[list[bytes], int]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i in range(_MESSAGES):
            await producer.send_and_wait(topic, f"a{i}".encode(), partition=i % _PARTITIONS)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    received: list[bytes] = []
    try:
        deadline = time.monotonic() + _DEADLINE_S
        while len(received) < _MESSAGES and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                received.extend(r.value for r in records if r.value is not None)
        await consumer.commit()
        committed = 0
        for partition in range(_PARTITIONS):
            offset = await consumer.committed(TopicPartition(topic, partition))
            committed += offset or 0
    finally:
        await consumer.stop()
    return received, committed


def test_aiokafka_group_consumer_receives_and_commits_what_aiokafka_produced(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic("smoke-aiokafka", partitions=_PARTITIONS)
    group = f"smoke-{uuid.uuid4().hex[:8]}"

    received, committed = asyncio.run(_aiokafka_round_trip(kafka_bootstrap, topic, group))

    assert sorted(received) == sorted(f"a{i}".encode() for i in range(_MESSAGES))
    # Offsets were committed through the group coordinator: one past the last record per partition.
    assert committed == _MESSAGES
