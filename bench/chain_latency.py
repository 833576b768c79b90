"""Latency of attack chains inside a steady stream (a benchmark, not a test).

    python bench/chain_latency.py [--lateness 2s] [--rate 5000] [--duration 60]

A worker (subprocess, memory store, shipped rules) reads a topic into which the typical mix is
produced at --rate events/s with `time` set to the produce time; once a second a shell-then-C2
chain is produced in a fresh container (its two events on two other partitions, as
falcosidekick's round-robin would). Reported: the delay from producing each chain's last event
to its incident on the incidents topic (p50/p90/p99/max), the chains found, and every 5 s what the
worker says (consumer lag, watermark lag, held events, produce-to-correlate latency). Needs a
broker (deploy/kafka/kafka.sh start, or KAFKA_BOOTSTRAP_SERVERS).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import orjson
from confluent_kafka import Consumer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench.worker_bench as wb
from bench.synthetic import _payload


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lateness", default="2s")
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--duration", type=int, default=60)
    args = parser.parse_args()
    boot = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    run = uuid.uuid4().hex[:8]
    events, incidents = f"{wb.PREFIX}{run}-events", f"{wb.PREFIX}{run}-incidents"
    wb.create_topics(boot, [events, incidents])
    work = Path(tempfile.mkdtemp(prefix="fcbench-chain-"))
    wb.RULES = wb.snapshot_rules(work, str(wb.ROOT / "rules"))
    wb.log(f"run {run}: load {os.getloadavg()}")
    worker = wb.start_worker(boot, run, "chain", events, incidents, "memory", args.lateness, work)
    arrived: dict[str, float] = {}
    stop = threading.Event()

    def reader() -> None:
        consumer = Consumer(
            {"bootstrap.servers": boot, "group.id": f"{wb.PREFIX}{run}-r", "fetch.wait.max.ms": 10}
        )
        consumer.assign([TopicPartition(incidents, p, 0) for p in range(wb.PARTITIONS)])
        while not stop.is_set():
            for message in consumer.consume(1000, 0.1):
                if not message.error():
                    incident = orjson.loads(message.value())
                    arrived.setdefault(str(incident["key"].get("container.id")), time.time())
        consumer.close()

    try:
        deadline = time.monotonic() + 120
        while not worker.ready():
            if time.monotonic() > deadline or worker.proc.poll() is not None:
                raise RuntimeError(f"worker not ready, see {worker.log_path}")
            time.sleep(0.3)
        time.sleep(3.0)
        threading.Thread(target=reader, daemon=True).start()
        noise = wb.templates(args.rate * args.duration, seed=11, mix="typical")
        producer = wb.producer(boot)
        rng = random.Random(1)
        sent: dict[str, float] = {}
        start = time.time()
        for i, template in enumerate(noise):
            due = start + i / args.rate
            now = time.time()
            if due > now:
                time.sleep(due - now)
            value = wb.stamp_event(template.raw, time.time_ns())
            producer.produce(events, value=value, partition=i % wb.PARTITIONS)
            if i % args.rate == 0 and i:
                container = 900_000 + i // args.rate
                at = time.time_ns()
                shell = _payload(rng, at, "Terminal shell in container", "Notice", container)
                c2 = _payload(
                    rng, at + 1_000_000, "Outbound Connection to C2 Servers", "Critical", container
                )
                producer.produce(events, value=shell, partition=(i + 1) % wb.PARTITIONS)
                producer.produce(events, value=c2, partition=(i + 2) % wb.PARTITIONS)
                sent[f"{container:012x}"] = time.time()
                producer.poll(0)
            if i % (args.rate * 5) == 0 and i:
                wb.log_progress(worker, i)
        producer.flush(30)
        time.sleep(wb.parse_duration(args.lateness) / 1e9 + 10)
    finally:
        stop.set()
        time.sleep(0.5)
        worker.stop()
        wb.delete_topics(boot, run)
    delays = sorted(arrived[c] - t for c, t in sent.items() if c in arrived)
    print(f"lateness {args.lateness}, {args.rate}/s for {args.duration}s, load {os.getloadavg()}")
    print(f"chains {len(sent)}, incidents found {len(delays)}")
    if delays:
        print(
            f"delay p50 {wb.percentile(delays, 0.5):.2f}s p90 {wb.percentile(delays, 0.9):.2f}s "
            f"p99 {wb.percentile(delays, 0.99):.2f}s max {delays[-1]:.2f}s"
        )
    return 0 if len(delays) == len(sent) else 1


if __name__ == "__main__":
    sys.exit(main())
