"""The real worker process on the real broker: what it emits, compared with `replay`.

Each test runs `falco-correlator worker` in a subprocess with its own app id, topics and web port
(worker_harness.py), produces falcosidekick-shaped events (unkeyed, round-robin over partitions)
and reads what the worker writes to the incidents and dead-letter topics.
"""

from __future__ import annotations

import collections
import random
import time
from typing import Any

import orjson
import pytest
from worker_harness import (
    EGRESS,
    MIXED_RULES,
    SHELL,
    SNAPSHOT,
    WorkerEnv,
    backlog_stream,
    comparable,
    container_event,
    create_topics,
    falco_event,
    incident_signature,
    message_json,
    produce_mixed_stream,
    replay_incidents,
    snapshot_event,
)

pytestmark = pytest.mark.integration


LATENESS_S = 2.0


def _by_signature(incidents: list[dict[str, Any]]) -> collections.Counter[tuple[Any, ...]]:
    return collections.Counter(incident_signature(i) for i in incidents)


def test_round_robin_events_give_the_same_incidents_as_replay(worker_env: WorkerEnv) -> None:
    rules = worker_env.rules_file("mixed.yaml", MIXED_RULES)
    settings = worker_env.settings([rules], partitions=3, lateness="2s", tick_interval="1s")
    worker = worker_env.worker(settings).start()
    producer = worker_env.producer(settings)

    sent = produce_mixed_stream(random.Random(20240525), producer.send)
    produced_done = time.monotonic()
    assert {p for p, _ in producer.positions} == {0, 1, 2}

    # Absences are involved: the idle worker fires every pending one as the wall clock advances,
    # which is what replay --flush does at the end of input.
    expected = replay_incidents([rules], sent, worker_env.directory, lateness="2s", flush=True)
    kinds = collections.Counter((i["correlation"], i["status"]) for i in expected)
    for name in (
        "Shell then egress",
        "Sensitive read burst",
        "Many sensitive files in a pod",
        "Write below etc and shell",
        "Sensor silent",
    ):
        assert kinds[(name, "new")] >= 1, f"the input should exercise {name}: {kinds}"
    assert kinds[("Sensitive read burst", "update")] >= 1, kinds
    assert kinds[("Write below etc and shell", "update")] >= 1, kinds
    assert {
        tuple(sorted(i["key"].items())) for i in expected if i["correlation"] == "Sensor silent"
    } >= {
        (("hostname", "node-b"),),
        (("hostname", "node-c"),),
    }

    reader = worker_env.reader(settings.topics.incidents)
    reader.wait_count(len(expected), timeout=30)
    reader.drain(2.0)  # nothing more may come
    got = reader.values()
    waited = time.monotonic() - produced_done

    late = worker.metric_sum("fc_events_late_total")
    assert late == 0, f"{late} events were late in the worker (cross-partition skew?)"
    assert all(m.key() == message_json(m)["id"].encode() for m in reader.messages), (
        "incidents must be keyed by their id"
    )

    missing = _by_signature(expected) - _by_signature(got)
    extra = _by_signature(got) - _by_signature(expected)
    assert (missing, extra) == (collections.Counter(), collections.Counter()), (
        f"after {waited:.1f} s: {len(got)} incidents from the worker, {len(expected)} from replay\n"
        f"missing: {sorted(missing)}\nextra: {sorted(extra)}"
    )
    # Everything but detected_at (wall clock in the worker) is identical.
    key = lambda i: (i["id"], i["count"])  # noqa: E731
    assert sorted(map(comparable, got), key=key) == sorted(map(comparable, expected), key=key)


def test_backlog_found_at_start_gives_the_same_incidents_as_replay(
    worker_env: WorkerEnv,
) -> None:
    """A worker that starts behind (downtime): 600 events over 60 s of event time wait in the
    3 partitions; consuming them must not turn the partitions' interleaving into late events."""
    rules = worker_env.rules_file("mixed.yaml", MIXED_RULES)
    settings = worker_env.settings([rules], partitions=3, lateness="2s")
    create_topics(worker_env.admin, settings.topics.names(), settings.partitions)
    events = backlog_stream(random.Random(11), 600, time.time_ns() - 120 * 10**9, 100 * 10**6)
    worker_env.producer(settings).send_many(events)
    expected = replay_incidents([rules], events, worker_env.directory, lateness="2s", flush=True)
    assert len(expected) > 100

    worker = worker_env.worker(settings).start()
    reader = worker_env.reader(settings.topics.incidents)
    reader.wait_count(len(expected), timeout=40)
    reader.drain(2.0)
    got = reader.values()
    late = worker.metric_sum("fc_events_late_total")
    missing = _by_signature(expected) - _by_signature(got)
    extra = _by_signature(got) - _by_signature(expected)
    assert (late, missing, extra) == (0, collections.Counter(), collections.Counter()), (
        f"{late} late; {len(got)} incidents from the worker, {len(expected)} from replay; "
        f"missing {len(missing)}: {sorted(missing)[:5]}; extra {len(extra)}: {sorted(extra)[:5]}"
    )


def test_absence_fires_on_an_idle_stream(worker_env: WorkerEnv) -> None:
    within_s = 3.0
    rules = worker_env.rules_file(
        "absence.yaml",
        f"""
- correlation: Sensor silent
  type: absence
  by: [hostname]
  within: 3s
  trigger:
    condition: 'rule = "{SNAPSHOT}"'
  expect:
    condition: 'rule = "{SNAPSHOT}"'
  output: "no metrics from {{{{ key['hostname'] }}}} since {{{{ first.time }}}}"
""",
    )
    settings = worker_env.settings([rules], lateness="2s", tick_interval="1s")
    worker_env.worker(settings).start()
    producer = worker_env.producer(settings)
    reader = worker_env.reader(settings.topics.incidents)

    # host-1: one snapshot, then silence. host-2: a snapshot, its successor 1 s later (which
    # clears the first and becomes pending itself), then silence.
    t1 = time.time_ns()
    first = snapshot_event(t1, "host-1")
    producer.send(first)
    h2a = snapshot_event(time.time_ns(), "host-2")
    producer.send(h2a)
    time.sleep(1.0)
    t2 = time.time_ns()
    h2b = snapshot_event(t2, "host-2")
    producer.send(h2b)

    arrivals: dict[str, float] = {}

    def both(messages: list[Any]) -> bool:
        for m in messages:
            host = message_json(m)["key"]["hostname"]
            arrivals.setdefault(host, time.time())
        return len(arrivals) >= 2

    reader.poll_until(both, timeout=within_s + LATENESS_S + 15)
    reader.drain(1.5)
    got = {i["key"]["hostname"]: i for i in reader.values()}
    assert set(got) == {"host-1", "host-2"}, reader.values()
    assert len(reader.messages) == 2, [m.value() for m in reader.messages]

    expected = replay_incidents([rules], [first, h2a, h2b], worker_env.directory, flush=True)
    assert sorted(map(comparable, got.values()), key=lambda i: i["id"]) == sorted(
        map(comparable, expected), key=lambda i: i["id"]
    )
    assert [e["uuid"] for e in got["host-2"]["events"]] == [h2b["uuid"]]
    assert got["host-1"]["first_seen"] == got["host-1"]["last_seen"] == first["time"]

    delay_1 = arrivals["host-1"] - t1 / 1e9
    delay_2 = arrivals["host-2"] - t2 / 1e9
    print(f"absence delays: host-1 {delay_1:.2f} s, host-2 {delay_2:.2f} s")
    for delay in (delay_1, delay_2):
        assert within_s < delay < within_s + LATENESS_S + 5.0, (delay_1, delay_2)


def test_malformed_messages_go_to_the_dead_letter_topic(worker_env: WorkerEnv) -> None:
    rules = worker_env.rules_file(
        "seq.yaml",
        f"""
- correlation: Shell then egress
  type: sequence
  by: [container.id]
  within: 1m
  steps:
    - name: shell
      condition: rule = "{SHELL}"
    - name: egress
      condition: rule = "{EGRESS}"
  output: "shell then egress in {{{{ key['container.id'] }}}}"
""",
    )
    settings = worker_env.settings([rules], partitions=3, lateness="2s", tick_interval="1s")
    worker = worker_env.worker(settings).start()
    producer = worker_env.producer(settings)
    now = time.time_ns()
    no_rule = falco_event(SHELL, now)
    del no_rule["rule"]
    no_time = falco_event(SHELL, now)
    del no_time["time"]
    del no_time["output_fields"]["evt.time"]
    bad: list[tuple[bytes | None, bytes | None, str]] = [
        (None, b"this is not json {", "not JSON"),
        (None, b"[1, 2, 3]", "JSON array"),
        (None, orjson.dumps(no_rule), "no rule"),
        (None, orjson.dumps(no_time), "no time"),
        (None, None, "empty value (null)"),
        (None, b"", "empty value (zero bytes)"),
        (None, b'"a JSON string"', "JSON string"),
        (b"some-key", b"\xff\xfe\x00garbage", "keyed, not UTF-8"),
    ]
    positions: dict[tuple[int, int], tuple[bytes | None, bytes | None, str]] = {}
    for key, value, what in bad:
        positions[producer.send_raw(value, key=key)] = (key, value, what)

    # A chain after the bad input: the first event has no `time` but `evt.time` (still valid).
    rng = random.Random(3)
    shell = container_event(rng, SHELL, time.time_ns(), "c0ffee000001")
    del shell["time"]
    egress = container_event(rng, EGRESS, time.time_ns() + 1_000_000, "c0ffee000001")
    producer.send(shell)
    producer.send(egress)

    dlq = worker_env.reader(settings.topics.dead_letter)
    dlq.wait_count(len(bad), timeout=30)
    incidents = worker_env.reader(settings.topics.incidents)
    incidents.wait_count(1, timeout=20)
    dlq.drain(1.0)
    incidents.drain(1.0)

    assert len(dlq.messages) == len(bad), [(m.value(), m.headers()) for m in dlq.messages]
    seen = set()
    for msg in dlq.messages:
        raw_headers: list[tuple[str, bytes | None]] = list(msg.headers() or [])  # type: ignore[arg-type]
        headers = {k: v or b"" for k, v in raw_headers}
        assert set(headers) >= {
            "fc-reason",
            "fc-source-topic",
            "fc-source-partition",
            "fc-source-offset",
        }, headers
        assert headers["fc-source-topic"] == settings.topics.events.encode()
        where = (int(headers["fc-source-partition"]), int(headers["fc-source-offset"]))
        assert where in positions, (where, sorted(positions))
        key, value, what = positions[where]
        seen.add(where)
        assert headers["fc-reason"].strip(), what
        if value is None:
            assert msg.value() in (None, b""), (what, msg.value())
        else:
            assert msg.value() == value, what
        assert msg.key() == key, what
    assert seen == set(positions)
    assert worker.metric_sum("fc_events_invalid_total") == len(bad)

    expected = replay_incidents([rules], [shell, egress], worker_env.directory)
    assert [comparable(i) for i in incidents.values()] == [comparable(i) for i in expected]
    assert [e["uuid"] for e in expected[0]["events"]] == [shell["uuid"], egress["uuid"]]
