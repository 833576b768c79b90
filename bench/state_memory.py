"""Memory per active correlation key: N distinct containers, each starting correlations of the
shipped rules inside one window, none completing. A script, not a test: it prints its figures.

    python bench/state_memory.py [--keys 1000000] [--rules rules/] [--max-state-entries N]

Each event is a ~0.9 KB Falco alert (bench/synthetic.py's shape) for its own container and pod,
so every event opens state for every correlation whose first step it matches; events are 0.2 ms
apart, so a million of them span 200 s, inside every shipped window. Reported: resident memory
after the run minus before it (after a garbage collection), per state entry (one (correlation,
key)) and per distinct container (all the entries one container opened).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.synthetic import _BASE_NS, _payload
from streams.core.engine import Engine
from streams.core.events import event_from_bytes
from streams.core.loader import load_rules

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--rules", default="rules/")
    parser.add_argument("--rule", default="Terminal shell in container")
    parser.add_argument("--max-state-entries", type=int, default=None)
    parser.add_argument(
        "--rss", action="store_true", help="measure resident memory instead of tracemalloc's "
        "live allocations (faster; includes memory freed but kept by the allocator)"
    )  # fmt: skip
    args = parser.parse_args()

    ruleset = load_rules([args.rules])
    kwargs = {}
    if args.max_state_entries is not None:
        kwargs["max_state_entries"] = args.max_state_entries
    engine = Engine(ruleset, **kwargs)
    rng = random.Random(7)
    sample = _payload(rng, _BASE_NS, args.rule, "Notice", 0)
    gc.collect()
    if not args.rss:
        tracemalloc.start()
    before = rss_bytes() if args.rss else tracemalloc.get_traced_memory()[0]
    started = time.monotonic()
    for i in range(args.keys):
        line = _payload(rng, _BASE_NS + i * 200_000, args.rule, "Notice", i)
        engine.submit(event_from_bytes(line, i))
    engine.finish()  # correlate what the reorder buffer still holds (lateness)
    elapsed = time.monotonic() - started
    gc.collect()
    after = rss_bytes() if args.rss else tracemalloc.get_traced_memory()[0]

    used = after - before
    entries = engine.state_entries
    print(f"rules: {args.rules} ({len(ruleset.correlations)} correlations); rule: {args.rule}")
    print(f"event size: {len(sample)} bytes of JSON")
    print(f"distinct containers: {args.keys:,}; state entries: {entries:,}; "
          f"evicted keys: {engine.stats.evicted_keys:,}; {elapsed:.1f} s")  # fmt: skip
    what = "resident memory" if args.rss else "live memory (tracemalloc)"
    print(f"{what}: +{used / 2**20:,.0f} MiB")
    if entries:
        print(f"per state entry: {used / entries:,.0f} bytes")
    print(f"per distinct container: {used / args.keys:,.0f} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
