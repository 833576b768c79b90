"""A synthetic Falco alert stream for benchmarks: busy-cluster noise with attack chains mixed in.

Deterministic for a given seed. Times advance ~1 ms per event with bounded disorder (as
falcosidekick's round-robin partitions produce), so the reorder buffer is exercised.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import orjson

__all__ = ["synthetic_events", "typical_events"]

_BASE_NS = 1_714_564_800_000_000_000  # 2024-05-01T12:00:00Z
_NOISE_RULES = [
    ("Read sensitive file untrusted", "Warning"),
    ("Contact K8S API Server From Container", "Notice"),
    ("Launch Package Management Process in Container", "Error"),
    ("Write below etc", "Error"),
    ("Launch Privileged Container", "Informational"),
    ("Unexpected UDP Traffic", "Notice"),
    ("Create Symlink Over Sensitive Files", "Warning"),
    ("Change thread namespace", "Notice"),
    ("Non sudo setuid", "Notice"),
    ("Clear Log Activities", "Warning"),
    ("Launch Suspicious Network Tool in Container", "Notice"),
    ("Terminal shell in container", "Notice"),
    ("Packet socket created in container", "Notice"),
    ("Redirect STDOUT/STDIN to Network Connection in Container", "Notice"),
    ("Search Private Keys or Passwords", "Warning"),
]
_WEIGHTS = [3, 30, 8, 8, 10, 10, 4, 6, 6, 2, 2, 2, 1, 1, 2]


def _payload(rng: random.Random, time_ns: int, rule: str, priority: str, container: int) -> bytes:
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    from time import gmtime, strftime

    stamp = strftime("%Y-%m-%dT%H:%M:%S", gmtime(seconds)) + f".{nanos:09d}Z"
    cid = f"{container:012x}"
    fields = {
        "container.id": cid,
        "container.name": f"app-{container}",
        "container.image.repository": f"registry.example.com/team/app{container % 50}",
        "container.image.tag": "1.4.2",
        "evt.time": time_ns,
        "evt.type": "openat",
        "fd.name": "/etc/shadow" if "sensitive" in rule else f"10.0.{container % 200}.7:443",
        "k8s.ns.name": f"ns-{container % 40}",
        "k8s.pod.name": f"app-{container}-7d9f8c6b5-x2k4q",
        "proc.cmdline": "cat /etc/shadow" if "sensitive" in rule else "curl -s http://example/x",
        "proc.exepath": "/usr/bin/cat",
        "proc.name": "cat",
        "proc.pname": "bash",
        "proc.tty": 0,
        "user.loginuid": -1,
        "user.name": "root",
        "user.uid": 0,
        "proc.aname[2]": "containerd-shim",
        "proc.aname[3]": None,
    }
    return orjson.dumps(
        {
            "hostname": f"node-{container % 12}",
            "output": f"{stamp[11:]}: {priority} {rule} (user=root container_id={cid})",
            "priority": priority,
            "rule": rule,
            "source": "syscall",
            "tags": ["container", "maturity_stable", "mitre_execution"],
            "time": stamp,
            "output_fields": fields,
        }
    )


def synthetic_events(count: int, *, seed: int = 7, containers: int = 2000) -> Iterator[bytes]:
    """`count` JSON lines (bytes, no newline)."""
    rng = random.Random(seed)
    names = [r for r, _ in _NOISE_RULES]
    prios = dict(_NOISE_RULES)
    t = _BASE_NS
    for i in range(count):
        t += rng.randint(0, 2_000_000)
        jitter = rng.randint(0, 2_000_000_000)  # up to 2 s of disorder, below the 10 s lateness
        if i % 5000 == 0:
            # Falco's periodic metrics snapshot from each node
            for node in range(12):
                yield orjson.dumps(
                    {
                        "hostname": f"node-{node}",
                        "output": "Falco metrics snapshot",
                        "priority": "Informational",
                        "rule": "Falco internal: metrics snapshot",
                        "source": "internal",
                        "time": _fmt(t),
                        "output_fields": {"evt.time": t},
                    }
                )
        if i % 1000 == 1:
            # an attack chain: shell then C2 in one container
            container = rng.randrange(containers)
            yield _payload(rng, t - jitter, "Terminal shell in container", "Notice", container)
            yield _payload(rng, t, "Outbound Connection to C2 Servers", "Critical", container)
            continue
        rule = rng.choices(names, _WEIGHTS)[0]
        yield _payload(rng, t - jitter, rule, prios[rule], rng.randrange(containers))


def _fmt(ns: int) -> str:
    from time import gmtime, strftime

    seconds, nanos = divmod(ns, 1_000_000_000)
    return strftime("%Y-%m-%dT%H:%M:%S", gmtime(seconds)) + f".{nanos:09d}Z"


_BENIGN = (
    Path(__file__).resolve().parent.parent / "rules" / "tests" / "fixtures" / "benign-noise.jsonl"
)
_TILE_NS = 4 * 3600 * 1_000_000_000  # the benign fixture spans four hours


def typical_events(count: int, *, seed: int = 7, chain_every: int = 1000) -> Iterator[bytes]:
    """A busy cluster without much going on: the benign-noise fixture of the shipped rules (hours
    of ordinary single alerts, allow-listed tools, metrics snapshots) tiled in time, with one
    shell-then-C2 chain every `chain_every` events. Incidents are rare, as in production."""
    rng = random.Random(seed)
    noise = [orjson.loads(line) for line in _BENIGN.read_bytes().splitlines() if line.strip()]
    produced = 0
    tile = 0
    while produced < count:
        shift = tile * _TILE_NS
        for payload in noise:
            if produced >= count:
                return
            event = dict(payload)
            fields = dict(event.get("output_fields") or {})
            t = int(fields.get("evt.time") or 0) + shift
            fields["evt.time"] = t
            event["output_fields"] = fields
            event["time"] = _fmt(t)
            event["uuid"] = f"{tile:04d}-{produced:09d}"
            yield orjson.dumps(event)
            produced += 1
            if produced % chain_every == 0:
                container = rng.randrange(2000)
                yield _payload(rng, t, "Terminal shell in container", "Notice", container)
                yield _payload(
                    rng, t + 1_000_000, "Outbound Connection to C2 Servers", "Critical", container
                )
                produced += 2
        tile += 1
