"""The measured runs: throughput (from the start of a filled topic to idle) and latency (events
produced at a rate, incidents timed as they arrive)."""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench.worker.baseline import REPLAY_IDS
from bench.worker.common import PARTITIONS, PREFIX, create_topics, log, parse_duration
from bench.worker.load import producer, read_topic, stamp_event, templates
from bench.worker.process import (
    Worker,
    log_warnings,
    peak_rss_mb,
    proc_cpu_seconds,
    start_worker,
    thread_cpu_seconds,
)


@dataclass
class ThroughputRun:
    store: str
    startup_s: float  # spawn to first event counted
    ingest_s: float  # first event counted to the last
    steady_rate: float  # events/s between 10 % and 90 % of the stream
    overall_rate: float  # events/s from first event to all correlate records processed
    incidents: int
    incident_ids: int
    late_ingest: float
    late_correlate: float
    records: float
    cpu_s: float


def throughput_worker(
    args: argparse.Namespace,
    run_id: str,
    tag: str,
    events_topic: str,
    total: int,
    store: str,
    workdir: Path,
    profile_out: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> ThroughputRun:
    bootstrap = args.bootstrap
    incidents_topic = f"{PREFIX}{run_id}-{tag}-incidents"
    create_topics(bootstrap, [incidents_topic])
    worker = start_worker(
        bootstrap,
        run_id,
        tag,
        events_topic,
        incidents_topic,
        store,
        "10s",
        workdir,
        profile_out,
        extra_env,
    )
    samples: list[tuple[float, float]] = []  # (monotonic, fc_events_total)
    t_first = t_last = None
    last: dict[str, float] = {}
    cpu_at_end = float("nan")
    try:
        deadline = time.monotonic() + args.timeout
        stable_since = None
        prev_records = -1.0
        while time.monotonic() < deadline:
            if worker.proc.poll() is not None:
                raise RuntimeError(
                    f"worker exited ({worker.proc.returncode}), see {worker.log_path}"
                )
            m = worker.metrics()
            now = time.monotonic()
            if m is not None:
                last = m
                events = m.get("fc_events_total", 0.0)
                samples.append((now, events))
                if events > 0 and t_first is None:
                    t_first = now
                if events >= total and t_last is None:
                    t_last = now
                records = m.get("fc_correlate_records_total", 0.0)
                if t_last is not None:
                    # the correlate stage is done once its record count stops moving
                    if records == prev_records:
                        stable_since = stable_since or now
                        if now - stable_since >= 1.0:
                            cpu_at_end = proc_cpu_seconds(worker.proc.pid)
                            log(f"  worker peak RSS: {peak_rss_mb(worker.proc.pid):.0f} MB")
                            threads = [round(c, 1) for c in thread_cpu_seconds(worker.proc.pid)]
                            log(f"  worker thread CPU s (main first): {threads}")
                            break
                    else:
                        stable_since = None
                prev_records = records
            time.sleep(0.2)
        else:
            raise RuntimeError(f"timeout: worker at {last.get('fc_events_total')} of {total}")
        t_done = stable_since or time.monotonic()
        assert t_first is not None
        assert t_last is not None
        # incidents held back by the watermark come out once the stream is idle for `lateness`
        time.sleep(args.settle)
        final = worker.metrics() or last
    finally:
        code = worker.stop()
        log_warnings(worker.log_path)
        with contextlib.suppress(OSError):
            for line in worker.log_path.read_text(errors="replace").splitlines():
                if line.startswith("FCBENCH-TRACE"):
                    log("  " + line)
    messages = read_topic(bootstrap, incidents_topic, None, 60)
    ids = {m.key() for m in messages}
    if REPLAY_IDS:
        got = {m.key().decode(): orjson.loads(m.value())["correlation"] for m in messages}
        plain, flushed = REPLAY_IDS["plain"], REPLAY_IDS["flush"]
        missing = {i: c for i, c in plain.items() if i not in got}
        extra = {i: c for i, c in got.items() if i not in flushed}
        log(
            f"  vs replay: {len(missing)} of replay's incidents missing, {len(extra)} not in "
            f"replay --flush: missing {sorted(missing.values())[:10]}, extra "
            f"{sorted(extra.values())[:10]}"
        )
    lo, hi = 0.1 * total, 0.9 * total
    t_lo = next(t for t, e in samples if e >= lo)
    t_hi = next(t for t, e in samples if e >= hi)
    e_lo = next(e for t, e in samples if e >= lo)
    e_hi = next(e for t, e in samples if e >= hi)
    steady = (e_hi - e_lo) / max(t_hi - t_lo, 1e-9)
    run = ThroughputRun(
        store=store,
        startup_s=t_first - worker.started,
        ingest_s=t_last - t_first,
        steady_rate=steady,
        overall_rate=total / max(t_done - t_first, 1e-9),
        incidents=len(messages),
        incident_ids=len(ids),
        late_ingest=final.get("fc_events_late_total:ingest", 0.0),
        late_correlate=final.get("fc_events_late_total:correlate", 0.0),
        records=final.get("fc_correlate_records_total", 0.0),
        cpu_s=cpu_at_end,
    )
    log(
        f"worker[{tag}] store={store}: startup {run.startup_s:.1f}s, {total} events in "
        f"{run.ingest_s:.1f}s, steady {run.steady_rate:,.0f}/s, overall {run.overall_rate:,.0f}/s, "
        f"incidents {run.incidents} ({run.incident_ids} ids), late ingest/correlate "
        f"{run.late_ingest:.0f}/{run.late_correlate:.0f}, records {run.records:.0f}, "
        f"cpu {run.cpu_s:.1f}s, exit {code}"
    )
    return run


@dataclass
class LatencyRun:
    lateness: str
    produced: int
    achieved_rate: float
    chains: int
    incidents: int
    matched: int
    p50: float
    p99: float
    max: float
    late_ingest: float
    late_correlate: float


def log_progress(worker: Worker, produced: int) -> None:
    """What the worker says mid-run: lag, watermark lag, held events, ingest latency."""
    m = worker.metrics() or {}
    count = m.get("fc_processing_latency_seconds_count", 0.0)
    mean = m.get("fc_processing_latency_seconds_sum", 0.0) / count if count else float("nan")
    log(
        f"  produced {produced}: consumer lag {m.get('fc_consumer_lag', 0):.0f}, "
        f"watermark lag {m.get('fc_watermark_lag_seconds', 0):.1f}s (sum over partitions), "
        f"held {m.get('fc_held_events', 0):.0f}, produce->correlate mean {mean:.3f}s, "
        f"backpressure {m.get('fc_ingest_backpressure_total', 0):.0f}"
    )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def latency_run(
    args: argparse.Namespace, run_id: str, tag: str, lateness: str, workdir: Path
) -> LatencyRun:
    from confluent_kafka import Consumer, TopicPartition

    bootstrap = args.bootstrap
    events_topic = f"{PREFIX}{run_id}-{tag}-events"
    incidents_topic = f"{PREFIX}{run_id}-{tag}-incidents"
    create_topics(bootstrap, [events_topic, incidents_topic])
    count = args.rate * args.duration
    tmpl = templates(count, seed=11, mix=args.mix)
    produced_at: dict[str, float] = {}
    chain_ids = {t.raw["uuid"] for t in tmpl if t.completes_chain}

    arrivals: list[tuple[float, bytes]] = []
    stop_reading = threading.Event()

    def reader() -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"{PREFIX}lat-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        consumer.assign([TopicPartition(incidents_topic, p, 0) for p in range(PARTITIONS)])
        while not stop_reading.is_set():
            for msg in consumer.consume(num_messages=1000, timeout=0.1):
                if not msg.error():
                    arrivals.append((time.time(), msg.value()))
        consumer.close()

    worker = start_worker(
        bootstrap, run_id, tag, events_topic, incidents_topic, "memory", lateness, workdir
    )
    thread = threading.Thread(target=reader, daemon=True)
    final: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 120
        while not worker.ready():
            if time.monotonic() > deadline or worker.proc.poll() is not None:
                raise RuntimeError(f"worker not ready, see {worker.log_path}")
            time.sleep(0.3)
        time.sleep(3.0)  # let the consumer take its assignment before the first event
        thread.start()
        prod = producer(bootstrap)
        interval = 1.0 / args.rate
        start = time.time()
        scale = args.disorder
        for i, t in enumerate(tmpl):
            due = start + i * interval
            now = time.time()
            if due > now:
                time.sleep(due - now)
                now = time.time()
            value = stamp_event(t.raw, time.time_ns() - int(t.lag_ns * scale))
            while True:
                try:
                    prod.produce(events_topic, value=value, partition=i % PARTITIONS)
                    break
                except BufferError:
                    prod.poll(0.01)
            produced_at[t.raw["uuid"]] = now
            if i % 200 == 0:
                prod.poll(0)
            if i % (args.rate * 10) == 0 and i:
                log_progress(worker, i)
        prod.flush(30)
        elapsed = time.time() - start
        # the last incidents wait for the watermark; idle ticks release them after `lateness`
        time.sleep(parse_duration(lateness) / 1e9 + args.settle)
        final = worker.metrics() or {}
    finally:
        stop_reading.set()
        if thread.is_alive():
            thread.join(10)
        worker.stop()
    delays = []
    incidents = 0
    for arrived, value in arrivals:
        incident = orjson.loads(value)
        incidents += 1
        events = incident.get("events") or []
        last = [e for e in events if e.get("time") == incident.get("last_seen")] or events[-1:]
        if last and last[-1].get("uuid") in produced_at:
            delays.append(arrived - produced_at[last[-1]["uuid"]])
    matched_chains = sum(
        1
        for _, v in arrivals
        if (inc := orjson.loads(v)).get("correlation") == "Shell then outbound connection"
        and any(e.get("uuid") in chain_ids for e in inc.get("events") or [])
    )
    run = LatencyRun(
        lateness=lateness,
        produced=count,
        achieved_rate=count / elapsed,
        chains=len(chain_ids),
        incidents=incidents,
        matched=matched_chains,
        p50=percentile(delays, 0.5),
        p99=percentile(delays, 0.99),
        max=max(delays) if delays else float("nan"),
        late_ingest=final.get("fc_events_late_total:ingest", 0.0),
        late_correlate=final.get("fc_events_late_total:correlate", 0.0),
    )
    log(
        f"latency lateness={lateness}: {count} events at {run.achieved_rate:,.0f}/s, "
        f"{run.chains} chains injected, {run.matched} chain incidents, {incidents} incidents; "
        f"delay p50 {run.p50:.3f}s p99 {run.p99:.3f}s max {run.max:.3f}s; late ingest/correlate "
        f"{run.late_ingest:.0f}/{run.late_correlate:.0f}"
    )
    return run
