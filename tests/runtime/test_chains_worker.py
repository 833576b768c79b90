"""Rule language v2 in the worker's stages (without Kafka): correlations of correlations and
first-seen terms give replay's records for any batching, partitioning and order in which the
partitions' chain records arrive, and after a restart from the table. Derived events go to their
dependent key's partition in chain records (streams/runtime/partition_chains.py)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_partitions import (
    BASE,
    LATENESS,
    PARTITIONS,
    Pipeline,
    S,
    _ids,
    _messages,
    _Recording,
    _replay,
)

from streams.core.derived import DerivedSeq
from streams.core.events import Event, format_time
from streams.core.loader import load_rules
from streams.runtime.chain_records import CHAIN_KEY, ChainRecord, decode_chain, encode_chain
from streams.runtime.ingest import SourceMessage
from streams.runtime.partition_chains import REPORT_INTERVAL_NS
from streams.runtime.partitions import PartitionCorrelator
from streams.runtime.records import BATCH_KEY, MatchRef, RecordError
from streams.runtime.routing import Router, chain_components

RULES_V2 = """
- correlation: shell
  type: count
  by: [container.id]
  condition: rule = Shell
  threshold: 2
  within: 20s
- correlation: egress
  type: sequence
  by: [container.id]
  within: 30s
  steps:
    - {name: shell, condition: rule = Shell}
    - {name: out, condition: rule = Egress}
- correlation: node campaign
  type: distinct
  by: [hostname]
  condition: correlation in (shell, egress)
  field: correlation
  threshold: 2
  within: 2m
- correlation: escalation
  type: sequence
  by: [hostname]
  within: 2m
  steps:
    - {name: foothold, condition: correlation = "node campaign"}
    - {name: then, condition: rule = Egress}
- correlation: first destination
  type: new_term
  by: [container.id]
  condition: rule = Egress
  fields: [fd.sip]
  within: 1h
  learn: 15s
- correlation: quiet
  type: absence
  by: [hostname]
  within: 20s
  trigger: {condition: rule = Beat}
  expect: {condition: rule = Beat}
- correlation: silent after shell
  type: sequence
  by: [hostname]
  within: 2m
  steps:
    - {name: shell, condition: correlation = shell and status = new}
    - {name: silent, condition: correlation = quiet}
- correlation: burst
  type: count
  by: [container.id]
  condition: rule = Read
  threshold: 3
  within: 30s
"""


@pytest.fixture(scope="module")
def ruleset_v2(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path: Path = tmp_path_factory.mktemp("rules") / "rules.yaml"
    path.write_text(RULES_V2)
    return load_rules([path])


def _stream_v2(seed: int, n: int = 400) -> list[bytes]:
    rng = random.Random(seed)
    t = BASE
    lines = []
    for i in range(n):
        t += rng.randint(0, 2) * S
        disorder = rng.randint(0, 2) * S  # below the 3 s lateness
        payload = {
            "rule": rng.choice(["Shell", "Egress", "Read", "Noise", "Beat"]),
            "priority": rng.choice(["Notice", "Warning", "Critical"]),
            "hostname": rng.choice(["n1", "n2"]),
            "uuid": f"u{i}",
            "time": format_time(t - disorder + i),
            "output_fields": {
                "container.id": rng.choice(["c1", "c2", "c3", "c4", None]),
                "fd.sip": f"10.0.0.{rng.randint(1, 6)}",
            },
        }
        lines.append(orjson.dumps(payload))
    return lines


def test_chain_components_group_what_references_what(ruleset_v2: Any) -> None:
    components = chain_components(ruleset_v2.correlations)
    assert components == {
        "shell": "egress",
        "egress": "egress",
        "node campaign": "egress",
        "escalation": "egress",
        "quiet": "egress",
        "silent after shell": "egress",
    }
    router = Router(ruleset_v2.correlations, 3, pin_chains=True)
    assert len({router.destination(name, ("k",)) for name in components}) == 1
    # outside any chain: by key, as before
    assert {router.destination("burst", (f"c{i}",)) for i in range(30)} == {0, 1, 2}


class RoutedPipeline(Pipeline):
    """`Pipeline` with the worker's routed chains: after each ingest batch, the chain records
    the partitions send are delivered — per destination in the order they were sent (one
    Kafka partition), across senders in an order `rng` picks — until none is left."""

    def __init__(
        self,
        ruleset: Any,
        table: dict[bytes, bytes],
        rng: random.Random,
        *,
        again: float = 0.0,
        outbox: bool = False,
    ) -> None:
        self.rng = rng
        self.again = again  # the share of chain records delivered a second time, later
        self.outbox = outbox  # stage each partition's chain records in its outbox, as the agent
        self.crash: int | None = None  # a partition whose next derived events are lost
        self.touch = False  # the group read again after a crash also releases events
        self.crashes = 0
        self.last: dict[int, tuple[str, int, Any]] = {}  # partition -> its last record
        self.inbox: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
        self.chain_records = 0
        self.clock = 0
        super().__init__(ruleset, table)

    def _correlator(self, ruleset: Any) -> PartitionCorrelator:
        return self._remembered(
            PartitionCorrelator(
                ruleset,
                self.table,
                lateness_ns=LATENESS,
                max_pending=1000,
                wall_clock=lambda: 0,
                correlate_partitions=PARTITIONS,
                route_chains=True,
                outbox=self.outbox,
            )
        )

    def _remembered(self, correlator: PartitionCorrelator) -> PartitionCorrelator:
        for name in ("on_batch", "on_chain"):
            method = getattr(correlator, name)

            def spy(p: int, offset: int, record: Any, _m: Any = method, _n: str = name) -> Any:
                self.last[p] = (_n, offset, record)
                return _m(p, offset, record)

            setattr(correlator, name, spy)
        return correlator

    def batch(self, messages: list[SourceMessage], *, ticks: bool = False) -> list[dict[str, Any]]:
        out = super().batch(messages, ticks=ticks)
        while True:
            self.clock += REPORT_INTERVAL_NS
            for sender in range(PARTITIONS):
                sent = self.correlator.chain_records(sender, self.clock)
                if self.outbox and sent:
                    offset = self.offsets[sender] - 1
                    self.correlator.stage_outputs(sender, offset, [], sent)
                    self.correlator.persist(sender)
                if self.crash == sender and any(decode_chain(v).events for _, v in sent):
                    out.extend(self._crash_and_restart(sender))
                    continue  # what it sent never reached the brokers
                for destination, value in sent:
                    self.inbox[destination].append(value)
            waiting = [p for p, values in self.inbox.items() if values]
            if not waiting:
                return out
            destination = self.rng.choice(waiting)
            # a few records at a time: a partition may run ahead of the others
            for _ in range(self.rng.randint(1, 3)):
                if not self.inbox[destination]:
                    break
                value = self.inbox[destination].pop(0)
                if self.rng.random() < self.again:  # read again (a reader that restarted)
                    self.inbox[destination].insert(self.rng.randint(0, 2), value)
                offset = self.offsets[destination]
                self.offsets[destination] += 1
                self.chain_records += 1
                record = decode_chain(value)
                outcome = self.correlator.on_chain(destination, offset, record)
                out.extend(outcome.incidents)
                self.duplicates += outcome.duplicates

    def _crash_and_restart(self, partition: int) -> list[dict[str, Any]]:
        """The worker dies after the state (and the outbox) reached the changelog, before the
        chain records did; the restarted one reads the partition's last record again (not
        committed), then, as the correlate agent does, sends the restored outbox's chain
        records before anything of the new group (whose level reports may be past them)."""
        self.crash = None
        self.crashes += 1
        self.correlator = self._correlator(self.correlator.ruleset)
        name, offset, record = self.last[partition]
        out = list(getattr(self.correlator, name)(partition, offset, record).incidents)
        if self.touch:  # the group also moved the watermark (progress, another chain record)
            engine = self.correlator.partitions()[partition]
            out.extend(engine.advance_to(engine.watermark_ns))
        again = self.correlator.take_recovered_outputs(partition)
        assert again is not None
        assert again.chains
        self.clock += REPORT_INTERVAL_NS
        fresh = self.correlator.chain_records(partition, self.clock)  # the group's own
        for destination, value in again.chains + fresh:
            self.inbox[destination].append(value)
        return out + again.incidents


def test_chain_records_round_trip_and_are_not_batches() -> None:
    engine_event = Event(
        {"rule": "x"},
        BASE,
        DerivedSeq(5 << 20, ("up", "k")),
        {"correlation": "up", "status": "new", "count": 1},
    )
    record = ChainRecord(
        2, "digest", (BASE, BASE - S), ((engine_event, (MatchRef("down", ("k",), (0,)),)),)
    )
    back = decode_chain(encode_chain(record))
    assert (back.sender, back.levels, back.digest) == (2, (BASE, BASE - S), "digest")
    ((event, refs),) = back.events
    assert (event.time_ns, event.seq, event.derived) == (
        BASE,
        engine_event.seq,
        engine_event.derived,
    )
    assert event.seq.tail == ("up", "k")
    assert refs == (MatchRef("down", ("k",), (0,)),)
    assert CHAIN_KEY != BATCH_KEY
    with pytest.raises(RecordError, match="chain record"):
        decode_chain(b'{"v": 99}')
    with pytest.raises(RecordError, match="malformed"):
        decode_chain(b'{"v": 1, "from": 0}')


@pytest.mark.parametrize("touch", [False, True])
@pytest.mark.parametrize("seed", [6, 7, 8])
def test_chain_records_lost_in_a_crash_are_sent_again_from_the_outbox(
    ruleset_v2: Any, seed: int, touch: bool
) -> None:
    lines = _stream_v2(seed)
    expected = _replay(ruleset_v2, lines)
    pipeline = RoutedPipeline(ruleset_v2, {}, random.Random(seed), outbox=True)
    pipeline.touch = touch
    got: list[dict[str, Any]] = []
    messages = _messages(lines)
    for at in range(0, len(messages), 13):
        if at in (130, 260):
            pipeline.crash = at % PARTITIONS
        got.extend(pipeline.batch(messages[at : at + 13]))
    got.extend(pipeline.flush())
    assert pipeline.crashes == 2
    assert _ids(got) == _ids(expected)


@pytest.mark.parametrize("seed", [4, 5])
def test_chain_records_read_again_are_dropped_as_duplicates(ruleset_v2: Any, seed: int) -> None:
    lines = _stream_v2(seed)
    expected = _replay(ruleset_v2, lines)
    pipeline = RoutedPipeline(ruleset_v2, {}, random.Random(seed), again=0.3)
    got: list[dict[str, Any]] = []
    messages = _messages(lines)
    for at in range(0, len(messages), 11):
        got.extend(pipeline.batch(messages[at : at + 11]))
    got.extend(pipeline.flush())
    assert pipeline.duplicates > 0
    assert _ids(got) == _ids(expected)


def test_a_partition_that_never_reports_holds_only_the_chains_back(ruleset_v2: Any) -> None:
    """A dependent waits for its upstreams on every partition (C5); correlations that
    reference nothing go on, and the held chains complete once the partition reports."""
    lines = _stream_v2(9)
    expected = _replay(ruleset_v2, lines)
    pipeline = RoutedPipeline(ruleset_v2, {}, random.Random(9))
    silent = 1
    held: list[tuple[int, bytes]] = []
    original = pipeline.correlator.chain_records

    def muted(partition: int, now_ns: int, *, report: bool = True) -> list[tuple[int, bytes]]:
        out = original(partition, now_ns, report=report)
        if partition == silent:
            held.extend(out)  # delivered later, in the order sent
            return []
        return out

    pipeline.correlator.chain_records = muted  # type: ignore[method-assign]
    got: list[dict[str, Any]] = []
    got.extend(pipeline.batch(_messages(lines)))
    got.extend(pipeline.flush())
    fired = {i["correlation"] for i in got}
    assert {"burst", "shell", "egress", "first destination"} <= fired  # level 0: not held
    # dependents wait for partition 1's upstream records, except on partition 1 itself (it
    # hears how far the others got; what it derives for its own keys is held there at once)
    router = Router(ruleset_v2.correlations, PARTITIONS)
    dependents = {"node campaign", "escalation", "silent after shell"}
    elsewhere = [
        i
        for i in got
        if i["correlation"] in dependents
        and router.destination(i["correlation"], tuple(i["key"].values())) != silent
    ]
    assert elsewhere == []
    assert any(i["correlation"] in dependents for i in expected)
    assert held
    pipeline.correlator.chain_records = original  # type: ignore[method-assign]
    for destination, value in held:
        pipeline.inbox[destination].append(value)
    got.extend(pipeline.flush())
    assert _ids(got) == _ids(expected)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_chains_and_new_terms_give_replays_records(ruleset_v2: Any, seed: int) -> None:
    lines = _stream_v2(seed)
    expected = _replay(ruleset_v2, lines)
    fired = {i["correlation"] for i in expected}
    assert fired >= {"node campaign", "first destination", "escalation", "silent after shell"}
    pipeline = RoutedPipeline(ruleset_v2, {}, random.Random(seed))
    got: list[dict[str, Any]] = []
    messages = _messages(lines)
    for at in range(0, len(messages), 17):
        got.extend(pipeline.batch(messages[at : at + 17]))
    got.extend(pipeline.flush())
    assert _ids(got) == _ids(expected)


@pytest.mark.parametrize("cut", [50, 201, 350])
def test_a_restart_with_chains_and_new_terms_continues_exactly(ruleset_v2: Any, cut: int) -> None:
    lines = _stream_v2(7)
    expected = _replay(ruleset_v2, lines)
    pipeline = RoutedPipeline(ruleset_v2, {}, random.Random(cut))
    got: list[dict[str, Any]] = []
    messages = _messages(lines)
    for at in range(0, cut, 25):
        got.extend(pipeline.batch(messages[at : min(at + 25, cut)]))
    pipeline.restart(ruleset_v2)  # only the table survives
    for at in range(cut, len(messages), 25):
        got.extend(pipeline.batch(messages[at : at + 25]))
    got.extend(pipeline.flush())
    assert _ids(got) == _ids(expected)


TIES = """
- correlation: A
  type: new_term
  by: [container.id]
  condition: rule = X
  fields: [rule]
  within: 1h
  learn: 0s
- correlation: B
  type: count
  by: [hostname]
  condition: correlation = A
  threshold: 2
  within: 1m
"""


def test_an_event_at_exactly_the_watermark_read_late_keeps_its_position(tmp_path: Path) -> None:
    """Two events of the same time on two source partitions; the one with the earlier
    position (source offset) is read after the watermark reached their time (not late: t is
    not below it). The worker releases only what is strictly before the watermark, so both are
    correlated in position order and both derived events reach B's partition."""
    path = tmp_path / "rules.yaml"
    path.write_text(TIES)
    ruleset = load_rules([path])
    router = Router(ruleset.correlations, PARTITIONS)
    on_a = router.destination("A", ("c0",))
    first, second = [
        c for c in (f"c{i}" for i in range(50)) if router.destination("A", (c,)) == on_a
    ][:2]
    host = next(f"h{i}" for i in range(50) if router.destination("B", (f"h{i}",)) != on_a)
    at = BASE + 10 * S

    def event(rule: str, time_ns: int, cid: str | None) -> bytes:
        return orjson.dumps(
            {
                "rule": rule,
                "priority": "Warning",
                "hostname": host,
                "time": format_time(time_ns),
                "output_fields": {"container.id": cid},
            }
        )

    lines = [
        event("Noise", at + 3 * S, None),
        event("Noise", at + 3 * S, None),
        event("Noise", at + 3 * S, None),
        event("X", at, first),  # source partition 0, offset 3: the earlier position
        event("X", at, second),  # source partition 1, offset 4
    ]
    messages = [SourceMessage(i % 3, i, line, None, 0.0) for i, line in enumerate(lines)]
    expected = _replay(ruleset, lines)
    assert [i["correlation"] for i in expected].count("B") == 1
    pipeline = RoutedPipeline(ruleset, {}, random.Random(0))
    got = pipeline.batch([messages[0], messages[1], messages[2], messages[4]])  # 0 lags
    got += pipeline.batch([messages[3]])
    got += pipeline.flush()
    assert pipeline.late == 0
    assert _ids(got) == _ids(expected)


COUNT_OVER_DERIVED = """
- correlation: shells per host
  type: count
  by: [hostname]
  condition: correlation in (shell, egress)
  threshold: 3
  within: 2m
"""


def test_a_crash_part_way_through_any_records_writes_with_routed_chains(tmp_path: Path) -> None:
    """3 partitions exchanging chain records; every record's writes cut at every point, the
    worker restarted from the table and fed the records from there on: replay's records.
    (Records that emitted incidents are left out: tests/runtime/test_outbox.py.)"""
    path = tmp_path / "rules.yaml"
    path.write_text(RULES_V2 + COUNT_OVER_DERIVED)
    ruleset = load_rules([path])
    lines = _stream_v2(2, n=200)
    expected = _replay(ruleset, lines)
    probe = RoutedPipeline(ruleset, {}, random.Random(2))
    trace: list[tuple[str, int, int, Any]] = []
    for name in ("on_batch", "on_chain"):
        method = getattr(probe.correlator, name)

        def spy(p: int, offset: int, record: Any, _m: Any = method, _n: str = name) -> Any:
            trace.append((_n, p, offset, record))
            return _m(p, offset, record)

        setattr(probe.correlator, name, spy)
    messages = _messages(lines)
    for at in range(0, len(messages), 7):
        probe.batch(messages[at : at + 7])
    probe.flush()

    def correlator(table: Any) -> PartitionCorrelator:
        return PartitionCorrelator(
            ruleset,
            table,
            lateness_ns=LATENESS,
            max_pending=1000,
            wall_clock=lambda: 0,
            correlate_partitions=PARTITIONS,
            route_chains=True,
        )

    crashes = 0
    for cut in range(len(trace) - 1):
        table = _Recording()
        first = correlator(table)
        got: list[dict[str, Any]] = []
        for name, p, offset, record in trace[:cut]:
            got += getattr(first, name)(p, offset, record).incidents
        before = len(table.log)
        name, p, offset, record = trace[cut]
        if getattr(first, name)(p, offset, record).incidents:
            continue
        for writes in range(len(table.log) - before):
            crashes += 1
            restarted = correlator(table.prefix(before + writes))
            after = list(got)
            for again in trace[cut:]:  # read again from the record that was cut
                after += getattr(restarted, again[0])(*again[1:]).incidents
            assert _ids(after) == _ids(expected), f"record {cut} cut after {writes} writes"
    assert crashes > 100
