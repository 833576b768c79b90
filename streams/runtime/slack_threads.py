"""Slack bot threads (incident id -> first message `ts`) in a compacted Kafka topic.

The notify stage runs outside Faust (streams/runtime/notify.py), so this store is a topic of
its own rather than a Faust table. The stage runs it when a notifier `needs_thread_store`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from streams.runtime.config import WorkerConfig
from streams.runtime.kafka_options import aiokafka_options, confluent_config

__all__ = ["KafkaThreadStore", "retry_forever"]

log = logging.getLogger("streams.notify")


class KafkaThreadStore:
    """ThreadStore (incident id -> Slack `ts`) over a compacted topic keyed by incident id.

    `get` reads memory; `set` updates memory and schedules the write; `flush` waits for the
    writes (the stage flushes before an incident's offset may be committed). `catch_up` reads
    what other workers wrote: at start and whenever partitions are assigned, because a
    rebalance can bring updates of incidents whose first message another worker posted.
    Entries older than `retention` are deleted by Kafka (`cleanup.policy=compact,delete`).
    """

    def __init__(self, config: WorkerConfig, topic: str, retention: float) -> None:
        self.config = config
        self.topic = topic
        self.retention = retention
        self._data: dict[str, str] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._producer: Any = None
        self._reader: Any = None
        self._partitions: list[Any] = []

    def get(self, key: str) -> str | None:
        return self._data.get(key)

    def set(self, key: str, value: str) -> None:
        self._data[key] = value
        task = asyncio.get_running_loop().create_task(self._write(key, value))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def start(self, producer: Any) -> None:
        from aiokafka import TopicPartition

        self._producer = producer
        partitions = await asyncio.to_thread(self._ensure_topic)
        self._partitions = [TopicPartition(self.topic, p) for p in range(partitions)]
        self._reader = AIOKafkaConsumer(
            **aiokafka_options(self.config), enable_auto_commit=False, group_id=None
        )
        await self._reader.start()
        self._reader.assign(self._partitions)
        await self._reader.seek_to_beginning(*self._partitions)
        await self.catch_up()
        log.info("slack threads: %d known from %s", len(self._data), self.topic)

    async def catch_up(self) -> None:
        reader = self._reader
        end = await reader.end_offsets(self._partitions)
        while [tp for tp in self._partitions if await reader.position(tp) < end[tp]]:
            batch = await reader.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    if record.key is None:
                        continue
                    key = record.key.decode()
                    if record.value is None:
                        self._data.pop(key, None)
                    else:
                        self._data[key] = record.value.decode()

    async def flush(self) -> None:
        while self._pending:
            await asyncio.wait(list(self._pending))

    async def stop(self) -> None:
        await self.flush()
        if self._reader is not None:
            await self._reader.stop()

    async def _write(self, key: str, value: str) -> None:
        await retry_forever(
            lambda: self._producer.send_and_wait(self.topic, value.encode(), key=key.encode()),
            f"slack thread of incident {key} to {self.topic}",
        )

    def _ensure_topic(self) -> int:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

        admin = AdminClient(confluent_config(self.config.kafka))
        topic = NewTopic(
            self.topic,
            num_partitions=1,
            replication_factor=self.config.topics.replication_factor,
            config={
                "cleanup.policy": "compact,delete",
                "retention.ms": str(int(self.retention * 1000)),
            },
        )
        try:
            admin.create_topics([topic], request_timeout=30)[self.topic].result()
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
        metadata = admin.list_topics(self.topic, timeout=30).topics[self.topic]
        return max(1, len(metadata.partitions))


async def retry_forever(send: Callable[[], Awaitable[Any]], what: str) -> None:
    """Kafka writes that must happen before an offset is committed: retried until they do
    (nothing else can progress without the broker either); cancellable at shutdown."""
    delay = 0.5
    while True:
        try:
            await send()
        except KafkaError as exc:
            log.error("cannot write %s (%s); retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
        else:
            return
