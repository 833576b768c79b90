"""The worker's pure stages (ingest re-keying, per-partition correlation with a table) against
replay, without Kafka: same incidents, and a restart from the table continues exactly."""

from __future__ import annotations

import random
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.core.engine import Engine
from streams.core.events import event_from_dict, format_time
from streams.core.loader import load_rules
from streams.runtime.partitions import PartitionCorrelator
from streams.runtime.records import TICK_KEY, Ingestor, tick_value

RULES = """
- correlation: chain
  type: sequence
  by: [container.id]
  within: 60s
  suppress: 2m
  steps:
    - {name: shell, condition: rule = Shell}
    - {name: egress, condition: rule = Egress}
- correlation: burst
  type: count
  by: [container.id]
  condition: rule in (Shell, Read)
  threshold: 3
  within: 30s
- correlation: scan
  type: distinct
  by: [container.id]
  condition: rule = Egress
  field: fd.sip
  threshold: 3
  within: 30s
- correlation: silent
  type: absence
  by: [hostname]
  within: 45s
  trigger: {condition: rule = Beat}
  expect: {condition: rule = Beat}
"""
BASE = 1_700_000_000_000_000_000
LATENESS = 3_000_000_000
PARTITIONS = 3


@pytest.fixture(scope="module")
def ruleset(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path: Path = tmp_path_factory.mktemp("rules") / "rules.yaml"
    path.write_text(RULES)
    return load_rules([path])


def _stream(seed: int, n: int = 300) -> list[bytes]:
    rng = random.Random(seed)
    t = BASE
    lines = []
    for i in range(n):
        t += rng.randint(0, 3) * 1_000_000_000
        disorder = rng.randint(0, 2) * 1_000_000_000  # below the 3 s lateness
        payload = {
            "rule": rng.choice(["Shell", "Egress", "Read", "Beat", "Noise"]),
            "priority": rng.choice(["Notice", "Warning", "Critical"]),
            "hostname": rng.choice(["n1", "n2"]),
            "uuid": f"u{i}",
            "time": format_time(t - disorder),
            "output_fields": {
                "container.id": rng.choice(["c1", "c2", "c3", None]),
                "fd.sip": f"10.0.0.{rng.randint(1, 5)}",
            },
        }
        lines.append(orjson.dumps(payload))
    return lines


def _replay(ruleset: Any, lines: list[bytes]) -> list[dict[str, Any]]:
    engine = Engine(ruleset, lateness_ns=LATENESS)
    out: list[dict[str, Any]] = []
    for seq, line in enumerate(lines):
        out.extend(engine.submit(event_from_dict(orjson.loads(line), seq)))
    return out + engine.finish(flush=True)


class Pipeline:
    """Ingest → (partition by key, as Kafka would) → per-partition correlation on a dict table."""

    def __init__(self, ruleset: Any, table: dict[bytes, bytes]) -> None:
        self.ingestor = Ingestor(ruleset, LATENESS)
        self.table = table
        self.offsets = [0] * PARTITIONS
        self.correlator = self._correlator(ruleset)

    def _correlator(self, ruleset: Any) -> PartitionCorrelator:
        return PartitionCorrelator(
            ruleset, self.table, lateness_ns=LATENESS, max_pending=1000, wall_clock=lambda: 0
        )

    def restart(self, ruleset: Any) -> None:
        self.correlator = self._correlator(ruleset)

    def send(self, partition: int, key: bytes | None, value: bytes) -> list[dict[str, Any]]:
        offset = self.offsets[partition]
        self.offsets[partition] += 1
        return self.correlator.on_message(partition, offset, key, value).incidents

    def ingest(self, source_offset: int, line: bytes) -> list[dict[str, Any]]:
        result = self.ingestor.ingest(line, source_offset % 3, source_offset, 0.0)
        out: list[dict[str, Any]] = []
        for key, value in result.records:
            out.extend(self.send(zlib.crc32(key) % PARTITIONS, key, value))
        return out

    def flush(self) -> list[dict[str, Any]]:
        """Ticks far in the future release everything, like an idle stream's ticks do."""
        value = tick_value(0, 2**62)
        out: list[dict[str, Any]] = []
        for partition in range(PARTITIONS):
            out.extend(self.send(partition, TICK_KEY, value))
        return out


def _ids(incidents: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    return sorted((i["id"], i["status"], i["count"]) for i in incidents)


@pytest.mark.parametrize("seed", range(5))
def test_worker_stages_give_the_same_incidents_as_replay(ruleset: Any, seed: int) -> None:
    lines = _stream(seed)
    expected = _replay(ruleset, lines)
    assert expected
    pipeline = Pipeline(ruleset, {})
    got: list[dict[str, Any]] = []
    for offset, line in enumerate(lines):
        got.extend(pipeline.ingest(offset, line))
    got.extend(pipeline.flush())
    assert _ids(got) == _ids(expected)


@pytest.mark.parametrize("cut", [10, 77, 150, 299])
def test_a_restart_from_the_table_continues_exactly(ruleset: Any, cut: int) -> None:
    lines = _stream(11)
    expected = _replay(ruleset, lines)
    table: dict[bytes, bytes] = {}
    pipeline = Pipeline(ruleset, table)
    got: list[dict[str, Any]] = []
    for offset, line in enumerate(lines[:cut]):
        got.extend(pipeline.ingest(offset, line))
    pipeline.restart(ruleset)  # in-memory engines gone; only the table survives
    for offset, line in enumerate(lines[cut:], cut):
        got.extend(pipeline.ingest(offset, line))
    got.extend(pipeline.flush())
    assert _ids(got) == _ids(expected)


def test_redelivered_records_after_a_crash_are_not_applied_twice(ruleset: Any) -> None:
    lines = _stream(3)
    expected = _replay(ruleset, lines)
    pipeline = Pipeline(ruleset, {})
    got: list[dict[str, Any]] = []
    for offset, line in enumerate(lines[:120]):
        got.extend(pipeline.ingest(offset, line))
    # The ingest stage crashed before committing: the last 30 source messages come again.
    pipeline.restart(pipeline.correlator.ruleset)
    for offset, line in enumerate(lines[90:], 90):
        got.extend(pipeline.ingest(offset, line))
    got.extend(pipeline.flush())
    assert _ids(got) == _ids(expected)


def test_invalid_and_late_messages_are_reported_by_ingest(ruleset: Any) -> None:
    ingestor = Ingestor(ruleset, LATENESS)
    assert ingestor.ingest(b"not json", 0, 5, 0.0).invalid is not None
    assert ingestor.ingest(None, 0, 6, 0.0).invalid == "empty message (no value)"
    new = orjson.dumps({"rule": "Shell", "time": format_time(BASE + 10**10), "output_fields": {}})
    old = orjson.dumps({"rule": "Shell", "time": format_time(BASE), "output_fields": {}})
    assert not ingestor.ingest(new, 0, 7, 0.0).late
    assert ingestor.ingest(old, 0, 8, 0.0).late


def test_idle_ticks_advance_the_watermark_with_wall_time(ruleset: Any) -> None:
    now = [BASE]
    correlator = PartitionCorrelator(
        ruleset, {}, lateness_ns=LATENESS, max_pending=100, wall_clock=lambda: now[0]
    )
    ingestor = Ingestor(ruleset, LATENESS)
    beat = orjson.dumps({"rule": "Beat", "hostname": "n1", "time": format_time(BASE)})
    [(key, value)] = ingestor.ingest(beat, 0, 0, 0.0).records
    assert correlator.on_message(0, 0, key, value).incidents == []
    fired: list[dict[str, Any]] = []
    for second in range(1, 60):
        now[0] = BASE + second * 1_000_000_000
        fired += correlator.on_message(0, second, TICK_KEY, tick_value(now[0], BASE)).incidents
        if fired:
            break
    # deadline 45 s after the beat, plus lateness: fires once idle for more than 48 s
    assert [i["correlation"] for i in fired] == ["silent"]
    assert second == 49


def test_a_backlog_read_one_partition_after_another_makes_no_event_late(ruleset: Any) -> None:
    """After downtime a consumer may read partition 0 to its end before partition 1: the
    watermark follows the slowest assigned partition, so nothing becomes late."""
    now = [0]
    ingestor = Ingestor(ruleset, LATENESS, wall_clock=lambda: now[0])
    ingestor.progress.assign({0, 1})
    events = [
        orjson.dumps({"rule": "Shell", "time": format_time(BASE + i * 10**9), "output_fields": {}})
        for i in range(100)
    ]
    results = [ingestor.ingest(e, 0, i, 0.0) for i, e in enumerate(events[0::2])]
    results += [ingestor.ingest(e, 1, i, 0.0) for i, e in enumerate(events[1::2])]
    assert not any(r.late for r in results)
    assert ingestor.high_water_ns == BASE + 98 * 10**9  # the slower partition's newest


def test_an_assigned_partition_that_stays_silent_stops_holding_the_watermark(ruleset: Any) -> None:
    now = [0]
    ingestor = Ingestor(ruleset, LATENESS, wall_clock=lambda: now[0])
    ingestor.progress.assign({0, 1})
    beat = orjson.dumps({"rule": "Beat", "hostname": "n1", "time": format_time(BASE)})
    ingestor.ingest(beat, 0, 0, 0.0)
    assert ingestor.high_water_ns < BASE  # partition 1 may still bring older events
    now[0] = LATENESS + 1
    ingestor.ingest(beat, 0, 1, 0.0)
    assert ingestor.high_water_ns == BASE  # partition 1 is idle now


def test_a_restart_on_an_idle_stream_releases_what_the_state_holds(ruleset: Any) -> None:
    """After a restart nothing new may arrive: held events and pending absences must still be
    released by idle ticks, even when the partition's meta entry was never written."""
    now = [BASE]
    table: dict[bytes, bytes] = {}

    def correlator() -> PartitionCorrelator:
        return PartitionCorrelator(
            ruleset, table, lateness_ns=LATENESS, max_pending=100, wall_clock=lambda: now[0]
        )

    ingestor = Ingestor(ruleset, LATENESS, wall_clock=lambda: now[0])
    first = correlator()
    for offset, (rule, at) in enumerate([("Shell", 0), ("Egress", 10**9)]):
        line = orjson.dumps(
            {"rule": rule, "time": format_time(BASE + at), "output_fields": {"container.id": "c1"}}
        )
        for key, value in ingestor.ingest(line, 0, offset, 0.0).records:
            assert first.on_message(0, offset, key, value).incidents == []
    for key in [k for k in table if k.startswith(b"\x00meta")]:
        del table[key]
    second = correlator()  # the restarted worker: no ingest progress, no meta entry
    fired: list[dict[str, Any]] = []
    for second_of_idle in range(1, 30):
        now[0] = BASE + second_of_idle * 10**9
        tick = tick_value(now[0], -(2**63))
        fired += second.on_message(0, 100 + second_of_idle, TICK_KEY, tick).incidents
    assert [i["correlation"] for i in fired] == ["chain"]
