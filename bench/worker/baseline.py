"""What the worker is compared with: a raw confluent-kafka consumer, the pure ingest stage
in-process, and `falco-correlator replay` on the same lines."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import orjson

from bench.worker import common
from bench.worker.common import PARTITIONS, PREFIX, ROOT, VENV_BIN


def raw_baseline(bootstrap: str, topic: str, expected: int) -> float:
    """A plain confluent-kafka consumer: read and orjson-decode the whole topic."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{PREFIX}raw-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    loads = orjson.loads
    seen = 0
    start = time.perf_counter()
    deadline = time.monotonic() + 300
    while seen < expected and time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=10_000, timeout=1.0):
            if msg.error():
                continue
            loads(msg.value())
            seen += 1
    elapsed = time.perf_counter() - start
    consumer.close()
    if seen < expected:
        raise RuntimeError(f"raw consumer read {seen} of {expected}")
    return elapsed


def ingest_ceiling(lines: list[bytes]) -> float:
    """events/s of the pure ingest stage (decode, validate, match, re-key): no Kafka, no Faust."""
    from streams.core.loader import load_rules
    from streams.runtime.ingest import Ingestor, SourceMessage, encode_records

    ingestor = Ingestor(load_rules([str(common.RULES)]), PARTITIONS)
    messages = [
        SourceMessage(offset % PARTITIONS, offset, line, None, 0.0)
        for offset, line in enumerate(lines)
    ]
    start = time.perf_counter()
    for at in range(0, len(messages), 2000):
        batch = ingestor.process(messages[at : at + 2000], time.time_ns())
        encode_records(
            batch,
            digest="",
            source_partitions=PARTITIONS,
            progress={},
            wall_ns=0,
            max_record_bytes=512 * 1024,
        )
    return len(lines) / (time.perf_counter() - start)


REPLAY_IDS: dict[str, dict[str, str]] = {}  # "plain"/"flush" -> incident id -> correlation


def replay_counts(lines_path: Path) -> dict[str, int]:
    counts = {}
    for flush in (False, True):
        cmd = [str(VENV_BIN / "falco-correlator"), "replay", "--rules", str(common.RULES)]
        if flush:
            cmd.append("--flush")
        proc = subprocess.run(
            [*cmd, str(lines_path)], capture_output=True, timeout=600, check=True, cwd=str(ROOT)
        )
        counts["flush" if flush else "plain"] = len(proc.stdout.splitlines())
        REPLAY_IDS["flush" if flush else "plain"] = {
            orjson.loads(line)["id"]: orjson.loads(line)["correlation"]
            for line in proc.stdout.splitlines()
        }
        counts["summary_" + ("flush" if flush else "plain")] = proc.stderr.decode().strip()
    return counts
