"""`falco-correlator doctor --config FILE`: check a deployment the way the worker will meet it.

One line per check, `OK`, `WARN` or `FAIL`, with what to fix; exit 1 when any check failed.
In order: every secret reference of the file (which are missing, never their values), the
configuration, the rules, the state directory, Kafka (topics, partitions, the consumer group,
the last events), each notifier's cheapest authenticated call (Slack `auth.test`; webhooks
only with `--send-test`), each enricher once on an incident built from a recent event, Harbor's
projects, and whether Harbor serves the registries of the images seen in the recent events.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, TextIO

import yaml

from streams.core.loader import load_rules
from streams.errors import ConfigError, RuleLoadError
from streams.runtime.config import StoreKind, WorkerConfig, load_config
from streams.secrets import read_secret

__all__ = ["Check", "Doctor", "Status", "run_doctor"]

_REFERENCE_MARK = "${"
# Keys whose values are credentials: a literal there is a secret written into a file.
_SECRET_KEYS = frozenset(
    {"sasl_password", "password", "token", "hmac_secret", "api_key", "webhook_url"}
)
_RECENT_EVENTS = 50


class Status(StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class Check:
    status: Status
    area: str
    message: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status.value:<4}  {self.area}: {self.message}"
        return f"{text} -> {self.fix}" if self.fix else text


@dataclass
class Doctor:
    """Collects checks and prints each as it is made (a slow broker shows where it waits)."""

    out: TextIO = sys.stdout
    checks: list[Check] = field(default_factory=list)

    def add(self, status: Status, area: str, message: str, fix: str = "") -> Check:
        check = Check(status, area, message, fix)
        self.checks.append(check)
        print(check.line(), file=self.out, flush=True)
        return check

    def ok(self, area: str, message: str) -> None:
        self.add(Status.OK, area, message)

    def warn(self, area: str, message: str, fix: str = "") -> None:
        self.add(Status.WARN, area, message, fix)

    def fail(self, area: str, message: str, fix: str = "") -> None:
        self.add(Status.FAIL, area, message, fix)

    @property
    def failed(self) -> bool:
        return any(c.status is Status.FAIL for c in self.checks)


# --- secrets -----------------------------------------------------------------------------------


def _walk(value: Any, path: str) -> list[tuple[str, Any]]:
    if isinstance(value, Mapping):
        found: list[tuple[str, Any]] = []
        for key, item in value.items():
            found.extend(_walk(item, f"{path}.{key}" if path else str(key)))
        return found
    if isinstance(value, list):
        return [pair for i, item in enumerate(value) for pair in _walk(item, f"{path}[{i}]")]
    return [(path, value)]


_PLACEHOLDER = "https://secret-missing.invalid/"


def check_secrets(doctor: Doctor, raw: Any, env: Mapping[str, str]) -> dict[str, str]:
    """Every `${env:...}` / `${file:...}` of the file, resolved; values are never printed.

    Returns a placeholder for each missing environment variable: the configuration is then
    loaded with them, so one missing secret (reported here) does not hide every other check."""
    references = 0
    placeholders: dict[str, str] = {}
    for path, value in _walk(raw, ""):
        key = path.rsplit(".", 1)[-1]
        if not isinstance(value, str):
            continue
        stripped = value.strip()
        if stripped.startswith(_REFERENCE_MARK) and stripped.endswith("}"):
            references += 1
            try:
                secret = read_secret(stripped, env)
            except ValueError as exc:
                where = "the pod's environment (Helm: secretEnv)" if "env:" in stripped else (
                    "the mounted file (Helm: extraVolumes)"
                )
                doctor.fail(f"secret {path}", str(exc), f"provide it in {where}")
                if stripped.startswith("${env:"):
                    placeholders[stripped[len("${env:") : -1].strip()] = _PLACEHOLDER
            else:
                doctor.ok(f"secret {path}", f"resolved from {secret.source}")
        elif _REFERENCE_MARK in value:
            doctor.warn(
                f"secret {path}",
                "contains a reference inside other text, so it is used literally",
                "a reference must be the whole value: put the whole value in the variable",
            )
        elif key in _SECRET_KEYS and value:
            doctor.warn(
                f"secret {path}",
                "is written in the configuration file",
                f'move it to a Secret and write "${{env:NAME}}" for {key}',
            )
    if references == 0:
        doctor.ok("secrets", "the configuration references no secrets")
    _check_harbor_credentials(doctor, raw, env)
    return placeholders


def _harbor_sections(raw: Any) -> list[tuple[str, Mapping[str, Any]]]:
    if not isinstance(raw, Mapping):
        return []
    enrichment = raw.get("enrichment")
    items = enrichment.get("enrichers") if isinstance(enrichment, Mapping) else enrichment
    found = []
    for index, item in enumerate(items if isinstance(items, list) else []):
        if isinstance(item, Mapping) and item.get("type") == "harbor":
            section = item.get("harbor")
            found.append((f"enrichment[{index}].harbor", section if isinstance(section, Mapping)
                           else {}))
    return found


def _check_harbor_credentials(doctor: Doctor, raw: Any, env: Mapping[str, str]) -> None:
    # The variables are only read when the configuration names them: a robot account in the
    # environment but not in `username`/`password` means Harbor is called without credentials.
    for path, section in _harbor_sections(raw):
        if "username" not in section and (env.get("HARBOR_ROBOT_NAME") or env.get(
            "HARBOR_ROBOT_SECRET"
        )):
            doctor.warn(
                path,
                "HARBOR_ROBOT_NAME/HARBOR_ROBOT_SECRET are set but the configuration does not "
                "use them, so Harbor is called anonymously",
                'add username: "${env:HARBOR_ROBOT_NAME}" and password: '
                '"${env:HARBOR_ROBOT_SECRET}"',
            )


# --- configuration, rules, state -----------------------------------------------------------------


def check_config(
    doctor: Doctor, path: str | None, env: Mapping[str, str], rules: Sequence[str] | None
) -> WorkerConfig | None:
    try:
        config = load_config(path, env)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            doctor.fail("config", line, "see docs/configuration.md")
        return None
    if rules:
        config = replace(config, app=replace(config.app, rules=tuple(rules)))
    doctor.ok("config", f"{path or 'defaults'} loads (app {config.app.id})")
    return config


def check_rules(doctor: Doctor, config: WorkerConfig) -> None:
    try:
        ruleset = load_rules(config.app.rules)
    except RuleLoadError as exc:
        for error in exc.errors[:10]:
            doctor.fail("rules", str(error), "falco-correlator validate shows every error")
        if len(exc.errors) > 10:
            doctor.fail("rules", f"... and {len(exc.errors) - 10} more error(s)")
        return
    if not ruleset.correlations:
        doctor.warn("rules", f"no enabled correlation in {', '.join(config.app.rules)}",
                    "check app.rules")
        return
    doctor.ok(
        "rules",
        f"{len(ruleset.correlations)} correlations from {len(ruleset.files)} file(s), "
        f"ruleset {ruleset.digest}",
    )


def local_state(config: WorkerConfig) -> list[Path]:
    """Files of local table state under app.data_dir (RocksDB store only)."""
    root = Path(config.app.data_dir).expanduser()  # <data_dir>/<app id>/..., or 0.1's layout
    if config.app.store is not StoreKind.ROCKSDB or not root.is_dir():
        return []
    first = next((p for p in root.rglob("*") if p.is_file()), None)
    return [] if first is None else [first]


def check_state_dir(doctor: Doctor, config: WorkerConfig) -> None:
    if config.app.store is not StoreKind.ROCKSDB:
        doctor.ok("state", "memory store: nothing on disk (state restores from the changelog)")
        return
    root = Path(config.app.data_dir)
    probe = root if root.exists() else next((p for p in root.parents if p.exists()), root)
    if not os.access(probe, os.W_OK):
        doctor.fail(
            "state", f"app.data_dir {root} is not writable by uid {os.getuid()}",
            "mount a writable volume there (Helm: persistence) or fix its owner",
        )
        return
    doctor.ok("state", f"app.data_dir {root} is writable")


# --- entry point ---------------------------------------------------------------------------------


def run_doctor(
    *,
    config_path: str | None,
    rules: Sequence[str] | None = None,
    send_test: bool = False,
    timeout: float = 10.0,
    env: Mapping[str, str] | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Run every check; 0 when none failed, 1 otherwise."""
    environ = dict(os.environ if env is None else env)
    doctor = Doctor(out)
    raw: Any = None
    if config_path is not None:
        try:
            raw = yaml.safe_load(Path(config_path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            doctor.fail("config", f"cannot read {config_path}: {exc}")
            return 1
    placeholders = check_secrets(doctor, raw, environ)
    # missing secrets were reported: the other checks run with placeholders for them
    config = check_config(doctor, config_path, {**environ, **placeholders}, rules)
    if config is not None:
        check_rules(doctor, config)
        check_state_dir(doctor, config)
        from streams.runtime._doctor_kafka import check_kafka
        from streams.runtime._doctor_remote import check_enrichers, check_notifiers

        events = check_kafka(doctor, config, timeout)
        asyncio.run(check_notifiers(doctor, config, environ, send_test=send_test, timeout=timeout))
        asyncio.run(check_enrichers(doctor, config, environ, events, timeout=timeout))
    counts = {status: sum(c.status is status for c in doctor.checks) for status in Status}
    summary = ", ".join(f"{counts[s]} {s.value}" for s in Status)
    print(f"doctor: {summary}", file=out)
    return 1 if doctor.failed else 0

