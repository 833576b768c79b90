"""Worker configuration: one YAML file, then environment variables, which win.

Pure Python (no Faust), so the CLI and the tests build a `WorkerConfig` without a broker.
Every setting is described once in `SETTINGS` (section, key, environment variables, parser,
meaning); docs/configuration.md is the same table for people. Errors name the key and where the
value came from, e.g. `worker.yaml:4:14: app.lateness: invalid duration '10x': ...` or
`env FC_APP_LATENESS: app.lateness: ...`, and all of them are reported at once.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streams._config_fields import ConfigFile, read_config_file
from streams._text import printable, short
from streams.core.durations import NS_PER_UNIT, format_duration, parse_duration
from streams.core.engine import DEFAULT_MAX_STATE_ENTRIES
from streams.core.events import MAX_EVENT_BYTES
from streams.errors import ConfigError
from streams.runtime.notify_settings import NotifySettings, parse_notify_settings
from streams.secrets import Secret, read_secret

if TYPE_CHECKING:
    from streams.enrich.registry import EnrichmentConfig
    from streams.notifiers.base import NotifierSpec

__all__ = [
    "SETTINGS",
    "AppConfig",
    "KafkaConfig",
    "LogFormat",
    "LogLevel",
    "SaslMechanism",
    "Secret",
    "SecurityProtocol",
    "Setting",
    "StoreKind",
    "TopicsConfig",
    "WorkerConfig",
    "load_config",
]


class SecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class SaslMechanism(StrEnum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


class StoreKind(StrEnum):
    ROCKSDB = "rocksdb"
    MEMORY = "memory"


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


class LogFormat(StrEnum):
    JSON = "json"
    CONSOLE = "console"


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: SecurityProtocol = SecurityProtocol.PLAINTEXT
    sasl_mechanism: SaslMechanism = SaslMechanism.PLAIN
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True


@dataclass(frozen=True, slots=True)
class TopicsConfig:
    events: str = "falco"
    incidents: str = "falco-incidents"
    dead_letter: str = "falco-dlq"
    notify_dead_letter: str = "falco-notify-dlq"
    partitions: int = 3
    replication_factor: int = 1


def default_data_dir() -> str:
    """Where local table state lives unless `app.data_dir` says otherwise: independent of the
    directory the worker starts in (`$XDG_STATE_HOME/falco-correlator`, else
    `~/.local/state/falco-correlator`; the container image sets /var/lib/falco-correlator)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "falco-correlator")


@dataclass(frozen=True, slots=True)
class AppConfig:
    id: str = "falco-correlator"
    rules: tuple[str, ...] = ("rules/",)
    shadow_rules: tuple[str, ...] | None = None  # None: no shadow rules
    lateness_ns: int = 10 * NS_PER_UNIT["s"]
    store: StoreKind = StoreKind.ROCKSDB
    data_dir: str = field(default_factory=default_data_dir)
    web_port: int = 6066
    tick_interval_ns: int = 1 * NS_PER_UNIT["s"]
    max_pending_per_key: int = 10_000
    max_state_entries: int = DEFAULT_MAX_STATE_ENTRIES
    max_future_skew_ns: int = 5 * NS_PER_UNIT["m"]
    max_event_bytes: int = MAX_EVENT_BYTES
    session_timeout_ns: int = 30 * NS_PER_UNIT["s"]
    idle_timeout_ns: int = 2 * NS_PER_UNIT["s"]
    stall_timeout_ns: int = 60 * NS_PER_UNIT["s"]
    ingest_batch_size: int = 2000
    max_inflight_records: int = 64
    log_level: LogLevel = LogLevel.INFO
    log_format: LogFormat = LogFormat.JSON

    @property
    def idle_after_ns(self) -> int:
        """How long a caught-up source partition's silence is tolerated."""
        return self.idle_timeout_ns


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    topics: TopicsConfig = field(default_factory=TopicsConfig)
    app: AppConfig = field(default_factory=AppConfig)
    # --- notify stage (streams/runtime/notify.py): typed, secrets resolved, when the file is read
    notifiers: tuple[NotifierSpec[Any], ...] = ()  # give them to streams.notifiers.load_notifiers
    delivery: NotifySettings = field(default_factory=NotifySettings)
    # --- correlate stage: the `enrichment:` section, for streams.enrich.load_enrichment
    enrichment: EnrichmentConfig | None = None


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

_SECTIONS = ("kafka", "topics", "app")
# Sections read by their own typed readers (the notifiers', the notify stage's, the enrichers').
_TYPED_SECTIONS = ("notifiers", "delivery", "enrichment")
_BY_NAME = {setting.name: setting for setting in SETTINGS}


def load_config(path: str | None, environ: Mapping[str, str]) -> WorkerConfig:
    """Defaults, then the YAML file at `path` (if any), then `environ`. ConfigError lists every
    problem, each naming its key and where it came from (`file:line:col`, `env NAME`). An empty
    environment variable counts as unset.

    Every section is read here, once, into typed values: the notifiers (with their secrets as
    `Secret`), the notify stage's `delivery`, the enrichers. Nothing keeps raw YAML, so neither
    `repr` nor logging of the configuration can show a secret."""
    errors: list[str] = []
    file = read_config_file(path) if path is not None else ConfigFile({}, {}, {})
    raw = _settings_from_file(file, errors)
    for setting in SETTINGS:
        for env_name in setting.env:
            value = environ.get(env_name, "")
            if value.strip():
                raw[setting.name] = (value, f"env {env_name}")

    values: dict[str, dict[str, Any]] = {section: {} for section in _SECTIONS}
    for name, (raw_value, where) in raw.items():
        setting = _BY_NAME[name]
        try:
            values[setting.section][setting.attr] = setting.parse(raw_value, environ)
        except ValueError as exc:
            errors.append(f"{where}: {name}: {exc}")
    typed = _typed_sections(file, environ, errors)
    if errors:
        raise ConfigError("\n".join(printable(error) for error in errors))

    config = WorkerConfig(
        kafka=dataclasses.replace(KafkaConfig(), **values["kafka"]),
        topics=dataclasses.replace(TopicsConfig(), **values["topics"]),
        app=dataclasses.replace(AppConfig(), **values["app"]),
        **typed,
    )
    errors.extend(_check_security(config.kafka, {name: where for name, (_, where) in raw.items()}))
    if errors:
        raise ConfigError("\n".join(printable(error) for error in errors))
    return config


def _typed_sections(
    file: ConfigFile, environ: Mapping[str, str], errors: list[str]
) -> dict[str, Any]:
    """`notifiers`, `delivery`, `enrichment` through their readers; each one's first error,
    located, goes to `errors`."""
    from streams.enrich.registry import parse_enrichment
    from streams.notifiers import NOTIFIER_TYPES
    from streams.notifiers.config import parse_notifier_specs

    readers: dict[str, Callable[[object], Any]] = {
        "notifiers": lambda data: tuple(parse_notifier_specs(data, NOTIFIER_TYPES, env=environ)),
        "delivery": parse_notify_settings,
        "enrichment": lambda data: parse_enrichment(data, env=environ),
    }
    typed: dict[str, Any] = {}
    for name, read in readers.items():
        try:
            value = file.read_section(name, read)
        except ConfigError as exc:
            errors.append(str(exc))
            continue
        if value is not None:
            typed[name] = value
    return typed


def _check_security(kafka: KafkaConfig, sources: Mapping[str, str]) -> list[str]:
    """Settings that only make sense together with the chosen security protocol."""
    errors: list[str] = []
    protocol = kafka.security_protocol
    protocol_where = sources.get("kafka.security_protocol", "default")
    sasl = protocol in {SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL}
    tls = protocol in {SecurityProtocol.SSL, SecurityProtocol.SASL_SSL}
    if sasl and kafka.sasl_username is None:
        errors.append(f"{protocol_where}: kafka.sasl_username: required with {protocol}")
    if sasl and kafka.sasl_password is None:
        errors.append(f"{protocol_where}: kafka.sasl_password: required with {protocol}")
    # Credentials or certificates the chosen protocol would silently ignore are a misconfiguration.
    unused = [] if sasl else ["sasl_mechanism", "sasl_username", "sasl_password"]
    unused += [] if tls else ["ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname"]
    for key in unused:
        name = f"kafka.{key}"
        if name in sources:
            errors.append(
                f"{sources[name]}: {name}: not used with kafka.security_protocol {protocol}"
            )
    if kafka.ssl_keyfile is not None and kafka.ssl_certfile is None:
        where = sources["kafka.ssl_keyfile"]
        errors.append(f"{where}: kafka.ssl_keyfile: needs kafka.ssl_certfile")
    return errors


def _settings_from_file(file: ConfigFile, errors: list[str]) -> dict[str, tuple[object, str]]:
    """`section.key -> (value, "path:line:col")` for the kafka/topics/app settings; unknown
    sections and keys (with a suggestion) and wrong shapes go to `errors`."""
    found: dict[str, tuple[object, str]] = {}
    known = _SECTIONS + _TYPED_SECTIONS
    for section in file.known_keys(file.data, "", known, errors):
        if section in _TYPED_SECTIONS:
            continue
        value = file.data[section]
        if value is None:
            continue
        if not isinstance(value, dict):
            errors.append(f"{file.at(section)}: {section}: must be a mapping of keys")
            continue
        keys = tuple(s.key for s in SETTINGS if s.section == section)
        for key in file.known_keys(value, f"{section}.", keys, errors):
            name = f"{section}.{key}"
            found[name] = (value[key], file.at(name))
    return found
