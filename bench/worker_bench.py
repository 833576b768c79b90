"""End-to-end benchmark of the Faust worker against a real Kafka broker (a benchmark, not a test).

    python bench/worker_bench.py [--events 200000] [--rate 5000] [--duration 30]
                                 [--repeat 3] [--stores memory,rocksdb]
                                 [--latency-lateness 10s,200ms] [--profile]

Needs a broker (`deploy/kafka/kafka.sh start`, or KAFKA_BOOTSTRAP_SERVERS). Every run uses
fresh, uniquely named topics and consumer groups (prefix `fcbench-`), deleted at the end unless
--keep-topics. Phases:

1. Fill: the synthetic busy-cluster stream (bench/synthetic.py) with `time`/`evt.time` moved to
   the current wall clock and a falcosidekick `uuid` added, written unkeyed (round-robin over 3
   partitions, as falcosidekick) with a confluent-kafka Producer.
2. Throughput, side by side: a raw confluent-kafka Consumer reading the whole topic and
   orjson-decoding every value (the baseline), then the worker (`falco-correlator worker`, a
   subprocess) from the beginning until /metrics `fc_events_total` reaches the end and the
   correlate stage is idle; per store, --repeat times. Incidents on the incidents topic are
   compared with `falco-correlator replay` on the same lines (with and without --flush).
3. Latency: the worker first, then events produced at --rate for --duration with their `time`
   set at produce time (keeping the generator's 0-2 s disorder, scaled by --disorder); the
   incidents topic is consumed meanwhile and the delay from the produce time of an incident's
   last event to the incident's arrival is reported, once per --latency-lateness value.
4. A summary table.

--profile runs one more throughput pass with the worker in-process under cProfile (this script
re-executes itself with FC_BENCH_PROFILE=<file>, which wraps `run_worker`) and prints the
function-level profile plus a per-layer breakdown of the worker's CPU time per event.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.synthetic import _fmt, synthetic_events, typical_events  # noqa: E402

PARTITIONS = 3
RULES = ROOT / "rules"  # replaced by a frozen copy in main()
PREFIX = "fcbench-"
VENV_BIN = Path(sys.executable).parent


# --------------------------------------------------------------------------------------------
# helpers


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_duration(text: str) -> int:
    units = {"ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000}
    for unit in ("ms", "s", "m"):
        if text.endswith(unit) and text[: -len(unit)].isdigit():
            return int(text[: -len(unit)]) * units[unit]
    raise argparse.ArgumentTypeError(f"bad duration {text!r}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def admin(bootstrap: str) -> Any:
    from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

    return AdminClient({"bootstrap.servers": bootstrap})


def create_topics(bootstrap: str, names: list[str], partitions: int = PARTITIONS) -> None:
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    client = admin(bootstrap)  # keep the handle alive until the futures are done
    futures = client.create_topics(
        [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names],
        request_timeout=30,
    )
    for future in futures.values():
        future.result(timeout=30)


def delete_topics(bootstrap: str, run_id: str) -> None:
    client = admin(bootstrap)
    names = [t for t in client.list_topics(timeout=30).topics if run_id in t]
    if names:
        for future in client.delete_topics(names, request_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result(timeout=30)
    log(f"deleted {len(names)} topics of run {run_id}")


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
    source = typical_events(count, seed=seed) if mix == "typical" else synthetic_events(
        count, seed=seed
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


# The side-by-side workload: shell then C2 within 2 min, >= 5 sensitive reads in 1 min.
TWO_RULES = """
- correlation: Shell then C2
  type: sequence
  by: [container.id]
  within: 2m
  steps:
    - {name: shell, condition: rule = "Terminal shell in container"}
    - {name: c2, condition: rule = "Outbound Connection to C2 Servers"}
  severity: Critical
  output: "shell then C2 in {{ key['container.id'] }}"
- correlation: Sensitive reads
  type: count
  by: [container.id]
  condition: rule = "Read sensitive file untrusted"
  threshold: 5
  within: 1m
  severity: Warning
  output: "{{ count }} sensitive reads in {{ key['container.id'] }}"
"""


def snapshot_rules(workdir: Path, source: str) -> Path:
    """A frozen copy of the rules, so an edit of rules/ during the run reloads nothing.

    `source` is a directory, or `git:REV` for the rules/ committed at REV.
    """
    target = workdir / "rules"
    if source == "two-rule":
        target.mkdir()
        (target / "two.yaml").write_text(TWO_RULES)
    elif source.startswith("git:"):
        target.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", source[4:], "rules/"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(workdir)], input=archive, check=True)
    else:
        shutil.copytree(source, target)
    return target


# --------------------------------------------------------------------------------------------
# the worker


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    port: int
    app_id: str
    log_path: Path
    data_dir: Path
    started: float = field(default_factory=time.monotonic)

    def metrics(self) -> dict[str, float] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return None
        totals: dict[str, float] = defaultdict(float)
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            base = name.split("{", 1)[0]
            if 'stage="ingest"' in name:
                base += ":ingest"
            elif 'stage="correlate"' in name:
                base += ":correlate"
            totals[base] += float(value)
        return totals

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_worker(
    bootstrap: str,
    run_id: str,
    tag: str,
    events_topic: str,
    incidents_topic: str,
    store: str,
    lateness: str,
    workdir: Path,
    profile_out: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> Worker:
    app_id = f"{PREFIX}{run_id}-{tag}"
    port = free_port()
    data_dir = workdir / f"data-{tag}"
    config = {
        "kafka": {"bootstrap_servers": bootstrap},
        "topics": {
            "events": events_topic,
            "incidents": incidents_topic,
            "dead_letter": f"{app_id}-dlq",
            "notify_dead_letter": f"{app_id}-notify-dlq",
            "partitions": PARTITIONS,
        },
        "app": {
            "id": app_id,
            "rules": [str(RULES)],
            "lateness": lateness,
            "store": store,
            "data_dir": str(data_dir),
            "web_port": port,
            "log_level": "INFO",
            "log_format": "console",
        },
    }
    cfg_path = workdir / f"worker-{tag}.yaml"
    cfg_path.write_bytes(orjson.dumps(config))  # JSON is YAML
    log_path = workdir / f"worker-{tag}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FC_")}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    env.update(extra_env or {})
    if profile_out is not None:
        env["FC_BENCH_PROFILE"] = str(profile_out)
    if profile_out is None and not extra_env:
        cmd = [str(VENV_BIN / "falco-correlator"), "worker", "--config", str(cfg_path)]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--inproc-worker", str(cfg_path)]
    handle = log_path.open("wb")
    proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    return Worker(proc, port, app_id, log_path, data_dir)


def install_trace() -> None:
    """Time the awaits where the worker can stall (FC_BENCH_TRACE=1); printed at exit."""
    import atexit
    from collections import Counter

    from faust.topics import Topic
    from faust.transport.consumer import Consumer
    from faust.transport.producer import ProducerBuffer
    from mode.utils.queues import FlowControlQueue

    spent: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    started = time.perf_counter()

    def timed(cls: Any, name: str, label: str, only_if: Any = None, count: Any = None) -> None:
        original = getattr(cls, name)

        async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            if only_if is not None and not only_if(self):
                return await original(self, *args, **kwargs)
            t0 = time.perf_counter()
            result = None
            try:
                result = await original(self, *args, **kwargs)
                return result
            finally:
                spent[label] += time.perf_counter() - t0
                calls[label] += 1
                if count is not None and result is not None:
                    calls[label + " (items)"] += count(result)

        setattr(cls, name, wrapper)

    timed(Consumer, "_commit_tps", "consumer commit (incl. producer flush)")
    timed(
        Consumer,
        "_wait_next_records",
        "drain loop waits for fetched records",
        count=lambda r: sum(len(v) for v in (r[0] or {}).values()),
    )
    timed(ProducerBuffer, "flush_atmost", "producer buffer full: flush_atmost")
    from faust.channels import Channel

    original_anext = Channel.__anext__

    async def anext(self: Any) -> Any:
        queue = self.queue
        label = f"agent on {getattr(self, 'topics', ['?'])[0]} waits on an empty stream queue"
        calls[label.replace("waits on", "reads") + " (all reads)"] += 1
        if not queue.empty():
            return await original_anext(self)
        t0 = time.perf_counter()
        try:
            return await original_anext(self)
        finally:
            spent[label] += time.perf_counter() - t0
            calls[label] += 1

    Channel.__anext__ = anext  # type: ignore[method-assign]
    del FlowControlQueue
    timed(Topic, "send", "agent awaits topic.send")

    def report() -> None:
        wall = time.perf_counter() - started
        lines = [f"FCBENCH-TRACE wall {wall:.1f}s since start"]
        for label, n in calls.items():
            if label.endswith("(all reads)"):
                lines.append(f"FCBENCH-TRACE {label}: {n}")
        for label, total in spent.most_common():
            items = calls.get(label + " (items)")
            extra = f", {items} items" if items else ""
            lines.append(f"FCBENCH-TRACE {label}: {total:.2f}s in {calls[label]} calls{extra}")
        sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.flush()

    atexit.register(report)


def inproc_worker(config_path: str) -> int:
    """The worker in this process: FC_BENCH_PROFILE=<file> profiles it with cProfile,
    FC_BENCH_TRACE=1 times its stalls, FC_BENCH_APP=<file.py> swaps in a prototype build_app
    (a copy of streams/runtime/app.py kept outside the repo)."""
    import streams.runtime.app as app_module
    from streams.runtime.cli import run_worker

    proto = os.environ.get("FC_BENCH_APP")
    if proto:
        import importlib.util

        spec = importlib.util.spec_from_file_location("fc_bench_proto_app", proto)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        app_module.build_app = module.build_app  # type: ignore[attr-defined]
    if os.environ.get("FC_BENCH_TRACE"):
        install_trace()
    out = os.environ.get("FC_BENCH_PROFILE")
    if not out:
        return run_worker(config_path=config_path, rules=None)
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        return run_worker(config_path=config_path, rules=None)
    finally:
        profiler.disable()
        profiler.dump_stats(out)


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


def thread_cpu_seconds(pid: int) -> list[float]:
    """CPU seconds of each thread of `pid`, the main thread first."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = []
    with contextlib.suppress(OSError):
        for task in sorted(Path(f"/proc/{pid}/task").iterdir(), key=lambda p: int(p.name)):
            with contextlib.suppress(OSError):
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                out.append((int(fields[11]) + int(fields[12])) / ticks)
    return out


def log_warnings(path: Path, limit: int = 4) -> None:
    seen: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            if " WARNING " in line or " ERROR " in line:
                text = line.split(": ", 1)[-1][:120]
                seen[text] = seen.get(text, 0) + 1
    for text, n in sorted(seen.items(), key=lambda kv: -kv[1])[:limit]:
        log(f"  worker log x{n}: {text}")


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def proc_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


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


def ingest_ceiling(lines: list[bytes]) -> float:
    """events/s of the pure ingest stage (decode, validate, match, re-key): no Kafka, no Faust."""
    from streams.core.loader import load_rules
    from streams.runtime.ingest import Ingestor, SourceMessage, encode_records

    ingestor = Ingestor(load_rules([str(RULES)]), PARTITIONS)
    messages = [
        SourceMessage(offset % PARTITIONS, offset, line, None, 0.0)
        for offset, line in enumerate(lines)
    ]
    start = time.perf_counter()
    for at in range(0, len(messages), 2000):
        batch = ingestor.process(messages[at : at + 2000], time.time_ns())
        encode_records(
            batch, digest="", source_partitions=PARTITIONS, progress={}, wall_ns=0,
            max_record_bytes=512 * 1024,
        )
    return len(lines) / (time.perf_counter() - start)


def replay_counts(lines_path: Path) -> dict[str, int]:
    counts = {}
    for flush in (False, True):
        cmd = [str(VENV_BIN / "falco-correlator"), "replay", "--rules", str(RULES)]
        if flush:
            cmd.append("--flush")
        proc = subprocess.run(
            [*cmd, str(lines_path)], capture_output=True, timeout=600, check=True, cwd=str(ROOT)
        )
        counts["flush" if flush else "plain"] = len(proc.stdout.splitlines())
        counts["summary_" + ("flush" if flush else "plain")] = proc.stderr.decode().strip()
    return counts


# --------------------------------------------------------------------------------------------
# latency


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


# --------------------------------------------------------------------------------------------
# profile


def layer_of(filename: str) -> str:
    f = filename.replace("\\", "/")
    for marker, name in (
        ("/streams/core/", "streams.core (pure engine)"),
        ("/streams/runtime/", "streams.runtime (agents, records, partitions)"),
        ("/faust/tables/", "faust tables"),
        ("/faust/", "faust (stream/agent/topic/consumer)"),
        ("/mode/", "mode (services, utils)"),
        ("/aiokafka/", "aiokafka (client, fetch, protocol)"),
        ("/kafka/", "aiokafka (client, fetch, protocol)"),
        ("/prometheus_client/", "prometheus_client"),
        ("/asyncio/", "asyncio event loop"),
        ("/logging/", "logging"),
        ("/rocksdict/", "rocksdb"),
    ):
        if marker in f:
            return name
    return "other python"


def print_profile(path: Path, events: int, top: int) -> None:
    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    layers: dict[str, float] = defaultdict(float)
    idle = 0.0
    for (filename, _line, func), (_cc, _nc, tt, _ct, callers) in raw.items():
        if filename == "~":  # a C function: charge it to its callers' layers
            if "poll" in func and ("select" in func or "epoll" in func):
                idle += tt
                continue
            owner = "C builtins"
            if "orjson" in func:
                owner = "orjson"
            total_caller_tt = sum(c[2] for c in callers.values()) or 1.0
            for (cf, _cl, _cfn), ctimes in callers.items():
                share = tt * ctimes[2] / total_caller_tt
                layers[f"{layer_of(cf)}" if owner == "C builtins" else owner] += share
            if not callers:
                layers[owner] += tt
            continue
        layers[layer_of(filename)] += tt
    busy = sum(layers.values())
    print(f"\nprofile of the worker process ({path}): {events} events")
    print(f"  busy CPU in profile {busy:.2f}s (+ {idle:.2f}s waiting in epoll/select)")
    print(f"  => {busy / events * 1e6:.0f} us of worker CPU per event (profiling inflates this)")
    print("  by layer (own time, C calls charged to their Python callers):")
    for name, tt in sorted(layers.items(), key=lambda kv: -kv[1]):
        print(
            f"    {name:<48} {tt:7.2f}s  {100 * tt / busy:5.1f}%  {tt / events * 1e6:6.1f} us/event"
        )
    print(f"\n  top {top} functions by own time:")
    stats.sort_stats("tottime").print_stats(top)
    print(f"  top {top} functions by cumulative time:")
    stats.sort_stats("cumulative").print_stats(top)


# --------------------------------------------------------------------------------------------


def variants(args: argparse.Namespace) -> list[tuple[str, str, dict[str, str]]]:
    """(label, store, extra environment) of each worker run in a throughput round."""
    out = [(store, store, {}) for store in args.stores.split(",")]
    trace = {"FC_BENCH_TRACE": "1"} if args.trace else {}
    if args.trace:
        out = [(f"{store}-trace", store, dict(trace)) for _, store, _ in out]
    for proto in args.proto or []:
        name = Path(proto).stem
        out.append((f"{name}", "memory", {"FC_BENCH_APP": str(Path(proto).resolve()), **trace}))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--duration", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--stores", default="memory,rocksdb")
    parser.add_argument("--latency-lateness", default="10s,200ms")
    parser.add_argument("--disorder", type=float, default=1.0, help="scale the 0-2 s disorder")
    parser.add_argument(
        "--settle", type=float, default=20.0,
        help="s to wait for held incidents (lateness 10 s + idle_timeout 2 s + ticks)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="s per worker run")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-only", action="store_true")
    parser.add_argument("--profile-top", type=int, default=35)
    parser.add_argument("--keep-topics", action="store_true")
    parser.add_argument(
        "--trace", action="store_true", help="run the workers in-process, timing their stalls"
    )
    parser.add_argument(
        "--proto",
        action="append",
        metavar="APP.py",
        help="also run a prototype copy of streams/runtime/app.py (store memory), in-process",
    )
    parser.add_argument(
        "--rules",
        default=str(ROOT / "rules"),
        help="rules directory to freeze for the run, git:REV (e.g. git:HEAD), or two-rule "
        "(shell then C2 within 2m, >= 5 sensitive reads in 1m: the issue's side-by-side workload)",
    )
    parser.add_argument(
        "--mix",
        choices=["typical", "noisy"],
        default="typical",
        help="typical: benign-noise fixture tiled, a chain per 1000 events (rare incidents); "
        "noisy: the synthetic busy-cluster stream (one event in eight ends an incident)",
    )
    parser.add_argument("--inproc-worker", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inproc_worker:
        return inproc_worker(args.inproc_worker)
    args.bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    run_id = uuid.uuid4().hex[:8]
    log(f"run {run_id} on {args.bootstrap}, {os.cpu_count()} CPUs, load {os.getloadavg()}")
    raw_times: list[float] = []
    tp_runs: list[ThroughputRun] = []
    lat_runs: list[LatencyRun] = []
    replay: dict[str, int] = {}
    total = 0
    ceiling = 0.0
    try:
        with tempfile.TemporaryDirectory(prefix="fcbench-") as tmp:
            workdir = Path(tmp)
            global RULES  # noqa: PLW0603 - every helper reads the frozen copy
            RULES = snapshot_rules(workdir, args.rules)
            log(f"rules: {args.rules} frozen in {RULES} ({len(list(RULES.glob('*.yaml')))} files)")
            if not args.skip_throughput or args.profile or args.profile_only:
                tmpl = templates(args.events, seed=7, mix=args.mix)
                # the generator's times (~1 ms apart, 0-2 s disorder), moved to end at "now"
                shift = time.time_ns() - max(t.time_ns for t in tmpl)
                lines = [stamp_event(t.raw, t.time_ns + shift) for t in tmpl]
                total = len(lines)
                lines_path = workdir / "events.jsonl"
                lines_path.write_bytes(b"\n".join(lines) + b"\n")
                events_topic = f"{PREFIX}{run_id}-events"
                create_topics(args.bootstrap, [events_topic])
                took = fill_topic(args.bootstrap, events_topic, lines)
                size = lines_path.stat().st_size / 1e6
                log(f"filled {events_topic}: {total} events, {size:.0f} MB in {took:.1f}s")
                ceiling = ingest_ceiling(lines)
                log(f"pure Ingestor.ingest (no Kafka, no Faust): {ceiling:,.0f} events/s")
                del lines, tmpl
                replay = replay_counts(lines_path)
                log(f"replay: {replay['plain']} incidents, --flush {replay['flush']}")
                log(f"  {replay['summary_plain']}")
                if not args.skip_throughput and not args.profile_only:
                    for r in range(args.repeat):
                        raw_times.append(raw_baseline(args.bootstrap, events_topic, total))
                        log(f"raw consumer: {total / raw_times[-1]:,.0f} events/s")
                        for label, store, extra in variants(args):
                            run = throughput_worker(
                                args,
                                run_id,
                                f"{label}{r}",
                                events_topic,
                                total,
                                store,
                                workdir,
                                None,
                                extra,
                            )
                            run.store = label
                            tp_runs.append(run)
                if args.profile or args.profile_only:
                    prof = workdir / "worker.prof"
                    throughput_worker(
                        args, run_id, "prof", events_topic, total, "memory", workdir, prof
                    )
                    keep = (
                        Path(tempfile.gettempdir()) / "fcbench-worker.prof"
                    )  # outlives the workdir
                    keep.write_bytes(prof.read_bytes())
                    print_profile(keep, total, args.profile_top)
            if not args.skip_latency and not args.profile_only:
                for i, lateness in enumerate(args.latency_lateness.split(",")):
                    lat_runs.append(latency_run(args, run_id, f"lat{i}", lateness, workdir))
    finally:
        if not args.keep_topics:
            with contextlib.suppress(Exception):
                delete_topics(args.bootstrap, run_id)
    summary(args, total, raw_times, tp_runs, lat_runs, replay)
    if ceiling:
        print(f"pure ingest stage in-process (no Kafka/Faust): {ceiling:,.0f} events/s")
    return 0


def summary(
    args: argparse.Namespace,
    total: int,
    raw_times: list[float],
    tp_runs: list[ThroughputRun],
    lat_runs: list[LatencyRun],
    replay: dict[str, int],
) -> None:
    print("\n=== summary ===")
    if raw_times:
        raw_rate = total / statistics.median(raw_times)
        rates = ", ".join(f"{total / t:,.0f}" for t in raw_times)
        print(f"events: {total}; load now {os.getloadavg()}")
        print(f"{'stage':<34}{'median ev/s':>14}{'runs':>36}{'raw/x':>8}")
        print(f"{'raw confluent consumer + orjson':<34}{raw_rate:>14,.0f}{rates:>36}{'1.0':>8}")
        for store in [label for label, _, _ in variants(args)]:
            runs = [r for r in tp_runs if r.store == store]
            if not runs:
                continue
            for label, attr in (("steady 10-90%", "steady_rate"), ("overall", "overall_rate")):
                values = [getattr(r, attr) for r in runs]
                med = statistics.median(values)
                print(
                    f"{'worker ' + store + ' ' + label:<34}{med:>14,.0f}"
                    f"{', '.join(f'{v:,.0f}' for v in values):>36}{raw_rate / med:>8.1f}"
                )
            cpu = statistics.median(r.cpu_s for r in runs)
            print(
                f"  {store}: startup {statistics.median(r.startup_s for r in runs):.1f}s, "
                f"worker CPU {cpu:.1f}s = {cpu / total * 1e6:.0f} us/event, incidents "
                f"{sorted({r.incidents for r in runs})} (distinct ids "
                f"{sorted({r.incident_ids for r in runs})}), late at ingest "
                f"{sorted({int(r.late_ingest) for r in runs})}"
            )
        if replay:
            print(
                f"replay on the same lines: {replay['plain']} incidents "
                f"(--flush: {replay['flush']})"
            )
        print("aim: >= 25,000 events/s per worker process")
    if lat_runs:
        print(f"\nlatency at {args.rate}/s for {args.duration}s (disorder x{args.disorder}):")
        print(
            f"{'lateness':<10}{'rate':>8}{'chains':>8}{'found':>7}{'incid.':>8}"
            f"{'p50 s':>8}{'p99 s':>8}{'max s':>8}{'late in':>9}"
        )
        for r in lat_runs:
            print(
                f"{r.lateness:<10}{r.achieved_rate:>8,.0f}{r.chains:>8}{r.matched:>7}"
                f"{r.incidents:>8}{r.p50:>8.3f}{r.p99:>8.3f}{r.max:>8.3f}{r.late_ingest:>9.0f}"
            )
        print("aim: p99 < 1 s at 5,000 events/s")


if __name__ == "__main__":
    raise SystemExit(main())
