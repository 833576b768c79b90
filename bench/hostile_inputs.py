"""Time and memory of the hostile inputs of issue 10, each through the real command line.

Every case runs `falco-correlator validate` or `replay` in a subprocess under a wall-clock
timeout and an address-space limit, so a regression shows up as a number (or `killed`) rather
than a machine out of memory. Run before and after a change to compare:

    python bench/hostile_inputs.py [--timeout 60] [--memory-mb 3000] [--only NAME]

Columns: exit code (or `timeout`/`killed`), wall seconds, peak RSS (MB), and the first line of
stderr that is not a summary, so a traceback or a located error can be told apart at a glance.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

_CLI = [sys.executable, "-m", "streams.cli.main"]

_SEQ_RULE = """\
- correlation: chain
  type: sequence
  by: [container.id]
  within: 10m
  steps:
    - {name: a, condition: rule = A}
    - {name: b, condition: rule = B}
  output: "{{ key['container.id'] }}"
"""


def _event(rule: str, time: str | None = None, **extra: object) -> dict[str, object]:
    event: dict[str, object] = {
        "rule": rule,
        "priority": "Warning",
        "hostname": "node-1",
        "output": "x",
        "output_fields": {"container.id": "c1"},
    }
    if time is not None:
        event["time"] = time
    event.update(extra)
    return event


def _nested(depth: int) -> object:
    value: object = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def _lines(*events: dict[str, object]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


def _replay_case(events: bytes, rules: str = _SEQ_RULE) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        (tmp / "rules.yaml").write_text(rules)
        (tmp / "events.jsonl").write_bytes(events)
        return ["replay", "--rules", str(tmp / "rules.yaml"), str(tmp / "events.jsonl")]

    return build


def _validate_case(text: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        (tmp / "rules.yaml").write_text(text)
        return ["validate", str(tmp / "rules.yaml")]

    return build


def _correlation(condition: str, extra: str = "") -> str:
    return (
        "- correlation: c\n  type: count\n  within: 1m\n  threshold: 2\n"
        f"  condition: {condition}\n{extra}"
    )


def _macro_chain(n: int) -> str:
    items = ["- macro: m0\n  condition: rule = x\n"]
    items += [f"- macro: m{i}\n  condition: m{i - 1}\n" for i in range(1, n)]
    return "".join(items) + _correlation(f"m{n - 1}")


def _list_chain(n: int) -> str:
    # Defined last to first, so resolving the first one walks the whole chain.
    items = [f"- list: l{i}\n  items: [l{i - 1}, x{i}]\n" for i in range(n - 1, 0, -1)]
    items.append("- list: l0\n  items: [a]\n")
    return "".join(items) + _correlation(f"proc.name in (l{n - 1})")


def _doubling(levels: int, used: bool) -> str:
    items = ["- macro: m0\n  condition: proc.name = x\n"]
    items += [f"- macro: m{i}\n  condition: m{i - 1} or m{i - 1}\n" for i in range(1, levels)]
    return "".join(items) + _correlation(f"m{levels - 1}" if used else "rule = x")


def _or_terms(n: int) -> str:
    terms = " or ".join(f'rule = "r{i}"' for i in range(n))
    return _correlation(f"'{terms}'")


def _deep_tags(depth: int) -> str:
    return _correlation("rule = x", f"  tags: {'[' * depth}x{']' * depth}\n")


def _alias_depth(depth: int) -> str:
    anchors = ["- list: l0\n  items: &a0 [x]\n"]
    anchors += [f"- list: l{i}\n  items: &a{i} [*a{i - 1}]\n" for i in range(1, depth)]
    return "".join(anchors)


def _template(output: str) -> str:
    return _correlation("rule = x", f"  output: {output}\n")


_TWO_CHAIN = [_event("A", "2023-05-25T13:44:05Z"), _event("B", "2023-05-25T13:44:06Z")]
_ONE_COUNT = [_event("x", "2023-05-25T13:44:05Z"), _event("x", "2023-05-25T13:44:06Z")]

CASES: dict[str, Callable[[Path], list[str]]] = {
    "replay: chain in year 9999": _replay_case(
        _lines(_event("A", "9999-05-25T13:44:05Z"), _event("B", "9999-05-25T13:44:06Z"))
    ),
    "replay: chain in year 2600": _replay_case(
        _lines(_event("A", "2600-05-25T13:44:05Z"), _event("B", "2600-05-25T13:44:06Z"))
    ),
    "replay: huge evt.time with uuid": _replay_case(
        _lines(
            *[
                _event(
                    r,
                    None,
                    uuid=f"u{r}",
                    output_fields={"container.id": "c1", "evt.time": str(10**30 + i)},
                )
                for i, r in enumerate("AB")
            ]
        )
    ),
    "replay: field nested 300 deep": _replay_case(
        _lines(
            _TWO_CHAIN[0],
            _event(
                "B",
                "2023-05-25T13:44:06Z",
                output_fields={"container.id": "c1", "deep": _nested(300)},
            ),
        )
    ),
    "replay: hostname nested 300 deep": _replay_case(
        _lines(_TWO_CHAIN[0], _event("B", "2023-05-25T13:44:06Z", hostname=_nested(300)))
    ),
    "replay: 20 MB line": _replay_case(
        _lines(_event("A", "2023-05-25T13:44:05Z", output="x" * 20_000_000), _TWO_CHAIN[1])
    ),
    "validate: tags nested 600 deep": _validate_case(_deep_tags(600)),
    "validate: anchors nested 600 deep": _validate_case(_alias_depth(600)),
    "validate: chain of 600 macros": _validate_case(_macro_chain(600)),
    "validate: chain of 3000 lists": _validate_case(_list_chain(3000)),
    "validate: doubling macros, 20 levels, unused": _validate_case(_doubling(20, False)),
    "validate: doubling macros, 22 levels, unused": _validate_case(_doubling(22, False)),
    "validate: doubling macros, 40 levels, unused": _validate_case(_doubling(40, False)),
    "validate: doubling macros, 40 levels, used": _validate_case(_doubling(40, True)),
    "validate: 32k `or` terms": _validate_case(_or_terms(32_000)),
    "validate: 100k `or` terms": _validate_case(_or_terms(100_000)),
    "validate: template 'x' * 2000000000": _validate_case(_template("\"{{ 'x' * 2000000000 }}\"")),
    "validate: template 9**(9**9)": _validate_case(_template('"{{ 9**(9**9) }}"')),
    "validate: threshold 1:30": _validate_case(
        "- correlation: c\n  type: count\n  within: 1m\n  threshold: 1:30\n  condition: rule = x\n"
    ),
    "replay: template nested range loops": _replay_case(
        _lines(*_ONE_COUNT),
        _template(
            '"{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"'
        ),
    ),
    "replay: template recursive doubling macro": _replay_case(
        _lines(*_ONE_COUNT),
        _template(
            '"{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% else %}xx'
            '{% endif %}{% endmacro %}{{ f(40) }}"'
        ),
    ),
    "replay: template center(2**31)": _replay_case(
        _lines(*_ONE_COUNT), _template("\"{{ 'x'|center(2000000000) }}\"")
    ),
}


def _run(argv: list[str], timeout: float, memory_mb: int) -> tuple[str, float, float, str]:
    def limit() -> None:
        limit_bytes = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    started = time.monotonic()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [*_CLI, *argv],
            stdout=subprocess.DEVNULL,
            stderr=err,
            preexec_fn=limit,  # noqa: PLW1509 - single-threaded
        )
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - started > timeout:
                proc.send_signal(signal.SIGKILL)
                _, status, usage = os.wait4(proc.pid, 0)
                timed_out = True
                break
            time.sleep(0.02)
        proc.returncode = 0  # reaped by wait4 already
        elapsed = time.monotonic() - started
        if timed_out:
            outcome = "timeout"
        elif os.WIFSIGNALED(status):
            outcome = f"killed({os.WTERMSIG(status)})"
        else:
            outcome = str(os.WEXITSTATUS(status))
        err.seek(0)
        lines = [
            line.strip()
            for line in err.read().decode("utf-8", "replace").splitlines()
            if line.strip() and not line.startswith(("replay:", "OK:"))
        ]
    first = next((line for line in lines if "Traceback" in line or "Error" in line), None)
    first = first or (lines[0] if lines else "")
    return outcome, elapsed, usage.ru_maxrss / 1024, first[:110]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--memory-mb", type=int, default=3000)
    parser.add_argument("--only", help="run the cases whose name contains this text")
    args = parser.parse_args()
    print(f"{'case':48} {'exit':>8} {'s':>7} {'MB':>6}  first stderr line")
    for name, build in CASES.items():
        if args.only and args.only not in name:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            argv = build(Path(tmp))
            outcome, elapsed, rss, first = _run(argv, args.timeout, args.memory_mb)
        print(f"{name:48} {outcome:>8} {elapsed:7.2f} {rss:6.0f}  {first}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
