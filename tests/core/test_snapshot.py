"""Engine entries survive a round trip through JSON: a restored engine continues exactly."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.core.engine import Engine
from streams.core.events import event_from_dict, format_time
from streams.core.loader import load_rules
from streams.core.snapshot import entry_from_data, entry_to_data

RULES = """
- correlation: seq
  type: sequence
  by: [container.id]
  within: 60s
  suppress: 5m
  steps:
    - {name: a, condition: rule = A}
    - {name: b, condition: rule = B}
    - {name: c, condition: rule = C}
- correlation: every
  type: all
  by: [container.id]
  within: 60s
  steps:
    - {name: a, condition: rule = A}
    - {name: c, condition: rule = C}
- correlation: burst
  type: count
  by: [container.id]
  condition: rule in (A, B)
  threshold: 3
  within: 30s
- correlation: spread
  type: distinct
  by: [container.id]
  condition: rule = B
  field: fd.sip
  threshold: 2
  within: 30s
- correlation: silent
  type: absence
  by: [container.id]
  within: 40s
  suppress: 10m
  trigger: {condition: rule = A}
  expect: {condition: rule = C}
"""
BASE = 1_700_000_000_000_000_000


@pytest.fixture(scope="module")
def ruleset(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path: Path = tmp_path_factory.mktemp("rules") / "r.yaml"
    path.write_text(RULES)
    return load_rules([path])


def _stream(seed: int, n: int = 120) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    payloads = []
    t = BASE
    for i in range(n):
        t += rng.randint(0, 8) * 1_000_000_000
        jitter = rng.randint(0, 4) * 1_000_000_000
        payloads.append(
            {
                "rule": rng.choice("ABCX"),
                "priority": "Warning",
                "uuid": f"u{i}",
                "time": format_time(t - jitter),
                "output_fields": {"container.id": rng.choice(["c1", "c2"]), "fd.sip": str(i % 5)},
            }
        )
    return payloads


def _run(engine: Engine, payloads: list[dict[str, Any]], start: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for seq, payload in enumerate(payloads[start:], start):
        out.extend(engine.submit(event_from_dict(payload, seq), source=(0, seq)))
    return out


def _transplant(old: Engine, ruleset: Any) -> Engine:
    new = Engine(ruleset, lateness_ns=5_000_000_000, track_changes=True)
    by_name = {c.name: (i, c) for i, c in enumerate(ruleset.correlations)}
    for ci, key in old.entry_keys():
        entry = old.entry(ci, key)
        if entry is None:
            continue
        data = orjson.loads(orjson.dumps(entry_to_data(ruleset.correlations[ci], key, entry)))
        restored = entry_from_data(by_name, data)
        assert restored is not None
        new.restore(*restored)
    new.restore_clock(old.max_time_ns, old.watermark_ns)
    return new


@pytest.mark.parametrize("seed", range(6))
def test_engine_restored_from_snapshots_at_any_point_gives_the_same_incidents(
    ruleset: Any, seed: int
) -> None:
    payloads = _stream(seed)
    reference = Engine(ruleset, lateness_ns=5_000_000_000, track_changes=True)
    expected = _run(reference, payloads, 0) + reference.finish(flush=True)
    assert expected, "the stream should produce incidents"
    for cut in range(0, len(payloads), 7):
        first = Engine(ruleset, lateness_ns=5_000_000_000, track_changes=True)
        got = _run(first, payloads[:cut], 0)
        second = _transplant(first, ruleset)
        got += _run(second, payloads, cut) + second.finish(flush=True)
        assert got == expected, f"cut at {cut}"


def test_redelivered_record_is_dropped_for_keys_that_applied_it(ruleset: Any) -> None:
    engine = Engine(ruleset, lateness_ns=0, track_changes=True)
    payload = {"rule": "A", "time": format_time(BASE), "output_fields": {"container.id": "c1"}}
    engine.submit(event_from_dict(payload, 0), source=(2, 41))
    engine.submit(event_from_dict(payload, 1), source=(2, 41))
    assert engine.stats.duplicates == 4  # seq, every, burst and silent had all applied it
