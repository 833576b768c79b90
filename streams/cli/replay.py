"""`falco-correlator replay`: correlate JSON-lines files offline, incidents on stdout."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson

from streams.core.engine import Engine
from streams.core.events import MAX_EVENT_BYTES, event_from_bytes
from streams.core.rules import Ruleset
from streams.errors import EventError

__all__ = ["ReplayResult", "read_inputs", "replay_lines"]


@dataclass
class ReplayResult:
    lines: int = 0
    invalid: int = 0
    incidents: int = 0


def read_inputs(
    paths: list[str], stdin: IO[bytes], *, max_line_bytes: int = MAX_EVENT_BYTES
) -> Iterator[tuple[str, int, bytes]]:
    """(source name, 1-based line number, line without its newline) over every input, `-` or
    none meaning stdin.

    A line longer than `max_line_bytes` is yielded cut to `max_line_bytes + 1` bytes (which
    `event_from_bytes` rejects by size); the rest of it is read and dropped as it comes, so one
    endless line costs neither memory nor the lines after it.
    """
    for path in paths or ["-"]:
        if path == "-":
            yield from _bounded_lines("<stdin>", stdin, max_line_bytes)
            continue
        with open(path, "rb") as handle:
            yield from _bounded_lines(path, handle, max_line_bytes)


def _bounded_lines(
    source: str, handle: IO[bytes], max_line_bytes: int
) -> Iterator[tuple[str, int, bytes]]:
    """Lines read in blocks (faster than a readline per line) and split here. A line past the
    limit is yielded cut to `max_line_bytes + 1` bytes; the rest of it is dropped as it comes."""
    number = 0
    partial = b""  # the start of a line whose end is in a later block
    dropping = False  # inside a line already yielded cut: drop up to its end
    read = getattr(handle, "read1", handle.read)  # what a pipe has now, not a full block
    while True:
        block = read(_BLOCK)
        if not block:
            break
        start = 0
        end = block.find(b"\n")
        while end >= 0:
            if dropping:
                dropping = False
            else:
                number += 1
                line = partial + block[start:end] if partial else block[start:end]
                partial = b""
                yield source, number, line[: max_line_bytes + 1]
            start = end + 1
            end = block.find(b"\n", start)
        if dropping:
            continue
        partial += block[start:]
        if len(partial) > max_line_bytes:
            number += 1
            yield source, number, partial[: max_line_bytes + 1]
            partial, dropping = b"", True
    if partial:
        number += 1
        yield source, number, partial


_BLOCK = 1 << 20


def replay_lines(
    ruleset: Ruleset,
    lines: Iterator[tuple[str, int, bytes]],
    *,
    lateness_ns: int,
    flush: bool,
    out: IO[bytes],
    err: IO[str],
    engine: Engine | None = None,
    enrich: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    max_line_bytes: int = MAX_EVENT_BYTES,
) -> tuple[ReplayResult, Engine]:
    engine = engine or Engine(ruleset, lateness_ns=lateness_ns)
    result = ReplayResult()
    dumps = orjson.dumps
    write = out.write

    def emit(incidents: list[dict[str, Any]]) -> None:
        for incident in incidents:
            if enrich is not None:
                enrich(incident)  # in place, bounded by the pipeline deadline
            write(dumps(incident) + b"\n")
        result.incidents += len(incidents)

    seq = 0
    stats = engine.stats
    for source, number, line in lines:
        result.lines += 1
        if not line or line.isspace():  # as `not line.strip()`, without copying the line
            result.invalid += 1
            err.write(f"{source}:{number}: skipped: empty line\n")
            continue
        try:
            event = event_from_bytes(line, seq, max_bytes=max_line_bytes)
        except EventError as exc:
            result.invalid += 1
            err.write(f"{source}:{number}: skipped: {exc}\n")
            continue
        seq += 1
        late_before = stats.late
        incidents = engine.submit(event)
        if stats.late != late_before:
            err.write(
                f"{source}:{number}: late: event time is before the watermark, not correlated\n"
            )
        if incidents:
            emit(incidents)
    emit(engine.finish(flush=flush))
    return result, engine


def print_summary(result: ReplayResult, engine: Engine, err: IO[str]) -> None:
    stats = engine.stats
    new = sum(stats.incidents.values())
    updates = sum(stats.updates.values())
    err.write(
        f"replay: {result.lines} lines, {stats.events} events, {result.invalid} invalid, "
        f"{stats.late} late, {result.incidents} incidents ({new} new, {updates} updates), "
        f"{stats.evicted} evicted, {stats.evicted_keys} evicted keys, "
        f"{stats.template_errors} template errors\n"
    )
    if stats.last_template_error:
        err.write(f"replay: last template error: {stats.last_template_error}\n")


def main_stdin() -> IO[bytes]:
    return sys.stdin.buffer
