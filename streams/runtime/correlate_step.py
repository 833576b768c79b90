"""What the correlate agent does with each record and with the incidents of a group of records.

The agent itself (streams/runtime/app.py) takes records from Faust's stream, groups them and
persists the changed state under an event of each partition; this is the rest, without Faust:
decode a record, run the live and (isolated from them) the shadow correlators, count, log late
events, and produce the incidents (the live ones enriched first; the shadow ones to
`<incidents>-shadow` only).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from streams.runtime.chain_records import CHAIN_KEY, decode_chain
from streams.runtime.metrics import LIVE, SHADOW
from streams.runtime.partitions import BatchOutcome
from streams.runtime.records import RecordError, decode_batch, shadow_incidents_topic

if TYPE_CHECKING:
    from streams.runtime.app import WorkerApp

__all__ = ["CorrelateStep"]

log = logging.getLogger("streams.worker")


class CorrelateStep:
    def __init__(self, worker: WorkerApp, wall_clock: Callable[[], int]) -> None:
        self.worker = worker
        self.metrics = worker.metrics
        self.output = worker.output
        self.wall_clock = wall_clock
        self.correlate_name = worker.correlate_topic
        self.topics = worker.config.topics
        self.shadow_topic = shadow_incidents_topic(self.topics.incidents)

    def record(self, event: Any, shadow_out: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The live incidents of one correlate record; the shadow ones go to `shadow_out`."""
        worker, metrics, correlate_name = self.worker, self.metrics, self.correlate_name
        message = event.message
        partition, offset = message.partition, message.offset
        worker.correlate_waiting_on = f"processing {correlate_name}/{partition}@{offset}"
        if message.key == CHAIN_KEY:
            return self._chain(partition, offset, message.value)
        try:
            batch = decode_batch(message.key, message.value)
        except RecordError as exc:
            metrics.records_invalid.inc()
            log.error(
                "skipped correlate record %s/%d/%d: %s", correlate_name, partition, offset, exc
            )
            return []
        outcome = worker.correlator.on_batch(partition, offset, batch, persist=False)
        if outcome.events:
            metrics.batch_size.labels("correlate").observe(outcome.events)
        if outcome.produced_ms:
            now_s = self.wall_clock() / 1e9
            for produced in outcome.produced_ms:
                metrics.latency.observe(max(now_s - produced / 1000, 0.0))
        self._count(partition, outcome, LIVE)
        if outcome.late and outcome.first_late is not None:
            source_partition, source_offset, time_ns, watermark = outcome.first_late
            log.warning(
                "%d late event(s) in %s/%d/%d, the first from %s/%d/%d: %.3f s behind "
                "the watermark",
                outcome.late,
                correlate_name,
                partition,
                offset,
                self.topics.events,
                source_partition,
                source_offset,
                (watermark - time_ns) / 1e9,
            )
        shadow_correlator = worker.shadow
        if shadow_correlator is not None:  # after the live rules, isolated from them
            shadow_outcome = shadow_correlator.on_batch(partition, offset, batch)
            if shadow_outcome is not None:
                self._count(partition, shadow_outcome, SHADOW)
                shadow_out.extend(shadow_outcome.incidents)
        return outcome.incidents

    def _chain(self, partition: int, offset: int, value: bytes | None) -> list[dict[str, Any]]:
        """A chain record from another partition (streams/runtime/partition_chains.py)."""
        try:
            record = decode_chain(value)
        except RecordError as exc:
            self.metrics.records_invalid.inc()
            log.error(
                "skipped chain record %s/%d/%d: %s", self.correlate_name, partition, offset, exc
            )
            return []
        outcome = self.worker.correlator.on_chain(partition, offset, record, persist=False)
        self.metrics.chain_records.labels("received").inc()
        if outcome.events:
            self.metrics.derived_events.labels("received").inc(outcome.events)
        if outcome.duplicates:
            self.metrics.duplicates.labels(LIVE).inc(outcome.duplicates)
        return outcome.incidents

    def chain_outputs(
        self, partitions: Any, *, report: bool
    ) -> tuple[dict[int, list[tuple[int, bytes]]], list[tuple[int, bytes]]]:
        """The chain records `partitions` send now: per partition those with derived events
        (kept in its outbox until flushed), and the level reports (with `report`, when they
        moved), which need no outbox: a lost one is sent again."""
        correlator, now = self.worker.correlator, self.wall_clock()
        derived_of: dict[int, list[tuple[int, bytes]]] = {}
        reports: list[tuple[int, bytes]] = []
        for partition in partitions:
            derived, moved = correlator.chain_outputs(partition, now, report=report)
            if derived:
                derived_of[partition] = derived
            reports.extend(moved)
        return derived_of, reports

    def produce_chains(self, records: list[tuple[int, bytes]]) -> None:
        for destination, value in records:
            self.output.produce(self.correlate_name, CHAIN_KEY, value, destination, changelog=False)
        if records:
            self.metrics.chain_records.labels("sent").inc(len(records))

    def _count(self, partition: int, outcome: BatchOutcome, shadow_label: str) -> None:
        metrics = self.metrics
        if outcome.events:
            metrics.records.labels(str(partition), shadow_label).inc(outcome.events)
        if outcome.late:
            metrics.late.labels("correlate", shadow_label).inc(outcome.late)
        if outcome.duplicates:
            metrics.duplicates.labels(shadow_label).inc(outcome.duplicates)

    async def emit(self, incidents: list[dict[str, Any]]) -> None:
        """The live rules' incidents: enriched, then to the incidents topic."""
        # enrichment of a batch's incidents runs concurrently, each bounded by the deadline
        enrichment = self.worker.enrichment
        await asyncio.gather(*(enrichment.enrich(incident) for incident in incidents))
        for incident in incidents:
            self._count_incident(incident, LIVE)
            self.output.produce(
                self.topics.incidents,
                incident["id"].encode(),
                orjson.dumps(incident),
                -1,
                changelog=False,
            )
            log.info(
                "incident %s %s %s key=%s count=%d",
                incident["id"],
                incident["status"],
                incident["correlation"],
                incident["key"],
                incident["count"],
            )

    def _count_incident(self, incident: dict[str, Any], shadow_label: str) -> None:
        self.metrics.incidents.labels(
            incident["correlation"],
            incident["status"],
            str(incident.get("severity")),
            shadow_label,
        ).inc()
        self.metrics.matches.labels(incident["correlation"], shadow_label).inc()

    def emit_shadow(self, incidents: list[dict[str, Any]]) -> None:
        """The shadow rules' incidents: to `<incidents>-shadow` only, as `replay` gives them
        (no enrichment: enrichers call external services; no notifier reads this topic)."""
        for incident in incidents:
            self._count_incident(incident, SHADOW)
            self.output.produce(
                self.shadow_topic,
                incident["id"].encode(),
                orjson.dumps(incident),
                -1,
                changelog=False,
            )
            log.info(
                "shadow incident %s %s %s key=%s count=%d",
                incident["id"],
                incident["status"],
                incident["correlation"],
                incident["key"],
                incident["count"],
            )
