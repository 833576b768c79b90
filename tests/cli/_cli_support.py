"""Helpers of the command-line tests: paths, JSON lines in and out."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
CLI_RULES = FIXTURES / "cli-rules"
SHIPPED_RULES = REPO / "rules"

# The `run` fixture of conftest.py: run(*args, stdin="") -> the finished process.
Run = Callable[..., subprocess.CompletedProcess[str]]


def console_script() -> str | None:
    beside = Path(sys.executable).parent / "falco-correlator"
    return str(beside) if beside.exists() else shutil.which("falco-correlator")


def jsonl(*payloads: dict[str, Any]) -> str:
    return "".join(orjson.dumps(p).decode() + "\n" for p in payloads)


def parse_incidents(stdout: str) -> list[dict[str, Any]]:
    """stdout as JSON lines; every line must be one JSON object."""
    out = [orjson.loads(line) for line in stdout.splitlines()]
    assert all(isinstance(i, dict) for i in out)
    return out


def at(seconds: int) -> str:
    """An RFC 3339 time `seconds` after 2024-01-01T00:00:00Z (under an hour)."""
    minutes, secs = divmod(seconds, 60)
    return f"2024-01-01T00:{minutes:02d}:{secs:02d}Z"


def burst(seconds: int, container: str = "c1") -> dict[str, Any]:
    return {
        "rule": "Burst event",
        "time": at(seconds),
        "priority": "Notice",
        "output_fields": {"container.id": container},
    }


def heartbeat(seconds: int, host: str = "h1") -> dict[str, Any]:
    return {"rule": "Heartbeat", "time": at(seconds), "hostname": host, "output": "hb"}
