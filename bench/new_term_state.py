"""State per key of a `new_term` correlation with a 7-day history (a script, not a test).

    python bench/new_term_state.py [--keys 1000] [--terms 10 100 1000] [--days 7]

For each number of terms per key: `--keys` workloads each connect to that many distinct
destinations spread over `--days` days (the shipped "First outbound destination of a workload":
`within: 7d`, one destination per event, all within the history). Reported per key: the live
memory the engine holds for it (tracemalloc, after the run, divided by the keys), and the size
of its snapshot entry (the worker's changelog value, compact JSON).
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streams.core.engine import Engine
from streams.core.events import Event
from streams.core.loader import load_rules
from streams.core.snapshot import entry_to_data

RULE = """
- correlation: First outbound destination of a workload
  type: new_term
  by: [k8s.ns.name, container.image.repository]
  fields: [fd.sip]
  within: 7d
  learn: 1d
  condition: rule = "Unexpected outbound connection destination"
"""
_BASE_NS = 1_714_521_600 * 10**9
_DAY_NS = 86_400 * 10**9


def _measure(keys: int, terms: int, days: int, tmp: Path) -> tuple[float, float]:
    path = tmp / "new-term.yaml"
    path.write_text(RULE)
    ruleset = load_rules([path])
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    engine = Engine(ruleset, lateness_ns=0)
    step = days * _DAY_NS // terms
    seq = 0
    for t in range(terms):
        for k in range(keys):
            raw = {
                "rule": "Unexpected outbound connection destination",
                "priority": "Notice",
                "output": "x",
                "output_fields": {
                    "k8s.ns.name": f"ns-{k % 50}",
                    "container.image.repository": f"registry.example/team/app-{k}",
                    "fd.sip": f"10.{t // 65536}.{t // 256 % 256}.{t % 256}",
                },
            }
            engine.submit(Event(raw, _BASE_NS + t * step, seq))
            seq += 1
    engine.finish()
    del raw
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    sizes = []
    for ci, key in list(engine.entry_keys())[:100]:
        entry = engine.entry(ci, key)
        assert entry is not None
        sizes.append(len(orjson.dumps(entry_to_data(ruleset.correlations[ci], key, entry))))
    return held / keys, sum(sizes) / len(sizes)


def main() -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--terms", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--days", type=int, default=7)
    args = parser.parse_args()
    print(f"new_term state per key, {args.days}d history, {args.keys} keys")
    print(f"{'terms/key':>10} {'memory/key':>12} {'per term':>10} {'snapshot/key':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for terms in args.terms:
            memory, snapshot = _measure(args.keys, terms, args.days, Path(tmp))
            print(
                f"{terms:>10} {memory / 1024:>10.1f} KB {memory / terms:>8.0f} B "
                f"{snapshot / 1024:>11.1f} KB"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
