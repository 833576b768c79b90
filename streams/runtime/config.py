"""Worker configuration: one YAML file, then environment variables, which win.

Pure Python (no Faust), so the CLI and the tests build a `WorkerConfig` without a broker.
Every setting is described once in `SETTINGS` (section, key, environment variables, parser,
meaning); docs/configuration.md is the same table for people. Errors name the key and where the
value came from, e.g. `worker.yaml:4:14: app.lateness: invalid duration '10x': ...` or
`env FC_APP_LATENESS: app.lateness: ...`, and all of them are reported at once.

Modules: this one (loading: file, environment overrides, typed sections, checks across keys),
`config_settings` (the `SETTINGS` table and its parsers), `config_types` (`WorkerConfig` and its
sections). Import all of them from here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from streams._config_fields import ConfigFile, read_config_file
from streams._text import printable
from streams.errors import ConfigError
from streams.runtime.config_settings import SETTINGS, Setting
from streams.runtime.config_types import (
    AppConfig,
    KafkaConfig,
    LogFormat,
    LogLevel,
    SaslMechanism,
    SecurityProtocol,
    StoreKind,
    TopicsConfig,
    WorkerConfig,
)
from streams.runtime.notify_settings import parse_notify_settings
from streams.secrets import Secret

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
