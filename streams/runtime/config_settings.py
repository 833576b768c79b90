"""Worker configuration: every `kafka`, `topics` and `app` setting, described once in `SETTINGS`
(section, key, environment variables, parser, meaning); docs/configuration.md is the same table
for people. `load_config` (streams/runtime/config.py) reads them; import them from there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from streams._text import short
from streams.core.durations import NS_PER_UNIT, format_duration, parse_duration
from streams.runtime.config_types import (
    LogFormat,
    LogLevel,
    SaslMechanism,
    SecurityProtocol,
    StoreKind,
)
from streams.secrets import Secret, read_secret

# --- parsers: raw value (YAML value, or the text of an environment variable) -> typed value ---

_Parser = Callable[[object, Mapping[str, str]], object]


def _text(raw: object, _environ: Mapping[str, str]) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError("must be a non-empty string")
    return raw.strip()


def _existing_file(raw: object, environ: Mapping[str, str]) -> str:
    path = _text(raw, environ)
    if not Path(path).is_file():
        raise ValueError(f"file {short(path)} does not exist")
    return path


def _secret(raw: object, environ: Mapping[str, str]) -> Secret:
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError("must be a non-empty string, ${env:NAME} or ${file:/path}")
    return read_secret(raw, environ)


def _integer(minimum: int, maximum: int | None = None) -> _Parser:
    def parse(raw: object, _environ: Mapping[str, str]) -> int:
        if isinstance(raw, str) and re.fullmatch(r"\s*-?[0-9]+\s*", raw):
            raw = int(raw)
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise ValueError(f"must be an integer, got {short(raw)}")
        if raw < minimum or (maximum is not None and raw > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise ValueError(f"must be at least {minimum}{upper}, got {raw}")
        return raw

    return parse


_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def _boolean(raw: object, _environ: Mapping[str, str]) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
        return raw.strip().lower() in _TRUE
    raise ValueError(f"must be true or false, got {short(raw)}")


def _choice(enum: type[StrEnum], aliases: Mapping[str, str] | None = None) -> _Parser:
    by_name = {member.value.lower(): member for member in enum}
    for alias, target in (aliases or {}).items():
        by_name[alias] = by_name[target.lower()]

    def parse(raw: object, _environ: Mapping[str, str]) -> StrEnum:
        if isinstance(raw, str) and raw.strip().lower() in by_name:
            return by_name[raw.strip().lower()]
        allowed = "|".join(member.value for member in enum)
        raise ValueError(f"must be one of {allowed}, got {short(raw)}")

    return parse


def _duration(minimum_ns: int) -> _Parser:
    def parse(raw: object, _environ: Mapping[str, str]) -> int:
        ns = parse_duration(raw)
        if ns < minimum_ns:
            least = "more than 0" if minimum_ns <= 1 else f"at least {format_duration(minimum_ns)}"
            raise ValueError(f"must be {least}, got {short(raw)}")
        return ns

    return parse


def _bootstrap(raw: object, environ: Mapping[str, str]) -> str:
    servers = [part.strip() for part in _text(raw, environ).split(",")]
    for server in servers:
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port[,host:port...], got {short(raw)}")
    return ",".join(servers)


# Kafka's rule for topic names; the app id prefixes internal topics, so it follows it too.
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")


def _topic_name(raw: object, environ: Mapping[str, str]) -> str:
    name = _text(raw, environ)
    if not _TOPIC_NAME.fullmatch(name) or name in {".", ".."}:
        raise ValueError(
            f"{short(name)} is not a valid topic name (letters, digits, '.', '_', '-')"
        )
    return name


def _paths(raw: object, environ: Mapping[str, str]) -> tuple[str, ...]:
    # An environment variable lists paths separated by commas; YAML gives a list or one string.
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:
        raise ValueError("must be a non-empty list of paths")
    return tuple(_text(item, environ) for item in items)


def _optional_paths(raw: object, environ: Mapping[str, str]) -> tuple[str, ...] | None:
    # An empty YAML list (or null) means none; otherwise as `_paths`.
    if raw is None or raw == []:
        return None
    return _paths(raw, environ)


@dataclass(frozen=True, slots=True)
class Setting:
    """One configuration key: where it lives, how it is read, what it means."""

    section: str
    key: str
    attr: str
    parse: _Parser
    default: str  # as the docs show it; "" means unset
    meaning: str
    extra_env: tuple[str, ...] = ()  # consulted before FC_<SECTION>_<KEY>, which wins

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def env(self) -> tuple[str, ...]:
        """Environment variables in increasing precedence."""
        return (*self.extra_env, f"FC_{self.section}_{self.key}".upper())


def _s(section: str, key: str, parse: _Parser, default: str, meaning: str, **kw: Any) -> Setting:
    attr = kw.pop("attr", key)
    return Setting(section, key, attr, parse, default, meaning, **kw)


_PROTOCOL = "PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL"
_LEVELS = "|".join(LogLevel)
SETTINGS: tuple[Setting, ...] = (
    _s("kafka", "bootstrap_servers", _bootstrap, "127.0.0.1:9092",
       "Kafka brokers, `host:port[,host:port...]`", extra_env=("KAFKA_BOOTSTRAP_SERVERS",)),
    _s("kafka", "security_protocol", _choice(SecurityProtocol), "PLAINTEXT", _PROTOCOL),
    _s("kafka", "sasl_mechanism", _choice(SaslMechanism), "PLAIN",
       "PLAIN|SCRAM-SHA-256|SCRAM-SHA-512 (SASL_* protocols only)"),
    _s("kafka", "sasl_username", _text, "", "SASL user; required with SASL_*"),
    _s("kafka", "sasl_password", _secret, "",
       "SASL password (secret): `${env:NAME}`, `${file:/path}` or the value; required with SASL_*"),
    _s("kafka", "ssl_cafile", _existing_file, "",
       "CA bundle (PEM) that signed the brokers' certificates"),
    _s("kafka", "ssl_certfile", _existing_file, "", "client certificate (PEM) for mutual TLS"),
    _s("kafka", "ssl_keyfile", _existing_file, "", "private key (PEM) of the client certificate"),
    _s("kafka", "ssl_check_hostname", _boolean, "true", "verify the brokers' host names"),
    _s("topics", "events", _topic_name, "falco", "Falco events in (falcosidekick's Kafka output)"),
    _s("topics", "incidents", _topic_name, "falco-incidents", "incidents out, keyed by their id"),
    _s("topics", "dead_letter", _topic_name, "falco-dlq", "input records that are not events"),
    _s("topics", "notify_dead_letter", _topic_name, "falco-notify-dlq",
       "notifications that exhausted their retries"),
    _s("topics", "partitions", _integer(1), "3", "partitions of the topics the worker creates"),
    _s("topics", "replication_factor", _integer(1), "1",
       "replication factor of the topics the worker creates"),
    _s("app", "id", _topic_name, "falco-correlator",
       "Faust app id: consumer group and prefix of internal topics"),
    _s("app", "rules", _paths, "rules/",
       "rule files or directories (env: comma-separated); `--rules` overrides"),
    _s("app", "shadow_rules", _optional_paths, "",
       "shadow rule files or directories, same forms as `app.rules`: run beside the live rules "
       "on the same events with their own state; incidents only to `<topics.incidents>-shadow`, "
       "never to notifiers or enrichers; metrics labelled `shadow=\"true\"`. "
       "`--shadow-rules` overrides"),
    _s("app", "lateness", _duration(0), "10s", "how late an event may arrive (watermark lag)",
       attr="lateness_ns"),
    _s("app", "store", _choice(StoreKind), "rocksdb", "table store: rocksdb|memory"),
    _s("app", "data_dir", _text, "$XDG_STATE_HOME/falco-correlator",
       "where the RocksDB tables live (default: `$XDG_STATE_HOME/falco-correlator`, else "
       "`~/.local/state/falco-correlator`; not relative to the working directory)"),
    _s("app", "web_port", _integer(1, 65535), "6066", "port of /healthz, /readyz and /metrics"),
    _s("app", "tick_interval", _duration(1), "1s",
       "how often ticks advance the watermark and fire absence deadlines", attr="tick_interval_ns"),
    _s("app", "max_pending_per_key", _integer(1), "10000",
       "cap on the partial matches kept per correlation key (bounds memory)"),
    _s("app", "max_state_entries", _integer(1), "1000000",
       "global cap on (correlation, key) entries kept per engine, and on suppression anchors; "
       "the least recently used are evicted and counted"),
    _s("app", "max_future_skew", _duration(0), "5m",
       "an event dated more than this ahead of the wall clock is invalid (dead-lettered)",
       attr="max_future_skew_ns"),
    _s("app", "max_event_bytes", _integer(64), "1048576",
       "largest event record accepted; longer ones are dead-lettered"),
    _s("app", "session_timeout", _duration(NS_PER_UNIT["s"]), "30s",
       "Kafka group session timeout: how soon a crashed worker's partitions move to the others",
       attr="session_timeout_ns"),
    _s("app", "idle_timeout", _duration(0), "2s",
       "how long a source partition that is caught up with its log end may stay silent before it "
       "stops holding the watermark back", attr="idle_timeout_ns"),
    _s("app", "stall_timeout", _duration(NS_PER_UNIT["s"]), "60s",
       "a partition with lag > 0 and no progress for this long fails /healthz",
       attr="stall_timeout_ns"),
    _s("app", "ingest_batch_size", _integer(1, 100_000), "2000",
       "Falco messages read per ingest batch"),
    _s("app", "max_inflight_records", _integer(2), "64",
       "correlate records produced but not yet processed, per partition, before ingest pauses"),
    _s("app", "log_level", _choice(LogLevel, {"warn": "WARNING"}), "INFO", _LEVELS),
    _s("app", "log_format", _choice(LogFormat), "json", "json|console"),
)  # fmt: skip
