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
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The parts, in the order a run uses them (see bench/worker/__init__.py).
from bench.worker import common  # noqa: E402
from bench.worker.baseline import ingest_ceiling, raw_baseline, replay_counts  # noqa: E402
from bench.worker.common import PREFIX, create_topics, delete_topics, log  # noqa: E402
from bench.worker.load import fill_topic, stamp_event, templates  # noqa: E402
from bench.worker.process import inproc_worker, snapshot_rules  # noqa: E402
from bench.worker.report import print_profile, summary, variants  # noqa: E402
from bench.worker.runs import (  # noqa: E402
    LatencyRun,
    ThroughputRun,
    latency_run,
    throughput_worker,
)


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
        "--settle",
        type=float,
        default=20.0,
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
            # every part reads the frozen copy
            rules = common.RULES = snapshot_rules(workdir, args.rules)
            log(f"rules: {args.rules} frozen in {rules} ({len(list(rules.glob('*.yaml')))} files)")
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


if __name__ == "__main__":
    raise SystemExit(main())
