"""Shared by the worker benchmark's parts: paths, constants, logging, Kafka topics.

`RULES` is the frozen copy of the rules the run uses (`main` sets it before any worker starts).
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
#: The script that runs the benchmark; it re-executes itself for in-process workers.
SCRIPT = ROOT / "bench" / "worker_bench.py"
PARTITIONS = 3
RULES = ROOT / "rules"  # replaced by a frozen copy in main()
PREFIX = "fcbench-"
VENV_BIN = Path(sys.executable).parent


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_duration(text: str) -> int:
    units = {"ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000}
    for unit in ("ms", "s", "m"):
        if text.endswith(unit) and text[: -len(unit)].isdigit():
            return int(text[: -len(unit)]) * units[unit]
    raise argparse.ArgumentTypeError(f"bad duration {text!r}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def admin(bootstrap: str) -> Any:
    from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

    return AdminClient({"bootstrap.servers": bootstrap})


def create_topics(bootstrap: str, names: list[str], partitions: int = PARTITIONS) -> None:
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    client = admin(bootstrap)  # keep the handle alive until the futures are done
    futures = client.create_topics(
        [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names],
        request_timeout=30,
    )
    for future in futures.values():
        future.result(timeout=30)


def delete_topics(bootstrap: str, run_id: str) -> None:
    client = admin(bootstrap)
    names = [t for t in client.list_topics(timeout=30).topics if run_id in t]
    if names:
        for future in client.delete_topics(names, request_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result(timeout=30)
    log(f"deleted {len(names)} topics of run {run_id}")
