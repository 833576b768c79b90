"""`falco-correlator redeliver`: send the notifications of the notify dead-letter topic again.

Reads `topics.notify_dead_letter` from the committed position of group `<app id>-redeliver` up
to the end offsets seen at start (records appended while it runs wait for the next run), one
record at a time, to the notifier named in it (only the one that failed). After each record
the offset is committed:

- delivered (or skipped by the notifier, e.g. its Slack thread already exists): done;
- failed again: the record is dead-lettered again (attempts added up, `redeliveries` + 1,
  new `last_error` and `failed_at`) and committed past, so one stubborn record does not block
  the ones behind it and the next run tries it again;
- with `--notifier NAME`, a record of another notifier is appended again unchanged: the
  committed position is one per partition, so skipping it would lose it.

Partitions are assigned by hand (no group rebalance): run one `redeliver` at a time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import REGISTRY, CollectorRegistry

from streams.core.incident_record import read_incident
from streams.errors import ConfigError
from streams.notifiers import DeliveryFailure, Notifier, NotifierMetrics
from streams.runtime.config import WorkerConfig, load_config
from streams.runtime.dead_letter import NOTIFIER_HEADER, dead_letter_message, dead_letter_record
from streams.runtime.kafka_options import aiokafka_options
from streams.runtime.notify_wiring import load_notify_parts
from streams.runtime.slack_threads import KafkaThreadStore

__all__ = ["RedeliverSummary", "redeliver", "run_redeliver"]

log = logging.getLogger("streams.redeliver")


@dataclass
class RedeliverSummary:
    delivered: int = 0
    failed: int = 0
    kept: int = 0  # another notifier's records, appended again (with --notifier)
    unreadable: int = 0

    def __str__(self) -> str:
        return (
            f"redeliver: {self.delivered} delivered, {self.failed} failed again "
            f"(dead-lettered again), {self.kept} of other notifiers kept, "
            f"{self.unreadable} unreadable"
        )


class _Redeliverer:
    def __init__(
        self,
        config: WorkerConfig,
        notifiers: list[Notifier],
        metrics: NotifierMetrics,
        threads: KafkaThreadStore | None,
        only: str | None,
    ) -> None:
        self.config = config
        self.by_name = {n.name: n for n in notifiers}
        self.metrics = metrics
        self.threads = threads
        self.only = only
        self.summary = RedeliverSummary()
        self.producer: Any = None

    async def handle(self, record: Any) -> bool:
        """One dead-letter record; True when it counts against `--max`."""
        try:
            data = orjson.loads(record.value or b"")
        except orjson.JSONDecodeError:
            data = None
        headers = dict(record.headers or ())
        incident = read_incident(data.get("incident")) if isinstance(data, dict) else None
        if not isinstance(data, dict) or incident is None:
            self.summary.unreadable += 1
            log.error(
                "skipped %s/%d/%d: not a notify dead-letter record",
                record.topic,
                record.partition,
                record.offset,
            )
            return False
        name = str(data.get("notifier") or headers.get(NOTIFIER_HEADER, b"").decode())
        if self.only is not None and name != self.only:
            await self._append(record.key, record.value, list(record.headers or ()))
            self.summary.kept += 1
            return False
        notifier = self.by_name.get(name)
        if notifier is None:
            failure = DeliveryFailure(
                notifier=name,
                incident_id=str(incident.get("id", "")),
                attempts=0,
                last_error=f"notifier {name!r} is not configured",
                reason="unknown notifier",
                permanent=True,
                elapsed=0.0,
            )
        else:
            result = await notifier.send(incident)
            if self.threads is not None:
                await self.threads.flush()
            if not isinstance(result, DeliveryFailure):
                self.summary.delivered += 1
                return True
            failure = result
        again = dead_letter_record(incident, failure, failed_at=time.time(), previous=data)
        key, value, new_headers = dead_letter_message(again)
        await self._append(key, value, new_headers)
        self.metrics.record_dead_lettered(name)
        self.summary.failed += 1
        return True

    async def _append(self, key: bytes | None, value: bytes, headers: list[Any]) -> None:
        topic = self.config.topics.notify_dead_letter
        await self.producer.send_and_wait(topic, value, key=key, headers=headers)


async def redeliver(
    config: WorkerConfig,
    *,
    notifier: str | None = None,
    max_records: int | None = None,
    registry: CollectorRegistry | None = None,
    env: Mapping[str, str] | None = None,
) -> RedeliverSummary:
    """Redeliver the notify dead-letter topic up to its current end (see the module doc).
    Raises ConfigError for bad notifier config or an unknown `notifier` name."""
    reg = REGISTRY if registry is None else registry
    _, notifiers, threads = load_notify_parts(config, registry=reg, env=env)
    if notifier is not None and notifier not in {n.name for n in notifiers}:
        names = ", ".join(n.name for n in notifiers)
        raise ConfigError(f"--notifier: no notifier named {notifier!r} (configured: {names})")
    worker = _Redeliverer(config, notifiers, NotifierMetrics.shared(reg), threads, notifier)
    options = aiokafka_options(config)
    worker.producer = AIOKafkaProducer(**options, acks="all")
    consumer = AIOKafkaConsumer(
        **options,
        group_id=f"{config.app.id}-redeliver",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    try:
        await worker.producer.start()
        if threads is not None:
            await threads.start(worker.producer)
        await consumer.start()
        topic = config.topics.notify_dead_letter
        if topic in await consumer.topics():
            found = await worker.producer.partitions_for(topic)
            tps = [TopicPartition(topic, p) for p in sorted(found)]
            await _consume(consumer, worker, tps, max_records)
    finally:
        await consumer.stop()
        if threads is not None:
            await threads.stop()
        await worker.producer.stop()
        for n in notifiers:
            await n.close()
    return worker.summary


async def _consume(
    consumer: Any, worker: _Redeliverer, tps: list[TopicPartition], max_records: int | None
) -> None:
    consumer.assign(tps)
    end = await consumer.end_offsets(tps)
    handled = 0
    remaining = {tp for tp in tps if await consumer.position(tp) < end[tp]}
    while remaining:
        batch = await consumer.getmany(*remaining, timeout_ms=500)
        for tp, records in batch.items():
            for record in records:
                if record.offset >= end[tp]:
                    break
                handled += await worker.handle(record)
                await consumer.commit({tp: record.offset + 1})
                if max_records is not None and handled >= max_records:
                    return
        remaining = {tp for tp in remaining if await consumer.position(tp) < end[tp]}


def run_redeliver(*, config_path: str | None, notifier: str | None, max_records: int | None) -> int:
    """0: everything delivered; 1: some failed again; 2: configuration; 3: Kafka unreachable."""
    from streams.runtime.cli import setup_logging

    try:
        config = load_config(config_path, os.environ)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2
    setup_logging(config)
    if not config.notifiers:
        print("configuration error:\nnotifiers: no notifiers configured", file=sys.stderr)
        return 2
    try:
        summary = asyncio.run(redeliver(config, notifier=notifier, max_records=max_records))
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2
    except KafkaError as exc:
        print(f"Kafka at {config.kafka.bootstrap_servers}: {exc}", file=sys.stderr)
        return 3
    print(summary, file=sys.stderr)
    return 1 if summary.failed else 0
