"""Replay throughput of the pure core over a synthetic stream (a benchmark, not a test).

    python bench/replay_bench.py --events 1000000 [--mix typical|noisy|both] [--profile]

Prints, side by side in one run and for each mix: a baseline that only reads and orjson-decodes
the lines, and the full replay (decode, validate, match, reorder, correlate, build incidents), as
medians over --repeat runs (wall clock and CPU time), their ratio, and the peak RSS. Single
process, so one core. On a shared machine the ratio to the baseline measured in the same run is
the figure to compare; CPU time is steadier than wall time when other processes compete.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.synthetic import synthetic_events, typical_events
from streams.cli.replay import read_inputs, replay_lines
from streams.core.engine import Engine
from streams.core.loader import load_rules


def _write_stream(path: Path, count: int, mix: str) -> int:
    lines = 0
    generator = typical_events if mix == "typical" else synthetic_events
    with path.open("wb") as handle:
        for line in generator(count):
            handle.write(line + b"\n")
            lines += 1
    return lines


def _baseline(path: Path) -> tuple[float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    loads = orjson.loads
    with path.open("rb") as handle:
        for line in handle:
            loads(line)
    return time.perf_counter() - start, time.process_time() - cpu


def _replay(path: Path, rules: list[str]) -> tuple[float, float, int, Engine]:
    ruleset = load_rules(rules)
    sink = io.BytesIO()
    start, cpu = time.perf_counter(), time.process_time()
    result, engine = replay_lines(
        ruleset,
        read_inputs([str(path)], sys.stdin.buffer),
        lateness_ns=10_000_000_000,
        flush=False,
        out=sink,
        err=sys.stderr,
    )
    return time.perf_counter() - start, time.process_time() - cpu, result.incidents, engine


def _run_mix(mix: str, args: argparse.Namespace, rules: list[str], tmp: str) -> None:
    path = Path(tmp) / f"{mix}.jsonl"
    lines = _write_stream(path, args.events, mix)
    size_mb = path.stat().st_size / 1e6
    print(f"stream ({mix}): {lines} lines, {size_mb:.0f} MB, rules: {' '.join(rules)}")
    base_wall, base_cpu, replay_wall, replay_cpu = [], [], [], []
    incidents = 0
    engine = None
    for _ in range(args.repeat):
        wall, cpu = _baseline(path)
        base_wall.append(wall)
        base_cpu.append(cpu)
        wall, cpu, incidents, engine = _replay(path, rules)
        replay_wall.append(wall)
        replay_cpu.append(cpu)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for clock, base_times, replay_times in (
        ("wall", base_wall, replay_wall),
        ("cpu ", base_cpu, replay_cpu),
    ):
        base = statistics.median(base_times)
        full = statistics.median(replay_times)
        print(
            f"  {clock} baseline read+orjson.loads : median {base:6.2f} s "
            f"{lines / base:>10,.0f} lines/s"
        )
        print(
            f"  {clock} replay (full core)         : median {full:6.2f} s "
            f"{lines / full:>10,.0f} events/s   ratio {full / base:.2f}x   "
            f"runs {' '.join(f'{lines / t:,.0f}' for t in replay_times)}"
        )
    assert engine is not None
    print(
        f"  incidents: {incidents}, late: {engine.stats.late}, matched events: "
        f"{engine.stats.matched}, state entries at end: {engine.state_entries}, "
        f"peak RSS so far: {peak_mb:.0f} MB, pid {os.getpid()}"
    )
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        _replay(path, rules)
        profiler.disable()
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(15)
    path.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rules", action="append", default=None)
    parser.add_argument("--profile", action="store_true", help="print the top of a cProfile run")
    parser.add_argument(
        "--mix",
        choices=["typical", "noisy", "both"],
        default="both",
        help="typical: the benign-noise fixture tiled, a chain per 1000 events (rare incidents); "
        "noisy: random alerts over 2000 containers, many of them correlation steps; "
        "both (default): typical, then noisy (the peak RSS of the typical mix is its own)",
    )
    args = parser.parse_args()
    rules = args.rules or [str(Path(__file__).resolve().parent.parent / "rules")]
    mixes = ["typical", "noisy"] if args.mix == "both" else [args.mix]
    with tempfile.TemporaryDirectory() as tmp:
        for mix in mixes:
            _run_mix(mix, args, rules, tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
