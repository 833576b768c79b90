"""The correlate stage's state store: Faust's table store, with the changelog written by librdkafka.

Faust keeps what it is good at: the table's store (memory or RocksDB), its recovery from the
changelog topic when partitions are assigned, and rebalancing. But a Faust table write
(`table[k] = v`) publishes one changelog message through Faust's per-message producer path —
measured at about 60 µs per write, the largest cost of the worker once the hot path was batched
(a correlate record changes ~150 entries on a noisy stream). Here a write goes to the store
directly and its changelog message to a confluent-kafka producer (about 1-2 µs); the record's
entries and incidents are flushed (acknowledged by the broker) before the correlate record is
done, so Faust commits its offset only after everything it caused is durable (at-least-once).

The changelog messages are exactly what Faust writes (key and value bytes, the partition of the
correlate record, a `None` value for a deletion), so Faust's recovery reads them unchanged; for
the RocksDB store the changelog offset written last is persisted in the partition's database,
as Faust does, so a restart replays only what came after it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from streams.runtime.config import WorkerConfig
from streams.runtime.kafka_options import confluent_config

__all__ = ["MAX_MESSAGE_BYTES", "ChangelogStore", "OutputProducer"]

log = logging.getLogger("streams.worker.state")

MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # also the changelog topic's max.message.bytes


class OutputProducer:
    """One idempotent librdkafka producer for the correlate stage's outputs (changelog entries
    and incidents), with `flush` run off the event loop."""

    def __init__(self, config: WorkerConfig) -> None:
        from confluent_kafka import Producer

        self._producer = Producer(
            {
                **confluent_config(config.kafka),
                "enable.idempotence": True,
                "linger.ms": 1,
                # the Java client's default: incidents keyed by id land where other clients
                # (Kafka Streams, Connect) would put them
                "partitioner": "murmur2_random",
                "compression.type": "lz4",
                "delivery.timeout.ms": 600_000,
                "message.max.bytes": MAX_MESSAGE_BYTES,
            }
        )
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="fc-correlate-out")
        self.errors: list[str] = []
        self.refused = 0  # records the client refused at once (e.g. larger than the limit)
        self.changelog_offsets: dict[int, int] = {}  # partition -> last acknowledged offset

    def produce(
        self, topic: str, key: bytes, value: bytes | None, partition: int, *, changelog: bool
    ) -> bool:
        """Queue one record; False (logged, counted) when the client refuses it outright —
        e.g. a state entry above `MAX_MESSAGE_BYTES`: that key's state is then not durable,
        which is better than stopping correlation for every key."""
        from confluent_kafka import KafkaException

        callback = self._on_changelog if changelog else self._on_delivery
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, partition=partition, on_delivery=callback
                )
                return True
            except BufferError:  # the local queue is full: serve deliveries, then retry
                self._producer.poll(0.1)
            except KafkaException as exc:
                self.refused += 1
                log.error(
                    "cannot write %s record (key %r, %d bytes) to %s: %s",
                    "state" if changelog else "incident",
                    key[:80],
                    len(value or b""),
                    topic,
                    exc,
                )
                return False

    def _on_delivery(self, err: Any, message: Any) -> None:
        if err is not None:
            self.errors.append(str(err))

    def _on_changelog(self, err: Any, message: Any) -> None:
        if err is not None:
            self.errors.append(str(err))
            return
        partition, offset = message.partition(), message.offset()
        # None: delivered, offset unknown to librdkafka; a callback must never raise (see
        # IngestService._on_record)
        if offset is not None and offset > self.changelog_offsets.get(partition, -1):
            self.changelog_offsets[partition] = offset

    async def flush(self) -> None:
        """Wait until everything produced so far is acknowledged; raise if anything failed
        (librdkafka retried it until `delivery.timeout.ms`): the worker stops rather than
        committing past state or incidents that were not written."""
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(self._thread, self._producer.flush, 5.0):
            log.warning("waiting for the brokers to acknowledge state and incidents")
        if self.errors:
            errors, self.errors = self.errors, []
            raise RuntimeError(f"{len(errors)} output record(s) not delivered: {errors[0]}")

    def close(self) -> None:
        self._producer.flush(10)
        self._thread.shutdown(wait=False)


class ChangelogStore:
    """`StateStore` over a Faust table's store; each write also goes to the changelog topic."""

    def __init__(self, table: Any, changelog_topic: str, producer: OutputProducer) -> None:
        self.table = table
        self.changelog_topic = changelog_topic
        self.producer = producer

    @property
    def _store(self) -> Any:
        return self.table.data

    @staticmethod
    def _partition() -> int:
        from faust.streams import current_event

        event = current_event()
        if event is None:
            raise RuntimeError("state written outside of a correlate record")
        partition: int = event.message.partition
        return partition

    def __getitem__(self, key: bytes) -> Any:
        return self._store[key]

    def __contains__(self, key: object) -> bool:
        return key in self._store

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._store[key] = value
        self.producer.produce(
            self.changelog_topic, key, value, self._partition(), changelog=True
        )

    def __delitem__(self, key: bytes) -> None:
        del self._store[key]
        self.producer.produce(self.changelog_topic, key, None, self._partition(), changelog=True)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self._store.items())

    def persist_offsets(self) -> None:
        """Record the acknowledged changelog offsets in the store (RocksDB keeps them per
        partition database, so recovery after a restart replays only newer entries)."""
        from faust.types import TP

        offsets, self.producer.changelog_offsets = self.producer.changelog_offsets, {}
        for partition, offset in offsets.items():
            self._store.set_persisted_offset(TP(self.changelog_topic, partition), offset)
