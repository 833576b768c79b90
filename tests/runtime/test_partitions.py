"""The worker's pure stages (batched ingest, per-partition correlation with a table, progress)
against replay, without Kafka: same incidents for any batching and partitioning, and a restart
from the table continues exactly."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.engine import Engine
from streams.core.events import event_from_dict, format_time
from streams.core.loader import load_rules
from streams.runtime.ingest import Ingestor, SourceMessage, encode_records
from streams.runtime.partitions import PartitionCorrelator
from streams.runtime.progress import OUTAGE_GRACE_NS, MergedProgress, SourceProgress
from streams.runtime.records import decode_batch

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
S = 1_000_000_000
LATENESS = 3 * S
PARTITIONS = 3  # correlate partitions
SOURCES = 3  # partitions of the events topic


@pytest.fixture(scope="module")
def ruleset(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path: Path = tmp_path_factory.mktemp("rules") / "rules.yaml"
    path.write_text(RULES)
    return load_rules([path])


def _stream(seed: int, n: int = 300, *, churn: bool = False) -> list[bytes]:
    """A random stream; with `churn`, containers come and go (a new one every 25 events), so
    the state of early keys ends while the stream goes on."""
    rng = random.Random(seed)
    t = BASE
    lines = []
    for i in range(n):
        t += rng.randint(0, 3) * S
        disorder = rng.randint(0, 2) * S  # below the 3 s lateness
        payload = {
            "rule": rng.choice(["Shell", "Egress", "Read", "Beat", "Noise"]),
            "priority": rng.choice(["Notice", "Warning", "Critical"]),
            "hostname": rng.choice(["n1", "n2"]),
            "uuid": f"u{i}",
            # + i ns: no two events share a time, so no result depends on how ties are broken
            # (by arrival, which differs between replay's lines and the worker's partitions)
            "time": format_time(t - disorder + i),
            "output_fields": {
                "container.id": f"c{i // 25}" if churn else rng.choice(["c1", "c2", "c3", None]),
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
    """Source partitions -> batched ingest -> correlate records (encoded and decoded as on the
    wire) -> per-partition correlation on a dict table, as the worker does without Kafka."""

    def __init__(self, ruleset: Any, table: dict[bytes, bytes]) -> None:
        self.ingestor = Ingestor(ruleset, PARTITIONS)
        self.progress = SourceProgress(LATENESS)
        self.progress.assign(range(SOURCES))
        self.table = table
        self.offsets = [0] * PARTITIONS
        self.correlator = self._correlator(ruleset)
        self.wall = 0
        self.late = self.duplicates = 0

    def _correlator(self, ruleset: Any) -> PartitionCorrelator:
        return PartitionCorrelator(
            ruleset, self.table, lateness_ns=LATENESS, max_pending=1000, wall_clock=lambda: 0
        )

    def restart(self, ruleset: Any) -> None:
        self.correlator = self._correlator(ruleset)

    def batch(self, messages: list[SourceMessage], *, ticks: bool = False) -> list[dict[str, Any]]:
        self.wall += 1
        batch = self.ingestor.process(messages, self.wall)
        for partition, time_ns in batch.observed:
            self.progress.observe(partition, time_ns, self.wall)
        out: list[dict[str, Any]] = []
        for destination, value, _ in encode_records(
            batch,
            digest=self.ingestor.ruleset.digest,
            source_partitions=SOURCES,
            progress=self.progress.contributions(),
            wall_ns=self.wall,
            max_record_bytes=2_000,  # small: records split
            all_partitions=range(PARTITIONS) if ticks else (),
        ):
            offset = self.offsets[destination]
            self.offsets[destination] += 1
            record = decode_batch(b"\x00batch", value)
            outcome = self.correlator.on_batch(destination, offset, record)
            out.extend(outcome.incidents)
            self.late += outcome.late
            self.duplicates += outcome.duplicates
        return out

    def flush(self) -> list[dict[str, Any]]:
        """Every source caught up and idle long enough: event time moves on, releasing all."""
        self.wall += 10**15
        for partition in range(SOURCES):
            self.progress.confirm_caught_up(partition, self.wall)
        return self.batch([], ticks=True)


def _messages(lines: list[bytes], start: int = 0) -> list[SourceMessage]:
    return [
        SourceMessage(offset % SOURCES, offset, line, None, 0.0)
        for offset, line in enumerate(lines, start)
    ]


def _ids(incidents: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    return sorted((i["id"], i["status"], i["count"]) for i in incidents)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("batch_size", [1, 7, 300])
def test_worker_stages_give_the_same_incidents_as_replay(
    ruleset: Any, seed: int, batch_size: int
) -> None:
    lines = _stream(seed)
    expected = _replay(ruleset, lines)
    assert expected
    pipeline = Pipeline(ruleset, {})
    got: list[dict[str, Any]] = []
    messages = _messages(lines)
    for at in range(0, len(messages), batch_size):
        got.extend(pipeline.batch(messages[at : at + batch_size], ticks=at % 2 == 0))
    got.extend(pipeline.flush())
    assert _ids(got) == _ids(expected)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    cuts=st.lists(st.integers(1, 299), max_size=12),
    order=st.permutations(range(SOURCES)),
)
def test_any_batching_and_read_order_of_source_partitions_gives_replays_incidents(
    ruleset: Any, seed: int, cuts: list[int], order: list[int]
) -> None:
    """Batches of any size, each source partition's messages read in its own order relative to
    the others (within a batch, partition by partition in `order`): the watermark follows the
    slowest partition, so the incidents are replay's."""
    lines = _stream(seed, 150)
    expected = _replay(ruleset, lines)
    pipeline = Pipeline(ruleset, {})
    messages = _messages(lines)
    bounds = [0, *sorted({c % len(messages) for c in cuts}), len(messages)]
    got: list[dict[str, Any]] = []
    for lo, hi in itertools.pairwise(bounds):
        chunk = messages[lo:hi]
        chunk.sort(key=lambda m: (order.index(m.partition), m.offset))
        got.extend(pipeline.batch(chunk, ticks=True))
    got.extend(pipeline.flush())
    assert _ids(got) == _ids(expected)


@pytest.mark.parametrize("cut", [10, 77, 150, 299])
def test_a_restart_from_the_table_continues_exactly(ruleset: Any, cut: int) -> None:
    lines = _stream(11)
    expected = _replay(ruleset, lines)
    table: dict[bytes, bytes] = {}
    pipeline = Pipeline(ruleset, table)
    got: list[dict[str, Any]] = []
    messages = _messages(lines)
    assert not any(b"\x1e" in key for key in table)
    for at in range(0, cut, 20):
        got.extend(pipeline.batch(messages[at : min(at + 20, cut)]))
    held_before_restart = sum(b"\x1e" in key for key in table)
    pipeline.restart(ruleset)  # in-memory engines gone; only the table survives
    for at in range(cut, len(messages), 20):
        got.extend(pipeline.batch(messages[at : at + 20]))
    got.extend(pipeline.flush())
    assert _ids(got) == _ids(expected)
    # held events are written one by one and deleted once released: none is left behind
    assert cut < 20 or held_before_restart > 0
    for partition in range(PARTITIONS):
        pipeline.correlator.persist(partition)
    assert [key for key in table if b"\x1e" in key] == []


def test_redelivered_records_after_a_crash_are_not_applied_twice(ruleset: Any) -> None:
    lines = _stream(3)
    expected = _replay(ruleset, lines)
    pipeline = Pipeline(ruleset, {})
    messages = _messages(lines)
    got: list[dict[str, Any]] = []
    for at in range(0, 120, 30):
        got.extend(pipeline.batch(messages[at : at + 30]))
    # The ingest stage crashed before committing: the last 30 source messages come again.
    pipeline.restart(pipeline.correlator.ruleset)
    for at in range(90, len(messages), 30):
        got.extend(pipeline.batch(messages[at : at + 30]))
    got.extend(pipeline.flush())
    assert _ids(got) == _ids(expected)


@pytest.mark.parametrize("restart", [False, True])
def test_a_redelivery_from_far_behind_counts_duplicates_not_late_events(
    ruleset: Any, restart: bool
) -> None:
    """An ingest rebalance or crash re-reads from the last committed source offset, which can be
    well behind: copies behind the watermark, of keys whose state has ended since, are
    duplicates (the partition remembers the highest source offset it received, in its meta
    entry across a restart), not late events, and change no incident."""
    lines = _stream(5, churn=True)
    expected = _replay(ruleset, lines)
    pipeline = Pipeline(ruleset, {})
    messages = _messages(lines)
    got: list[dict[str, Any]] = []
    for at in range(0, 240, 30):
        got.extend(pipeline.batch(messages[at : at + 30]))
    assert pipeline.late == 0
    dups_before = pipeline.duplicates
    if restart:
        pipeline.restart(pipeline.correlator.ruleset)
    for at in range(0, len(messages), 30):  # from the very start again
        got.extend(pipeline.batch(messages[at : at + 30]))
    got.extend(pipeline.flush())
    assert _ids(got) == _ids(expected)
    assert pipeline.late == 0
    assert pipeline.duplicates > dups_before


def test_a_late_first_delivery_is_still_counted_late(ruleset: Any) -> None:
    """The partition's offset memory only reclassifies copies it has seen: a message with a
    new offset behind the watermark is late (and a recreated events topic, whose offsets start
    again at 0, at worst counts late events as duplicates: both are dropped)."""
    lines = _stream(5)
    pipeline = Pipeline(ruleset, {})
    messages = _messages(lines)
    for at in range(0, 240, 30):
        pipeline.batch(messages[at : at + 30])
    old = next(e for e in map(orjson.loads, lines) if e["rule"] == "Shell")
    late_line = orjson.dumps({**old, "uuid": "late-1"})
    pipeline.batch([SourceMessage(0, 10_000, late_line, None, 0.0)])
    assert pipeline.late == 1


def test_invalid_messages_are_dead_lettered_with_their_reason(ruleset: Any) -> None:
    ingestor = Ingestor(ruleset, PARTITIONS)
    batch = ingestor.process(
        [
            SourceMessage(0, 5, b"not json"),
            SourceMessage(0, 6, None),
            SourceMessage(1, 7, orjson.dumps({"rule": "Shell"})),
            SourceMessage(1, 8, orjson.dumps({"rule": "Shell", "time": format_time(BASE)})),
        ],
        BASE,
    )
    reasons = {d.message.offset: d.reason for d in batch.dead_letters}
    assert set(reasons) == {5, 6, 7}
    assert reasons[6] == "empty message (no value)"
    assert "time" in reasons[7]
    assert batch.next_offsets == {0: 7, 1: 9}
    assert batch.observed == [(1, BASE)]


def test_an_event_too_far_in_the_future_is_dead_lettered_and_moves_nothing(ruleset: Any) -> None:
    ingestor = Ingestor(ruleset, PARTITIONS, max_future_skew_ns=300 * S)
    ahead = {"rule": "Shell", "hostname": "broken-clock", "time": format_time(BASE + 3600 * S)}
    fine = {"rule": "Shell", "hostname": "n1", "time": format_time(BASE + 299 * S)}
    batch = ingestor.process(
        [SourceMessage(0, 0, orjson.dumps(ahead)), SourceMessage(0, 1, orjson.dumps(fine))], BASE
    )
    assert [d.message.offset for d in batch.dead_letters] == [0]
    assert "3600.000s ahead of the wall clock" in batch.dead_letters[0].reason
    assert batch.future == {"broken-clock": 1}
    assert batch.observed == [(0, BASE + 299 * S)]


def test_a_seed_message_only_moves_progress(ruleset: Any) -> None:
    """The message before the committed offset is re-read after a restart for its time only."""
    ingestor = Ingestor(ruleset, PARTITIONS)
    shell = orjson.dumps({"rule": "Shell", "time": format_time(BASE), "output_fields": {}})
    batch = ingestor.process([SourceMessage(2, 41, shell)], BASE, seeds={2: 41})
    assert batch.observed == [(2, BASE)]
    assert not batch.records
    assert not batch.dead_letters
    assert not batch.consumed
    assert batch.next_offsets == {2: 42}


def test_large_batches_are_split_into_records_under_the_size_limit(ruleset: Any) -> None:
    ingestor = Ingestor(ruleset, 1)
    lines = [
        orjson.dumps(
            {
                "rule": "Shell",
                "time": format_time(BASE + i),
                "uuid": str(i),
                "output": "x" * 1000,
                "output_fields": {"container.id": "c1"},
            }
        )
        for i in range(50)
    ]
    batch = ingestor.process([SourceMessage(0, i, line) for i, line in enumerate(lines)], BASE)
    records = encode_records(
        batch,
        digest="d",
        source_partitions=1,
        progress={0: BASE},
        wall_ns=0,
        max_record_bytes=10_000,
    )
    assert len(records) > 1
    assert sum(count for _, _, count in records) == 50
    decoded = [decode_batch(None, value) for _, value, _ in records]
    assert [e.source_offset for r in decoded for e in r.events] == list(range(50))


# --- progress: the ingest side -----------------------------------------------------------------


def test_a_backlog_read_one_partition_after_another_makes_nothing_late() -> None:
    progress = SourceProgress(LATENESS)
    progress.assign({0, 1})
    for i in range(0, 100, 2):
        progress.observe(0, BASE + i * S, wall_ns=1)
    assert progress.high_water_ns() < BASE  # partition 1 has not delivered yet
    for i in range(1, 100, 2):
        progress.observe(1, BASE + i * S, wall_ns=2)
    assert progress.high_water_ns() == BASE + 98 * S  # the slower partition's newest


def test_a_silent_partition_holds_the_mark_until_it_is_known_to_be_caught_up() -> None:
    progress = SourceProgress(LATENESS)
    progress.assign({0, 1})
    progress.observe(0, BASE, wall_ns=0)
    assert progress.high_water_ns() < BASE  # silent, but maybe not read yet: it holds
    progress.confirm_caught_up(1, 100 * S)  # read to its end as of wall 100 s
    # it contributes what the stream had reached `idle_after` before the confirmation,
    # extrapolated with wall time
    assert progress.contribution(1) == BASE + 100 * S - LATENESS
    assert progress.high_water_ns() == BASE


def test_a_burst_after_quiet_does_not_let_the_first_partition_read_run_ahead() -> None:
    """Regression: after a quiet period, partitions silent for longer than lateness no longer
    held the watermark, and the first partition read moved it past the others' events."""
    progress = SourceProgress(LATENESS)
    progress.assign({0, 1, 2})
    for p in range(3):
        progress.observe(p, BASE, wall_ns=0)
    quiet_end = 60 * S
    for p in range(3):
        progress.confirm_caught_up(p, quiet_end)  # all caught up during the quiet period
    # the burst: a 4-second chain; partition 0's share is read first, at wall quiet_end + 1 ms
    burst = BASE + quiet_end
    progress.observe(0, burst + 4 * S, wall_ns=quiet_end + 10**6)
    held = progress.high_water_ns()
    # partitions 1 and 2 still contribute the extrapolation of *before* the burst was read
    assert held <= BASE + quiet_end - LATENESS
    assert held - LATENESS < burst + 1 * S  # partition 1's event at +1 s is not late


def test_a_broker_outage_freezes_the_contribution_of_caught_up_partitions() -> None:
    progress = SourceProgress(LATENESS)
    progress.assign({0})
    progress.observe(0, BASE, wall_ns=0)
    progress.confirm_caught_up(0, 5 * S)
    before = progress.contribution(0)
    # no confirmation during the outage (ListOffsets fails): nothing moves with wall time
    assert progress.contribution(0) == before == BASE + 5 * S - LATENESS


def test_after_a_broker_outage_buffered_events_are_not_late() -> None:
    """Regression (broker stopped 10 s, producers reconnecting up to their backoff after it is
    back): the first caught-up confirmation after the outage moved the watermark over the whole
    outage, and every event the producers had buffered became late."""
    progress = SourceProgress(LATENESS)
    progress.assign({0, 1})
    for p in (0, 1):
        progress.observe(p, BASE, wall_ns=0)  # a live stream: event time = wall time
        progress.confirm_caught_up(p, 0)
    down, back = 1 * S, 25 * S  # no end offsets from the brokers in between
    progress.brokers_down(down)
    progress.brokers_back(back)
    # right after the outage both partitions are confirmed caught up (nothing appended yet)
    for p in (0, 1):
        progress.confirm_caught_up(p, back + 1 * S)
    assert progress.high_water_ns() - LATENESS <= BASE + down - LATENESS
    # a producer reconnects 9 s later and appends what it buffered since wall 1 s
    progress.confirm_caught_up(0, back + 9 * S)
    assert progress.high_water_ns() - LATENESS < BASE + down  # the first buffered event
    # later on, an idle stream moves on again with wall time (absences fire)
    progress.prune(back + 60 * S)
    progress.confirm_caught_up(0, back + 60 * S)
    progress.confirm_caught_up(1, back + 60 * S)
    assert progress.high_water_ns() == BASE + down + (60 * S - LATENESS) - OUTAGE_GRACE_NS


def test_after_a_broker_outage_the_first_producer_back_does_not_make_the_others_late() -> None:
    """Regression: one falcosidekick delivered its buffer (and live events) as soon as the broker
    was back, another 8 s later; the first one's events moved the watermark past everything the
    second one held (the consumer may even read them before the outage is noticed)."""
    progress = SourceProgress(LATENESS)
    progress.assign({0, 1})
    for p in (0, 1):
        progress.observe(p, BASE, wall_ns=0)
    progress.brokers_down(1 * S)
    # the first producer's events, up to 30 s, are read on both partitions at wall 30 s
    for p in (0, 1):
        progress.observe(p, BASE + 30 * S, wall_ns=30 * S)
    assert progress.high_water_ns() == BASE  # capped: the outage began at event time BASE
    progress.brokers_back(31 * S)
    progress.prune(38 * S)
    for p in (0, 1):
        progress.observe(p, BASE + 38 * S, wall_ns=38 * S)
    assert progress.high_water_ns() == BASE  # still within the grace
    progress.prune(31 * S + OUTAGE_GRACE_NS)  # the grace is over: the cap is lifted
    assert progress.high_water_ns() == BASE + 38 * S


def test_end_offsets_failing_for_long_do_not_freeze_the_watermark() -> None:
    progress = SourceProgress(LATENESS)
    progress.assign({0})
    progress.observe(0, BASE, wall_ns=0)
    progress.brokers_down(0)  # ListOffsets keeps failing, but events are read
    progress.observe(0, BASE + 400 * S, wall_ns=400 * S)
    assert progress.high_water_ns() == BASE
    progress.prune(400 * S)  # longer than producers keep what they buffer
    assert progress.high_water_ns() == BASE + 400 * S


def test_contributions_never_depend_on_forgotten_history() -> None:
    progress = SourceProgress(S)
    progress.assign({0})
    for second in range(1000):
        progress.observe(0, BASE + second * S, wall_ns=second * S)
    progress.prune(1000 * S)
    progress.confirm_caught_up(0, 999 * S)
    assert progress.contribution(0) == BASE + 999 * S


# --- progress: the correlate side --------------------------------------------------------------


def test_merged_progress_waits_for_every_source_partition_and_keeps_the_highest() -> None:
    merged = MergedProgress()
    assert merged.update(3, {0: 10, 1: 20})
    assert merged.high_water_ns() == -(2**63)  # partition 2 never reported
    merged.update(3, {2: 5})
    assert merged.high_water_ns() == 5
    assert not merged.update(3, {2: 4})  # an older report (another worker, a previous owner)
    merged.update(3, {2: 30})
    assert merged.high_water_ns() == 10
    restored = MergedProgress.from_data(orjson.loads(orjson.dumps(merged.to_data())))
    assert restored.high_water_ns() == 10


def test_a_restart_on_an_idle_stream_releases_what_the_state_holds(ruleset: Any) -> None:
    """After a restart nothing new may arrive: the seed message's time and caught-up
    confirmations move event time on, so held events are released."""
    table: dict[bytes, bytes] = {}
    first = Pipeline(ruleset, table)
    lines = [
        orjson.dumps(
            {
                "rule": rule,
                "uuid": rule,
                "time": format_time(BASE + at),
                "output_fields": {"container.id": "c1"},
            }
        )
        for rule, at in [("Shell", 0), ("Egress", S)]
    ]
    assert first.batch(_messages(lines)) == []
    for key in [k for k in table if k.startswith(b"\x00meta")]:
        del table[key]
    second = Pipeline(ruleset, table)  # the restarted worker: no progress, no meta entry
    second.restart(ruleset)
    second.ingestor.process([], 0)
    seeds = second.ingestor.process(_messages(lines[1:], 1), 0, seeds={1: 1})
    for partition, time_ns in seeds.observed:
        second.progress.observe(partition, time_ns, 0)
    fired: list[dict[str, Any]] = []
    for wall_s in range(1, 30):
        for p in range(SOURCES):
            second.progress.confirm_caught_up(p, wall_s * S)
        second.wall = wall_s * S
        fired += second.batch([], ticks=True)
    assert [i["correlation"] for i in fired] == ["chain"]


class _Recording(dict[bytes, bytes]):
    """A table that logs its writes in order (what reaches the changelog, in that order)."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[bytes, bytes | None]] = []

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.log.append((key, value))
        super().__setitem__(key, value)

    def __delitem__(self, key: bytes) -> None:
        self.log.append((key, None))
        super().__delitem__(key)

    def prefix(self, writes: int) -> dict[bytes, bytes]:
        """The table as its first `writes` writes left it (a changelog cut by a crash)."""
        kept: dict[bytes, bytes] = {}
        for key, value in self.log[:writes]:
            if value is None:
                kept.pop(key, None)
            else:
                kept[key] = value
        return kept


def _records_of(ruleset: Any, lines: list[bytes]) -> list[tuple[int, int, Any]]:
    """The correlate records of a whole run (flush included), as the worker reads them:
    (destination partition, offset, record)."""
    probe = Pipeline(ruleset, {})
    records: list[tuple[int, int, Any]] = []
    original = probe.correlator.on_batch

    def spy(destination: int, offset: int, record: Any, **kw: Any) -> Any:
        records.append((destination, offset, record))
        return original(destination, offset, record, **kw)

    probe.correlator.on_batch = spy  # type: ignore[method-assign]
    messages = _messages(lines)
    for at in range(0, len(messages), 4):
        probe.batch(messages[at : at + 4])
    probe.flush()
    return records


def _correlator_on(table: Any, ruleset: Any) -> PartitionCorrelator:
    return PartitionCorrelator(
        ruleset, table, lateness_ns=LATENESS, max_pending=1000, wall_clock=lambda: 0
    )


@pytest.mark.parametrize("seed", [4, 9, 12])
def test_a_crash_part_way_through_a_records_writes_loses_no_event(ruleset: Any, seed: int) -> None:
    """The changelog keeps a prefix of a record's writes when the worker dies mid-flush; the
    record then comes again (its offset was not committed). Whatever the prefix, the worker
    ends with replay's incidents: no held event is lost to a redelivery mark written before it,
    and none is counted twice. (Records that emitted incidents are left out: see below.)"""
    lines = _stream(seed, n=160)
    expected = _replay(ruleset, lines)
    records = _records_of(ruleset, lines)
    crashes = 0
    for cut_record in range(len(records) - 1):
        for cut_writes in range(8):
            table = _Recording()
            correlator = _correlator_on(table, ruleset)
            got: list[dict[str, Any]] = []
            for destination, offset, record in records[:cut_record]:
                got.extend(correlator.on_batch(destination, offset, record).incidents)
            before = len(table.log)
            destination, offset, record = records[cut_record]
            if correlator.on_batch(destination, offset, record).incidents:
                # A crash that loses an incident's output but keeps its state (another topic):
                # the outbox, tests/runtime/test_outbox.py.
                break
            if before + cut_writes > len(table.log):
                break
            crashes += 1
            restarted = _correlator_on(table.prefix(before + cut_writes), ruleset)
            for destination, offset, record in records[cut_record:]:  # it comes again
                got.extend(restarted.on_batch(destination, offset, record).incidents)
            assert _ids(got) == _ids(expected), (
                f"crash after {cut_writes} of the writes of record {cut_record}"
            )
    assert crashes > 10
