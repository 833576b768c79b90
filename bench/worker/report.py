"""What the benchmark prints: the profile by layer and the summary table."""

from __future__ import annotations

import argparse
import os
import pstats
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.worker.runs import LatencyRun, ThroughputRun


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
