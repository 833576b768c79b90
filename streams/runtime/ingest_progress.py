"""The ingest stage's progress: ticks, end offsets (ListOffsets), lag and broker outages.

Every `tick_interval` the service asks the brokers for the end offsets of its source partitions
and of the correlate partitions (one ListOffsets request each), confirms caught-up partitions to
`SourceProgress`, publishes consumer lag, and sends a tick (a record without events, carrying the
progress) to every correlate partition. Failing reads mark a broker outage (`brokers_down`, then
`brokers_back`); stale leader epochs renew the admin client. `IngestService`
(streams/runtime/ingest_service.py) is built on `ProgressReporting`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streams.runtime.ingest import encode_records
from streams.runtime.ingest_produce import MAX_RECORD_BYTES, ProducePipeline
from streams.runtime.kafka_options import confluent_config
from streams.runtime.progress import OUTAGE_GRACE_NS
from streams.runtime.records import BATCH_KEY

log = logging.getLogger("streams.worker.ingest")


def _stale_leader_epoch(exc: BaseException) -> bool:
    error: Any = exc.args[0] if exc.args else None
    name = error.name() if hasattr(error, "name") else ""
    return name in {"FENCED_LEADER_EPOCH", "UNKNOWN_LEADER_EPOCH", "NOT_LEADER_OR_FOLLOWER"}


@dataclass
class PartitionHealth:
    """Lag and progress of one partition, as the watchdog sees it."""

    lag: int = 0
    position: int = -1
    progressed_wall_ns: int = 0  # wall time of the last change of position (or of lag 0)
    checked_wall_ns: int = 0


class ProgressReporting(ProducePipeline):
    """Ticks and end offsets; the state is set up by `IngestService`."""

    faust_group: str
    local_positions: Callable[[], dict[int, int]]
    correlate_health: dict[int, PartitionHealth]
    _stopping: bool
    _ends_ok_wall: int | None
    _unreachable_since: int | None
    _admin: Any
    _group_offsets: Any

    async def _tick_loop(self) -> None:
        interval = self.config.app.tick_interval_ns / 1e9
        while not self._stopping:
            await asyncio.sleep(interval)
            query_wall = self.wall_clock()
            try:
                await self._refresh_ends()
            except Exception as exc:  # a broker outage: keep the last figures
                log.warning("cannot read end offsets: %s", exc)
                if self._unreachable_since is None:
                    self._unreachable_since = self._ends_ok_wall or query_wall
                    # producers buffer meanwhile: see SourceProgress (broker outages)
                    self.progress.brokers_down(self._unreachable_since)
                if _stale_leader_epoch(exc):
                    self._renew_admin()
            else:
                if self._unreachable_since is not None:
                    self.progress.brokers_back(query_wall)
                    log.info(
                        "brokers answer again after %.1f s; the watermark holds for %.0f s "
                        "more (events the producers buffered meanwhile)",
                        (query_wall - self._unreachable_since) / 1e9,
                        OUTAGE_GRACE_NS / 1e9,
                    )
                    self._unreachable_since = None
                self._ends_ok_wall = query_wall
            await self._refresh_committed()
            self.progress.prune(self.wall_clock())
            if self.progress.assigned:
                await self._send_progress(flush=False)

    async def _send_progress(self, *, flush: bool) -> None:
        if not self.progress.assigned or self.source_partitions == 0:
            return
        wall = self.wall_clock()
        empty = self.ingestor.process((), wall)
        for destination, value, _ in encode_records(
            empty,
            digest=self.ingestor.ruleset.digest,
            source_partitions=self.source_partitions,
            progress=self.progress.contributions(),
            wall_ns=wall,
            max_record_bytes=MAX_RECORD_BYTES,
            all_partitions=range(self.correlate_partitions),
        ):
            self._produce(self.correlate_topic, value, BATCH_KEY, destination, self._on_record)
        self._last_progress_ns = wall
        if flush:
            await self._in_io(self._producer.flush, 5.0)
        else:
            self._producer.poll(0)

    async def _refresh_source_partitions(self) -> None:
        def count() -> int:
            metadata = self._admin.list_topics(self.events_topic, timeout=30)
            topic = metadata.topics.get(self.events_topic)
            return len(topic.partitions) if topic is not None and topic.error is None else 0

        self.source_partitions = await self._in_io(count)

    async def _refresh_ends(self) -> None:
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

        latest_spec = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        earliest_spec = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
        assigned = sorted(self.progress.assigned)
        request = {TopicPartition(self.events_topic, p): latest_spec for p in assigned}
        for p in range(self.correlate_partitions):
            request[TopicPartition(self.correlate_topic, p)] = latest_spec
        unknown = [p for p in assigned if p not in self.positions]
        query_wall = self.wall_clock()

        def ask() -> tuple[dict[tuple[str, int], int], dict[int, int]]:
            futures = self._admin.list_offsets(request, request_timeout=10)
            ends = {
                (tp.topic, tp.partition): future.result(timeout=15).offset
                for tp, future in futures.items()
            }
            earliest: dict[int, int] = {}
            if unknown:
                low = self._admin.list_offsets(
                    {TopicPartition(self.events_topic, p): earliest_spec for p in unknown},
                    request_timeout=10,
                )
                earliest = {tp.partition: f.result(timeout=15).offset for tp, f in low.items()}
            return ends, earliest

        ends, earliest = await self._in_io(ask)
        now = self.wall_clock()
        for partition in assigned:
            end = ends.get((self.events_topic, partition))
            if end is None:
                continue
            position = self.positions.get(partition)
            if position is None and earliest.get(partition) == end:
                position = end  # nothing to read (empty, or everything expired)
            health = self.source_health.setdefault(partition, PartitionHealth())
            low = earliest.get(partition, 0)
            lag = max(end - low, 0) if position is None else end - position
            self._note(health, lag, position if position is not None else -1, now)
            self.metrics.consumer_lag.labels(self.events_topic, str(partition)).set(lag)
            if position is not None and position >= end:
                self.progress.confirm_caught_up(partition, query_wall)
        local = self.local_positions()
        for partition in range(self.correlate_partitions):
            end = ends.get((self.correlate_topic, partition))
            if end is None:
                continue
            self.offsets.end[partition] = end
            if partition in local:
                health = self.correlate_health.setdefault(partition, PartitionHealth())
                lag = max(end - local[partition], 0)
                self._note(health, lag, local[partition], now)
                self.metrics.consumer_lag.labels(self.correlate_topic, str(partition)).set(lag)
        for partition in set(self.correlate_health) - set(local):
            del self.correlate_health[partition]

    def _renew_admin(self) -> None:
        """A new AdminClient: after a broker restart (leader epochs bumped) librdkafka's
        AdminClient keeps sending ListOffsets with the leader epochs it cached and fails with
        FENCED_LEADER_EPOCH for good (librdkafka 2.16); a new client asks for fresh metadata.
        Without end offsets no source partition is confirmed caught up, so an idle stream's
        watermark would never move again: held events and absences wait for new events."""
        from confluent_kafka.admin import AdminClient

        log.info("renewing the admin client (stale partition leader epochs)")
        self._admin = AdminClient(confluent_config(self.config.kafka))

    @staticmethod
    def _note(health: PartitionHealth, lag: int, position: int, now: int) -> None:
        if position != health.position or lag == 0 or health.progressed_wall_ns == 0:
            health.progressed_wall_ns = now
        health.lag, health.position, health.checked_wall_ns = lag, position, now

    async def _refresh_committed(self) -> None:
        """The Faust group's committed offsets; on a failure (a broker outage) the last ones
        stay, and the caller goes on (backpressure waits, ticks keep going)."""
        from confluent_kafka import TopicPartition

        request = [
            TopicPartition(self.correlate_topic, p) for p in range(self.correlate_partitions)
        ]

        def ask() -> dict[int, int]:
            result = self._group_offsets.committed(request, timeout=10)
            return {tp.partition: tp.offset for tp in result if tp.offset >= 0}

        try:
            self.offsets.committed.update(await self._in_io(ask))
        except Exception as exc:  # KafkaException: timed out, coordinator not available
            log.warning("cannot read the committed offsets of group %s: %s", self.faust_group, exc)
