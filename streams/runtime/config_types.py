"""Worker configuration: the typed values (`WorkerConfig` and its sections, with their defaults).

Read by `load_config` (streams/runtime/config.py), whose settings table is in
streams/runtime/config_settings.py; import them from streams.runtime.config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streams.core.durations import NS_PER_UNIT
from streams.core.engine import DEFAULT_MAX_STATE_ENTRIES
from streams.core.events import MAX_EVENT_BYTES
from streams.runtime.notify_settings import NotifySettings
from streams.secrets import Secret

if TYPE_CHECKING:
    from streams.enrich.registry import EnrichmentConfig
    from streams.notifiers.base import NotifierSpec


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
