"""The fuzzing properties of the unit suite (tests/fuzzing.py), run long: for nightly use.

    python bench/fuzz_inputs.py [--examples 5000] [--only events|replay|rules|config] [--seed N]

Each property runs `--examples` generated inputs (hypothesis, no example database, so every run
explores afresh unless `--seed` is given). A property that fails prints hypothesis' shrunk
falsifying example and the error; the script goes on with the next property and exits 1 if any
failed, 0 otherwise. A failure found here belongs in the unit suite as a regression test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fuzzing import (  # noqa: E402 - after the path set-up
    check_config_text,
    check_event_line,
    check_replay,
    check_rules_text,
    config_texts,
    event_lines,
    replay_inputs,
    rules_texts,
)
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402


def _in_tmp(check: Callable[[str, Path], None]) -> Callable[[str], None]:
    def run(text: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            check(text, Path(tmp))

    return run


PROPERTIES: dict[str, tuple[Any, Callable[[Any], Any]]] = {
    "events": (event_lines, check_event_line),
    "replay": (replay_inputs, check_replay),
    "rules": (rules_texts, _in_tmp(check_rules_text)),
    "config": (config_texts, _in_tmp(check_config_text)),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=5000)
    parser.add_argument("--only", choices=sorted(PROPERTIES))
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    failed = []
    for name, (strategy, check) in PROPERTIES.items():
        if args.only and name != args.only:
            continue
        test = settings(
            max_examples=args.examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )(given(strategy)(check))
        if args.seed is not None:
            test = seed(args.seed)(test)
        started = time.monotonic()
        try:
            test()
        except Exception:  # a falsifying example: report it and go on
            failed.append(name)
            print(f"{name}: FAILED after {time.monotonic() - started:.0f} s", flush=True)
            traceback.print_exc()
        else:
            print(f"{name}: {args.examples} examples passed in {time.monotonic() - started:.0f} s",
                  flush=True)  # fmt: skip
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
