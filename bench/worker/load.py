"""Load generation: synthetic events stamped with the wall clock, produced to a topic as
falcosidekick does, and read back."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from bench.synthetic import _fmt, synthetic_events, typical_events
from bench.worker.common import PARTITIONS, PREFIX


def stamp_event(raw: dict[str, Any], time_ns: int) -> bytes:
    raw["time"] = _fmt(time_ns)
    fields = raw.get("output_fields")
    if fields is not None and "evt.time" in fields:
        fields["evt.time"] = time_ns
    return orjson.dumps(raw)


@dataclass
class Template:
    """One synthetic event, parsed, with its disorder (how far behind the stream's max it is)."""

    raw: dict[str, Any]
    time_ns: int
    lag_ns: int
    completes_chain: bool


def templates(count: int, seed: int, mix: str = "noisy") -> list[Template]:
    out: list[Template] = []
    high = -(2**63)
    source = (
        typical_events(count, seed=seed) if mix == "typical" else synthetic_events(count, seed=seed)
    )
    for line in source:
        raw = orjson.loads(line)
        t = int(raw["output_fields"]["evt.time"])
        high = max(high, t)
        raw["uuid"] = str(uuid.uuid4())
        out.append(Template(raw, t, high - t, raw["rule"] == "Outbound Connection to C2 Servers"))
    return out


def producer(bootstrap: str) -> Any:
    from confluent_kafka import Producer

    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "compression.type": "none",
            "queue.buffering.max.messages": 1_000_000,
            # falcosidekick sets no key: spread over partitions like its round-robin balancer
            "partitioner": "random",
            "sticky.partitioning.linger.ms": 0,
        }
    )


def fill_topic(bootstrap: str, topic: str, lines: list[bytes]) -> float:
    prod = producer(bootstrap)
    start = time.perf_counter()
    for i, line in enumerate(lines):
        while True:
            try:
                prod.produce(topic, value=line, partition=i % PARTITIONS)
                break
            except BufferError:
                prod.poll(0.05)
        if i % 10_000 == 0:
            prod.poll(0)
    prod.flush(60)
    return time.perf_counter() - start


def read_topic(bootstrap: str, topic: str, expected: int | None, timeout: float) -> list[Any]:
    """Every message of `topic` (all partitions, from the start) until EOF or `expected`."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{PREFIX}reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    meta = consumer.list_topics(topic, timeout=30).topics[topic]
    parts = sorted(meta.partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    messages: list[Any] = []
    eof: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if expected is not None and len(messages) >= expected:
            break
        if expected is None and len(eof) == len(parts):
            break
        for msg in consumer.consume(num_messages=10_000, timeout=0.5):
            if msg.error():
                if msg.error().code() == -191:  # _PARTITION_EOF
                    eof.add(msg.partition())
                continue
            eof.discard(msg.partition())
            messages.append(msg)
    consumer.close()
    return messages
