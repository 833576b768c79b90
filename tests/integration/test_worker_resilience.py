"""The worker under stress, on the real broker (issue 9, point 5): every run must pass.

- the end-to-end comparison with replay, ten times in a row, while both cores are kept busy;
- the broker stopped for 10 s mid-stream (the producer buffers) and restarted with its data;
- every topic and group recreated under a stale RocksDB data directory;
- the first start on an empty cluster, for each store, with and without a notifier;
- a burst after an idle period, spanning more than `lateness`, round-robin over 3 partitions;
- two workers in one group, one SIGKILLed mid-stream.

Each compares what the worker emitted with `falco-correlator replay` over the same events.
"""

from __future__ import annotations

import collections
import random
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]
from worker_harness import (
    EGRESS,
    MIXED_RULES,
    READ,
    SHELL,
    WRITE_ETC,
    LocalBroker,
    ThreadedWebhook,
    TopicReader,
    WorkerEnv,
    WorkerProcess,
    comparable,
    container_event,
    cpu_burners,
    incident_signature,
    message_contains,
    message_json,
    produce_mixed_stream,
    replay_incidents,
    snapshot_event,
    wait_groups_shared,
    worker_environment,
    worker_groups,
)

pytestmark = pytest.mark.integration

SEQUENCE_RULES = f"""
- correlation: Shell then egress
  type: sequence
  by: [container.id]
  within: 5m
  steps:
    - name: shell
      condition: rule = "{SHELL}"
    - name: egress
      condition: rule = "{EGRESS}"
  severity: Critical
  output: "shell then egress in {{{{ key['container.id'] }}}}"
"""

# four steps in order, within 10 s: an attack chain that spans more than `lateness`
CHAIN_RULES = f"""
- correlation: Attack chain
  type: sequence
  by: [container.id]
  within: 10s
  steps:
    - name: shell
      condition: rule = "{SHELL}"
    - name: read
      condition: rule = "{READ}"
    - name: write
      condition: rule = "{WRITE_ETC}"
    - name: egress
      condition: rule = "{EGRESS}"
  severity: Critical
  output: "attack chain in {{{{ key['container.id'] }}}}"
"""


def _signatures(incidents: list[dict[str, Any]]) -> collections.Counter[tuple[Any, ...]]:
    return collections.Counter(incident_signature(i) for i in incidents)


def _late(worker: WorkerProcess) -> float:
    return worker.metric_sum("fc_events_late_total")


def _assert_same_as_replay(
    got: list[dict[str, Any]],
    expected: list[dict[str, Any]],
    what: str,
    *,
    allow_duplicates: bool = False,
) -> None:
    """The worker's incidents are replay's (all but `detected_at`). With `allow_duplicates`
    (a crash or an outage: at-least-once), an incident may be emitted more than once."""
    got_sig, expected_sig = _signatures(got), _signatures(expected)
    if allow_duplicates:
        got_sig = collections.Counter(set(got_sig))
    missing, extra = expected_sig - got_sig, got_sig - expected_sig
    assert (missing, extra) == (collections.Counter(), collections.Counter()), (
        f"{what}: {len(got)} incidents from the worker, {len(expected)} from replay\n"
        f"missing {len(missing)}: {sorted(missing)[:6]}\nextra {len(extra)}: {sorted(extra)[:6]}"
    )
    unique = {(i["id"], i["count"]): comparable(i) for i in got}
    assert sorted(unique.values(), key=lambda i: (i["id"], i["count"])) == sorted(
        map(comparable, expected), key=lambda i: (i["id"], i["count"])
    ), what


def _mixed_expectations(expected: list[dict[str, Any]]) -> None:
    kinds = collections.Counter(i["correlation"] for i in expected)
    assert len(kinds) == 5, f"the stream should exercise every correlation: {kinds}"


# --- a. ten end-to-end runs under CPU load ------------------------------------------------------


def test_ten_runs_under_cpu_load_each_give_replays_incidents(worker_env: WorkerEnv) -> None:
    """Ten fresh workers (each starting, joining its groups and correlating a round-robin
    stream over 3 partitions) while two processes spin on both cores. The runs overlap to keep
    the test short: run i+1 streams while run i drains and is compared, and run i+2 starts."""
    runs = 10
    rules = worker_env.rules_file("mixed.yaml", MIXED_RULES)
    settings = [worker_env.settings([rules], lateness="2s") for _ in range(runs)]
    workers = [worker_env.worker(s, name=f"run-{i}") for i, s in enumerate(settings)]
    producers = [worker_env.producer(s) for s in settings]
    sent: dict[int, list[dict[str, Any]]] = {}
    streamed = [threading.Event() for _ in range(runs)]
    ready_s: dict[int, float] = {}
    streamed_at: dict[int, float] = {}
    failure: list[BaseException] = []

    def feed() -> None:
        """The streams, one after the other, each as soon as its worker is ready."""
        try:
            for run in range(runs):
                ready_s[run] = workers[run].wait_ready(timeout=90)
                rng = random.Random(9000 + run)
                sent[run] = produce_mixed_stream(rng, producers[run].send, slots=100)
                streamed_at[run] = time.monotonic()
                streamed[run].set()
        except BaseException as exc:  # re-raised by the test
            failure.append(exc)
        finally:
            for event in streamed:
                event.set()

    timings: list[str] = []
    with cpu_burners(2):
        workers[0].start(wait_ready=False)
        workers[1].start(wait_ready=False)
        feeder = threading.Thread(target=feed, name="streams")
        feeder.start()
        try:
            for run in range(runs):
                streamed[run].wait(timeout=300)
                if failure:
                    raise failure[0]
                if run + 2 < runs:
                    workers[run + 2].start(wait_ready=False)
                expected = replay_incidents([rules], sent[run], worker_env.directory, flush=True)
                _mixed_expectations(expected)
                reader = worker_env.reader(settings[run].topics.incidents)
                reader.wait_count(len(expected), timeout=60)
                reader.drain(1.0)
                late = _late(workers[run])
                assert late == 0, f"run {run}: {late} late events"
                _assert_same_as_replay(reader.values(), expected, f"run {run}")
                waited = time.monotonic() - streamed_at[run]
                timings.append(
                    f"run {run}: ready {ready_s[run]:.1f} s, all incidents {waited:.1f} s "
                    f"after its stream"
                )
                workers[run].signal(signal.SIGTERM)
                reader.close()
        finally:
            feeder.join(timeout=120)
    print("\n".join(timings))
    for worker in workers:
        assert worker.terminate(timeout=30) == 0, worker.log_tail()


# --- b. the broker stopped for 10 s mid-stream ----------------------------------------------------


def test_broker_outage_mid_stream_loses_nothing(tmp_path: Path) -> None:
    broker = LocalBroker(tmp_path / "kafka")
    try:
        start_s = broker.start()
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        with worker_environment(broker.bootstrap, admin, tmp_path) as env:
            _outage(env, broker, start_s)
    finally:
        broker.stop_quietly()


def _outage(env: WorkerEnv, broker: LocalBroker, start_s: float) -> None:
    """A real-time stream from two falcosidekick instances, both buffering while the broker is
    away: node-b's reconnects 8 s after the broker is back (librdkafka's reconnect backoff
    reaches 10 s), the other one as soon as it can."""
    rules = env.rules_file("mixed.yaml", MIXED_RULES)
    settings = env.settings([rules], lateness="2s")
    worker = env.worker(settings).start(wait_ready=True)
    producer = env.producer(settings, idempotent=True)
    late_producer = env.producer(settings, idempotent=True)
    lock = threading.Lock()
    disconnected = threading.Event()
    held: list[dict[str, Any]] = []

    def send(event: dict[str, Any]) -> None:
        if event["hostname"] != "node-b":
            producer.send_nowait(event)
            return
        with lock:
            if disconnected.is_set():
                held.append(event)
            else:
                late_producer.send_nowait(event)

    stop = threading.Event()
    sent: list[dict[str, Any]] = []
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            sent.extend(
                produce_mixed_stream(random.Random(42), send, slots=100_000, stop=stop.is_set)
            )
        except BaseException as exc:  # reported by the test below
            failure.append(exc)

    thread = threading.Thread(target=produce, name="falcosidekick")
    thread.start()
    try:
        time.sleep(3.0)
        disconnected.set()
        stop_s = broker.stop()
        down = time.monotonic()
        time.sleep(10.0)
        restart_s = broker.start(keep=True)
        outage = time.monotonic() - down
        time.sleep(8.0)
        with lock:  # node-b's falcosidekick reconnects and sends what it buffered
            for event in held:
                late_producer.send_nowait(event)
            disconnected.clear()
        time.sleep(3.0)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not failure, failure
    producer.flush(120)
    late_producer.flush(120)
    print(
        f"broker start {start_s:.1f} s, stop {stop_s:.1f} s, restart {restart_s:.1f} s, "
        f"outage {outage:.1f} s; {len(sent)} events, {len(held)} delivered 8 s late"
    )
    assert len(held) > 50
    expected = replay_incidents([rules], sent, env.directory, flush=True)
    _mixed_expectations(expected)
    reader = env.reader(settings.topics.incidents)
    reader.poll_until(
        lambda msgs: (
            set(_signatures([message_json(m) for m in msgs])) >= set(_signatures(expected))
        ),
        timeout=90,
    )
    reader.drain(2.0)
    assert worker.running(), worker.log_tail()
    late = _late(worker)
    _assert_same_as_replay(reader.values(), expected, "after the outage", allow_duplicates=True)
    assert late == 0, f"{late} late events"
    assert worker.terminate() == 0, worker.log_tail()


# --- c. topics recreated under a stale data directory ------------------------------------------


def test_topics_recreated_under_stale_rocksdb_state(worker_env: WorkerEnv) -> None:
    rules = worker_env.rules_file("seq.yaml", SEQUENCE_RULES)
    settings = worker_env.settings([rules], store="rocksdb", lateness="2s")
    worker = worker_env.worker(settings).start()
    producer = worker_env.producer(settings)
    rng = random.Random(31)

    # before the reset: a chain (an incident) and a shell left waiting for its egress
    now = time.time_ns()
    before = [
        container_event(rng, SHELL, now, "c0ffee000001"),
        container_event(rng, EGRESS, now + 1_000_000, "c0ffee000001"),
        container_event(rng, SHELL, now + 2_000_000, "c0ffee000002"),
    ]
    for event in before:
        producer.send(event)
    first = worker_env.reader(settings.topics.incidents)
    first.wait_count(1, timeout=30)
    changelog = worker_env.reader(f"{settings.app_id}-correlation-state-changelog")
    dangling = before[2]["uuid"].encode()
    changelog.poll_until(lambda msgs: any(message_contains(m, dangling) for m in msgs), 30)
    assert any(message_contains(m, dangling) for m in changelog.messages)
    first.close()
    changelog.close()
    producer.close()
    assert worker.terminate() == 0, worker.log_tail()
    tables = settings.directory / "worker-data" / settings.app_id / "v1" / "tables"
    assert any(tables.glob("correlation-state-*.db")), f"no RocksDB state in {tables}"

    # the cluster is reset: every topic and group of the worker is gone
    admin = worker_env.admin
    names = [*settings.topics.names(), *(f"{settings.app_id}-{t}" for t in _INTERNAL)]
    for future in admin.delete_consumer_groups(
        worker_groups(settings.app_id)[:2], request_timeout=30
    ).values():
        future.result(timeout=30)
    for future in admin.delete_topics(names, operation_timeout=30).values():
        future.result(timeout=30)
    deadline = time.monotonic() + 60
    while set(names) & set(admin.list_topics(timeout=10).topics):
        assert time.monotonic() < deadline, "topics not deleted"
        time.sleep(0.5)

    started = time.monotonic()
    worker.start(wait_ready=False)
    ready_s = worker.wait_ready(timeout=90)
    log = worker.log_text().split("===== start #2")[1]
    discarded = re.findall(r"discarding local state of partition (\d+)", log)
    assert discarded, "the stale state was not discarded\n" + log[-3000:]
    print(f"ready {ready_s:.1f} s after the restart; discarded partitions {discarded}")

    # after the reset: a new chain, and an egress for the shell that only the stale state knew
    rng2 = random.Random(32)
    now = time.time_ns()
    after = [
        container_event(rng2, SHELL, now, "c0ffee000003"),
        container_event(rng2, EGRESS, now + 1_000_000, "c0ffee000003"),
        container_event(rng2, EGRESS, now + 2_000_000, "c0ffee000002"),
    ]
    producer = worker_env.producer(settings)
    for event in after:
        producer.send(event)
    expected = replay_incidents([rules], after, worker_env.directory)
    assert len(expected) == 1
    reader = worker_env.reader(settings.topics.incidents)
    reader.wait_count(1, timeout=30)
    reader.drain(3.0)
    assert [comparable(i) for i in reader.values()] == [comparable(i) for i in expected]
    assert worker.running(), worker.log_tail()
    assert worker.starts == 2
    assert "ConsistencyError" not in log
    assert time.monotonic() - started < 120


_INTERNAL = ("correlate", "correlation-state-changelog", "__assignor-__leader")


# --- d. the first start on an empty cluster ----------------------------------------------------


@pytest.mark.parametrize("notifier", [False, True], ids=["no-notifier", "webhook"])
@pytest.mark.parametrize("store", ["memory", "rocksdb"])
def test_first_start_on_an_empty_cluster_correlates(
    worker_env: WorkerEnv, store: str, notifier: bool
) -> None:
    rules = worker_env.rules_file("seq.yaml", SEQUENCE_RULES)
    with ThreadedWebhook() as hook:
        extra: dict[str, Any] = {}
        if notifier:
            extra["notifiers"] = [{"name": "hook", "type": "webhook", "webhook": {"url": hook.url}}]
        settings = worker_env.settings([rules], store=store, lateness="2s", extra=extra)
        admin = worker_env.admin
        app_topics = [t for t in admin.list_topics(timeout=10).topics if settings.app_id in t]
        assert not app_topics, app_topics
        worker = worker_env.worker(settings).start(wait_ready=False)

        # the first event as soon as the worker created its topics, before it is ready
        deadline = time.monotonic() + 60
        while settings.topics.events not in admin.list_topics(timeout=10).topics:
            if not worker.running():
                worker.fail(f"exited with {worker.returncode()}")
            assert time.monotonic() < deadline, "the worker did not create its topics"
            time.sleep(0.1)
        rng = random.Random(40)
        producer = worker_env.producer(settings)
        shell = container_event(rng, SHELL, time.time_ns(), "c0ffee000001")
        producer.send(shell)
        ready_s = worker.wait_ready(timeout=90)
        egress = container_event(rng, EGRESS, time.time_ns(), "c0ffee000001")
        producer.send(egress)

        expected = replay_incidents([rules], [shell, egress], worker_env.directory)
        assert len(expected) == 1
        reader = worker_env.reader(settings.topics.incidents)
        reader.wait_count(1, timeout=40)
        reader.drain(1.0)
        assert [comparable(i) for i in reader.values()] == [comparable(i) for i in expected], (
            worker.log_tail()
        )
        if notifier:
            ids = hook.wait_ids({expected[0]["id"]}, timeout=30)
            assert ids == [expected[0]["id"]], ids
        status, body = worker.http_get("/readyz")
        assert status == 200, body
        print(f"{store}, notifier {notifier}: ready after {ready_s:.1f} s")
        assert worker.terminate() == 0, worker.log_tail()


# --- e. a burst after an idle period -------------------------------------------------------------


def test_burst_after_idle_spanning_more_than_lateness_loses_nothing(
    worker_env: WorkerEnv,
) -> None:
    rules = worker_env.rules_file("chain.yaml", CHAIN_RULES)
    settings = worker_env.settings([rules], lateness="2s")
    worker = worker_env.worker(settings).start()
    producer = worker_env.producer(settings)
    rng = random.Random(50)

    # a few events on every partition, then silence: each partition is caught up and idle
    quiet = [snapshot_event(time.time_ns(), f"node-{i}") for i in range(3)]
    quiet.append(container_event(rng, READ, time.time_ns(), "c0ffee000004"))
    for event in quiet:
        producer.send(event)
    worker.wait_metric("fc_events_total", lambda v: v >= len(quiet), 20, f">= {len(quiet)}")
    time.sleep(6.0)

    # the attack: 8 events over 4 s of event time ending now, in one burst, round-robin
    now = time.time_ns()
    span = 4_000_000_000
    steps = [SHELL, SHELL, READ, READ, WRITE_ETC, WRITE_ETC, EGRESS, EGRESS]
    burst = [
        container_event(rng, rule, now - span + i * span // (len(steps) - 1), "c0ffee000001")
        for i, rule in enumerate(steps)
    ]
    producer.send_many(burst)
    parts = collections.Counter(p for p, _ in producer.positions[-len(burst) :])
    assert set(parts) == {0, 1, 2}, parts

    expected = replay_incidents([rules], [*quiet, *burst], worker_env.directory)
    assert [i["correlation"] for i in expected] == ["Attack chain"]
    reader = worker_env.reader(settings.topics.incidents)
    reader.wait_count(len(expected), timeout=30)
    reader.drain(2.0)
    late = _late(worker)
    assert late == 0, f"{late} events of the burst were late"
    assert [comparable(i) for i in reader.values()] == [comparable(i) for i in expected]


# --- f. two workers, one SIGKILLed mid-stream -------------------------------------------------


def test_two_workers_one_sigkilled_mid_stream_emit_what_one_worker_does(
    worker_env: WorkerEnv,
) -> None:
    rules = worker_env.rules_file("mixed.yaml", MIXED_RULES)
    shared = worker_env.settings([rules], lateness="2s", session_timeout="10s")
    single = worker_env.settings([rules], lateness="2s", session_timeout="10s")
    pair = [worker_env.worker(shared, name="shared-a"), worker_env.worker(shared, name="shared-b")]
    alone = worker_env.worker(single, name="single")
    for w in [*pair, alone]:
        w.start(wait_ready=False)
    for w in [*pair, alone]:
        w.wait_ready(timeout=90)
    seen = wait_groups_shared(worker_env.admin, shared, pair, timeout=90)
    print(f"groups of {shared.app_id}: {seen}")

    to_pair = worker_env.producer(shared)
    to_single = worker_env.producer(single)
    killed: list[float] = []
    slots = 160

    def send_both(event: dict[str, Any]) -> None:
        to_pair.send(event)
        to_single.send(event)
        if not killed and to_pair.sent >= slots // 2:
            # both workers have correlated part of the stream when one dies
            killed.append(time.monotonic())
            assert pair[1].kill() == -signal.SIGKILL

    sent = produce_mixed_stream(random.Random(555), send_both, slots=slots)
    assert killed
    expected = replay_incidents([rules], sent, worker_env.directory, flush=True)
    _mixed_expectations(expected)
    readers: dict[str, TopicReader] = {
        "pair": worker_env.reader(shared.topics.incidents),
        "single": worker_env.reader(single.topics.incidents),
    }
    want = set(_signatures(expected))
    for reader in readers.values():
        reader.poll_until(
            lambda msgs: set(_signatures([message_json(m) for m in msgs])) >= want, timeout=90
        )
    for reader in readers.values():
        reader.drain(1.5)
    print(f"all incidents {time.monotonic() - killed[0]:.1f} s after the SIGKILL")
    _assert_same_as_replay(readers["single"].values(), expected, "one worker")
    _assert_same_as_replay(
        readers["pair"].values(), expected, "pair with a SIGKILL", allow_duplicates=True
    )
    assert pair[0].running(), pair[0].log_tail()
    for w in (pair[0], alone):
        assert _late(w) == 0, f"{w.name}: {_late(w)} late events"
    assert pair[0].metric_sum("fc_correlate_records_total") > 0
