"""Entry point of the `falco-correlator` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from streams.core.durations import parse_duration
from streams.core.events import MAX_EVENT_BYTES
from streams.core.loader import load_rules
from streams.core.rules import Ruleset
from streams.errors import ConfigError, RuleLoadError

__all__ = ["main"]


def _duration(text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="falco-correlator",
        description="Correlate Falco alerts into incidents with windowed YAML rules.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate", help="check rule files; errors as PATH:LINE:COL")
    validate.add_argument("paths", nargs="*", default=["rules/"], metavar="PATH")

    replay = sub.add_parser("replay", help="correlate JSON-lines event files, incidents on stdout")
    replay.add_argument("--rules", action="append", required=True, metavar="PATH")
    replay.add_argument("--lateness", type=_duration, default="10s", metavar="DURATION")
    replay.add_argument(
        "--flush", action="store_true", help="fire every pending absence at the end"
    )
    replay.add_argument(
        "--enrich",
        action="store_true",
        help="run the enrichers of --config's `enrichment:` section (off: replay stays offline)",
    )
    replay.add_argument("--config", metavar="FILE", help="worker config file, for --enrich")
    replay.add_argument(
        "--max-line-bytes",
        type=_positive,
        default=MAX_EVENT_BYTES,
        metavar="N",
        help=f"longer lines are skipped as invalid (default {MAX_EVENT_BYTES})",
    )
    replay.add_argument("events", nargs="*", metavar="EVENTS", help="files; '-' or none: stdin")

    test = sub.add_parser("test", help="run rule tests (*.test.yaml fixtures)")
    test.add_argument("paths", nargs="*", default=["rules/"], metavar="PATH")
    test.add_argument(
        "--rules", action="append", metavar="PATH", help="rules instead of the fixtures' own"
    )
    test.add_argument("-v", "--verbose", action="store_true")

    explain = sub.add_parser(
        "explain", help="why a correlation did or did not fire: partial matches and stop reasons"
    )
    explain.add_argument("--rules", action="append", required=True, metavar="PATH")
    explain.add_argument("--correlation", required=True, metavar="NAME")
    explain.add_argument(
        "--key", action="append", default=[], metavar="FIELD=VALUE", help="only this group key"
    )
    explain.add_argument(
        "--near-miss", action="store_true", help="the partial matches that got furthest, ranked"
    )
    explain.add_argument("--top", type=_positive, default=10, metavar="N", help="near misses shown")
    explain.add_argument("--json", action="store_true", help="one JSON document on stdout")
    _engine_options(explain)
    explain.add_argument("events", nargs="*", metavar="EVENTS", help="files; '-' or none: stdin")

    diff = sub.add_parser(
        "diff",
        help="incidents only in OLD, only in NEW, or changed (exit 1 when any)",
    )
    diff.add_argument("--rules", action="append", required=True, metavar="OLD")
    diff.add_argument("--against", action="append", required=True, metavar="NEW")
    diff.add_argument("--json", action="store_true", help="one JSON document on stdout")
    _engine_options(diff)
    diff.add_argument("events", nargs="*", metavar="EVENTS", help="files; '-' or none: stdin")

    doctor = sub.add_parser(
        "doctor",
        help="check configuration, secrets, rules, Kafka, notifiers and enrichers (exit 1 on FAIL)",
    )
    doctor.add_argument("--config", metavar="FILE")
    doctor.add_argument("--rules", action="append", metavar="PATH")
    doctor.add_argument(
        "--send-test", action="store_true", help="deliver one test incident to every notifier"
    )
    doctor.add_argument(
        "--timeout", type=_duration, default="10s", metavar="DURATION", help="per check"
    )

    schema = sub.add_parser(
        "schema", help="print the JSON Schema of rule files (for editors: schema/rules.schema.json)"
    )
    schema.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")

    worker = sub.add_parser("worker", help="run the Faust stream worker")
    worker.add_argument("--config", metavar="FILE")
    worker.add_argument("--rules", action="append", metavar="PATH")
    worker.add_argument(
        "--shadow-rules",
        action="append",
        metavar="PATH",
        help="shadow rules (overrides app.shadow_rules): incidents to <incidents>-shadow only",
    )

    redeliver = sub.add_parser(
        "redeliver", help="send dead-lettered notifications again (exit 1 if some fail again)"
    )
    redeliver.add_argument("--config", metavar="FILE")
    redeliver.add_argument("--notifier", metavar="NAME", help="only this notifier's records")
    redeliver.add_argument("--max", type=_positive, metavar="N", help="at most N records")
    return parser


def _engine_options(parser: argparse.ArgumentParser) -> None:
    """The engine settings of a run over files, as `replay` and the worker have them."""
    parser.add_argument("--lateness", type=_duration, default="10s", metavar="DURATION")
    parser.add_argument(
        "--flush", action="store_true", help="fire every pending absence at the end"
    )
    parser.add_argument(
        "--max-pending",
        type=_positive,
        default=10_000,
        metavar="N",
        help="per-key cap on held events (the worker's app.max_pending_per_key)",
    )


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _load(paths: Sequence[str]) -> Ruleset | None:
    try:
        ruleset: Ruleset = load_rules(paths)
    except RuleLoadError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        print(f"{len(exc.errors)} error(s); no rules loaded", file=sys.stderr)
        return None
    return ruleset


def _write_schema(output: str | None) -> int:
    import json

    from streams.core.rule_spec import rules_json_schema

    text = json.dumps(rules_json_schema(), indent=2, sort_keys=True) + "\n"
    if output is None:
        sys.stdout.write(text)
        return 0
    try:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        print(f"schema: {exc}", file=sys.stderr)
        return 2
    return 0


def _explain(args: argparse.Namespace) -> int:
    from streams.cli.explain import ExplainOptions, UsageError, parse_key_filters, run_explain
    from streams.cli.replay import read_inputs

    try:
        keys = parse_key_filters(args.key)
    except UsageError as exc:
        print(f"explain: {exc}", file=sys.stderr)
        return 2
    options = ExplainOptions(
        correlation=args.correlation,
        keys=keys,
        lateness_ns=args.lateness,
        max_pending=args.max_pending,
        flush=args.flush,
        near_miss=args.near_miss,
        top=args.top,
        as_json=args.json,
    )
    status = run_explain(
        args.rules,
        read_inputs(args.events, sys.stdin.buffer),
        options,
        sys.stdout.buffer,
        sys.stderr,
    )
    sys.stdout.flush()
    return status


def _diff(args: argparse.Namespace) -> int:
    from streams.cli.diff import run_diff
    from streams.cli.replay import read_inputs

    status = run_diff(
        args.rules,
        args.against,
        read_inputs(args.events, sys.stdin.buffer),
        lateness_ns=args.lateness,
        max_pending=args.max_pending,
        flush=args.flush,
        as_json=args.json,
        out=sys.stdout.buffer,
        err=sys.stderr,
    )
    sys.stdout.flush()
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "validate":
        ruleset = _load(args.paths)
        if ruleset is None:
            return 1
        disabled = f", {len(ruleset.disabled)} disabled" if ruleset.disabled else ""
        print(
            f"OK: {len(ruleset.correlations)} correlations{disabled} "
            f"in {len(ruleset.files)} file(s), ruleset {ruleset.digest}"
        )
        return 0
    if args.command == "replay":
        from streams.cli.replay import print_summary, read_inputs, replay_lines

        ruleset = _load(args.rules)
        if ruleset is None:
            return 1
        enrichment = None
        if args.enrich:
            from streams.enrich import BlockingEnrichment

            try:
                enrichment = BlockingEnrichment.from_config_file(args.config, os.environ)
            except ConfigError as exc:
                print(f"replay: {exc}", file=sys.stderr)
                return 2
        try:
            result, engine = replay_lines(
                ruleset,
                read_inputs(args.events, sys.stdin.buffer, max_line_bytes=args.max_line_bytes),
                lateness_ns=args.lateness,
                max_line_bytes=args.max_line_bytes,
                flush=args.flush,
                out=sys.stdout.buffer,
                err=sys.stderr,
                enrich=enrichment.enrich if enrichment is not None else None,
            )
        except OSError as exc:
            print(f"replay: {exc}", file=sys.stderr)
            return 2
        finally:
            if enrichment is not None:
                enrichment.close()
        sys.stdout.flush()
        print_summary(result, engine, sys.stderr)
        return 0
    if args.command == "explain":
        return _explain(args)
    if args.command == "diff":
        return _diff(args)
    if args.command == "test":
        from streams.cli.ruletest import run_rule_tests

        return run_rule_tests(args.paths, rules_override=args.rules, verbose=args.verbose)
    if args.command == "doctor":
        from streams.runtime.doctor import run_doctor

        return run_doctor(
            config_path=args.config,
            rules=args.rules,
            send_test=args.send_test,
            timeout=args.timeout / 1e9,
        )
    if args.command == "schema":
        return _write_schema(args.output)
    if args.command == "redeliver":
        from streams.runtime.redeliver import run_redeliver

        return run_redeliver(config_path=args.config, notifier=args.notifier, max_records=args.max)
    from streams.runtime.cli import run_worker

    try:
        return run_worker(config_path=args.config, rules=args.rules, shadow_rules=args.shadow_rules)
    except ConfigError as exc:  # the `notifiers:` section is validated when the app is built
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
