"""The demo: a local broker, the worker, and a scripted multi-stage attack as falcosidekick sends it.

    make demo            (or: python deploy/demo/demo.py)

Starts the local Kafka broker (unless KAFKA_BOOTSTRAP_SERVERS points at one), starts
`falco-correlator worker`, produces the attack of deploy/demo/attack.jsonl re-timed to now
(unkeyed, round-robin over the partitions, as falcosidekick's Kafka output does), keeps node-1's
Falco metrics coming while node-2's stop, and prints the incidents as they arrive. Bounded: it
stops by itself after the expected incidents or two minutes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer

ROOT = Path(__file__).resolve().parents[2]
KAFKA = ROOT / "deploy" / "kafka" / "kafka.sh"
EXPECTED = {"Shell then outbound connection", "Repeated sensitive file reads", "Falco sensor went silent"}
PORT = int(os.environ.get("DEMO_WEB_PORT", "6066"))


def _say(text: str) -> None:
    print(text, flush=True)


# The keys of falcosidekick's payload (its Kafka output sends exactly this JSON object).
FALCOSIDEKICK_KEYS = frozenset(
    {"uuid", "output", "priority", "rule", "time", "output_fields", "source", "tags", "hostname"}
)


def _fmt(ns: int) -> str:
    """`time` as falcosidekick writes it: Go's RFC 3339 with nanoseconds, trailing zeros dropped."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    fraction = f"{nanos:09d}".rstrip("0")
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + (
        f".{fraction}Z" if fraction else "Z"
    )


def heartbeat(host: str, now_ns: int) -> dict[str, object]:
    """Falco's metrics snapshot alert as falcosidekick forwards it (with its own uuid)."""
    return {
        "uuid": str(uuid.uuid4()),
        "output": "Falco metrics snapshot",
        "priority": "Informational",
        "rule": "Falco internal: metrics snapshot",
        "time": _fmt(now_ns),
        "output_fields": {"evt.time": now_ns},
        "source": "internal",
        "tags": [],
        "hostname": host,
    }


def _wait_ready(proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the worker exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/readyz", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"the worker did not become ready:\n{log.read_text()[-3000:]}")


def _show(incident: dict[str, object]) -> None:
    events = incident["events"]
    assert isinstance(events, list)
    _say(
        f"\n*** INCIDENT [{incident['severity']}] {incident['correlation']} "
        f"({incident['status']}, id {incident['id']})"
    )
    _say(f"    {incident['output']}")
    _say(f"    key {json.dumps(incident['key'])}, {len(events)} event(s):")
    for event in events:
        _say(f"      {event['time']}  {event['step']:<8} {event['rule']}")


def main() -> int:
    run = f"demo-{int(time.time())}"
    started_broker = False
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    if "KAFKA_BOOTSTRAP_SERVERS" not in os.environ:
        subprocess.run([str(KAFKA), "fetch"], check=True)
        subprocess.run([str(KAFKA), "start"], check=True)
        started_broker = True
    work = Path(tempfile.mkdtemp(prefix="fc-demo-"))
    config = work / "worker.yaml"
    config.write_text(
        f"app:\n  id: {run}\n  store: memory\n  data_dir: {work}/data\n  web_port: {PORT}\n"
        f"  lateness: 2s\n  log_format: console\n  log_level: warning\n"
        f"topics:\n  events: {run}-falco\n  incidents: {run}-incidents\n"
        f"  dead_letter: {run}-dlq\n  notify_dead_letter: {run}-notify-dlq\n"
    )
    log = work / "worker.log"
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=bootstrap)
    cmd = [sys.executable, "-m", "streams.cli.main", "worker", "--config", str(config),
           "--rules", str(ROOT / "rules"), "--rules", str(ROOT / "deploy" / "demo" / "overrides.yaml")]
    _say(f"starting the worker ({' '.join(cmd[3:])}); log in {log}")
    with log.open("wb") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        _wait_ready(proc, log)
        _say(f"worker ready: http://127.0.0.1:{PORT}/metrics\n")
        return _play(bootstrap, run)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        _say(f"\nworker stopped (exit {proc.returncode})")
        if started_broker:
            subprocess.run([str(KAFKA), "stop"], check=False)


def _play(bootstrap: str, run: str) -> int:
    producer = Producer({"bootstrap.servers": bootstrap})
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"{run}-viewer", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([f"{run}-incidents"])
    script = [json.loads(line) for line in (ROOT / "deploy" / "demo" / "attack.jsonl").open()]
    base = min(int(e["output_fields"]["evt.time"]) for e in script)
    start = time.time_ns()
    sent = 0
    seen: set[str] = set()
    for event in script:
        offset = int(event["output_fields"]["evt.time"]) - base
        if offset > 60_000_000_000:
            break  # the tail of the script is node-1's metrics: sent live below
        at = start + offset // 10  # the attack plays ten times faster than written
        while time.time_ns() < at:
            _poll(consumer, seen, 0.05)
        event["time"] = _fmt(time.time_ns())
        event["output_fields"]["evt.time"] = time.time_ns()
        producer.produce(f"{run}-falco", json.dumps(event).encode(), partition=sent % 3)
        producer.poll(0)
        sent += 1
        host = event["hostname"]
        _say(f"falcosidekick -> {run}-falco: {event['rule']}  ({host})")
    producer.flush()
    _say("\nnode-2's Falco goes silent now; node-1 keeps sending metrics every 5 s\n")
    deadline = time.monotonic() + 120
    next_beat = 0.0
    while not EXPECTED <= seen and time.monotonic() < deadline:
        if time.monotonic() >= next_beat:
            beat = heartbeat("node-1", time.time_ns())
            producer.produce(f"{run}-falco", json.dumps(beat).encode(), partition=sent % 3)
            producer.flush()
            sent += 1
            next_beat = time.monotonic() + 5
        _poll(consumer, seen, 0.5)
    consumer.close()
    missing = EXPECTED - seen
    if missing:
        _say(f"\nmissing incidents after the time limit: {sorted(missing)}")
        return 1
    _say("\nall three incidents arrived: the chain, the burst and the silent sensor")
    return 0


def _poll(consumer: Consumer, seen: set[str], timeout: float) -> None:
    message = consumer.poll(timeout)
    if message is None or message.error():
        return
    incident = json.loads(message.value())
    seen.add(incident["correlation"])
    _show(incident)


if __name__ == "__main__":
    sys.exit(main())
