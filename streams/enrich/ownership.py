"""Ownership: who owns what an incident touches, from YAML or CSV tables.

A row maps a key of one kind to owner fields (`owner`, `team`, `environment`, `criticality`,
`slack_channel`, and any other column, kept as text):

- `pod_prefix`: the pod name starts with the key (the longest prefix wins);
- `image`: the image repository, normalised as for Trivy (`nginx` = `docker.io/library/nginx`);
- `namespace`: the Kubernetes namespace;
- `hostname`: the node / host name.

`image`, `namespace` and `hostname` keys may be shell patterns (`prod-*`); an exact key wins over
a pattern, patterns are tried in table order. Kinds are tried in `precedence` order (default
pod_prefix, image, namespace, hostname): the first match gives the whole answer.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, ClassVar

import yaml

from streams._config_fields import Fields
from streams._text import short
from streams.enrich._images import image_from_incident, parse_image, present
from streams.enrich._sources import Refreshing
from streams.enrich.pipeline import EnricherContext
from streams.errors import ConfigError

__all__ = [
    "KINDS",
    "OwnerRow",
    "OwnershipEnricher",
    "OwnershipOptions",
    "OwnershipTable",
    "load_tables",
]

KINDS: tuple[str, ...] = ("pod_prefix", "image", "namespace", "hostname")
_YAML_SECTIONS = {
    "pod_prefixes": "pod_prefix",
    "images": "image",
    "namespaces": "namespace",
    "hostnames": "hostname",
}
_PATTERN_CHARS = frozenset("*?[")


@dataclass(frozen=True, slots=True)
class OwnerRow:
    kind: str
    key: str
    fields: Mapping[str, str]
    table: str

    @property
    def is_pattern(self) -> bool:
        return self.kind != "pod_prefix" and any(c in _PATTERN_CHARS for c in self.key)


@dataclass
class OwnershipTable:
    rows: dict[str, list[OwnerRow]] = field(default_factory=lambda: {k: [] for k in KINDS})

    def add(self, row: OwnerRow) -> None:
        self.rows[row.kind].append(row)

    def match(self, kind: str, value: str) -> OwnerRow | None:
        rows = self.rows[kind]
        if kind == "pod_prefix":
            found = [row for row in rows if value.startswith(row.key)]
            return max(found, key=lambda row: len(row.key), default=None)
        exact = next((r for r in rows if not r.is_pattern and r.key == value), None)
        if exact is not None:
            return exact
        return next((r for r in rows if r.is_pattern and fnmatchcase(value, r.key)), None)


def _row(kind: str, key: object, values: object, where: str, table: str) -> OwnerRow:
    if kind not in KINDS:
        raise ValueError(f"{where}: unknown kind {short(kind)} (known: {', '.join(KINDS)})")
    if not isinstance(key, str) or not key.strip():
        raise ValueError(f"{where}: the key must be a non-empty string")
    if not isinstance(values, Mapping):
        raise ValueError(f"{where}: expected a mapping of owner fields")
    fields = {
        str(name): str(value).strip()
        for name, value in values.items()
        if value is not None and str(value).strip()
    }
    key = key.strip()
    if kind == "image" and not any(c in _PATTERN_CHARS for c in key):
        image = parse_image(key)
        key = image.repository if image is not None else key
    if kind == "hostname":
        key = key.lower()
    return OwnerRow(kind, key, fields, table)


def _parse_yaml(text: str, name: str) -> list[OwnerRow]:
    data = yaml.safe_load(text)
    rows: list[OwnerRow] = []
    if isinstance(data, list):
        for index, item in enumerate(data):
            where = f"{name}[{index}]"
            if not isinstance(item, Mapping):
                raise ValueError(f"{where}: expected a mapping with kind, key and owner fields")
            values = {k: v for k, v in item.items() if k not in ("kind", "key")}
            rows.append(_row(str(item.get("kind")), item.get("key"), values, where, name))
        return rows
    if not isinstance(data, Mapping):
        raise ValueError(f"{name}: expected sections {', '.join(_YAML_SECTIONS)} or a list")
    for section, entries in data.items():
        kind = _YAML_SECTIONS.get(str(section))
        if kind is None:
            raise ValueError(f"{name}: unknown section {short(section)}")
        if not isinstance(entries, Mapping):
            raise ValueError(f"{name}: {section}: expected a mapping key -> owner fields")
        for key, values in entries.items():
            rows.append(_row(kind, key, values, f"{name}: {section}.{key}", name))
    return rows


def _parse_csv(text: str, name: str) -> list[OwnerRow]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not {"kind", "key"} <= set(reader.fieldnames):
        raise ValueError(f"{name}: the header must have kind and key columns")
    rows = []
    for record in reader:
        values = {k: v for k, v in record.items() if k not in ("kind", "key") and k}
        where = f"{name}:{reader.line_num}"
        rows.append(_row((record["kind"] or "").strip(), record["key"], values, where, name))
    return rows


def load_tables(paths: Iterable[str]) -> OwnershipTable:
    """Read every table, in order; ValueError/OSError names the file (and line or key)."""
    table = OwnershipTable()
    for location in paths:
        path = Path(location)
        text = path.read_text(encoding="utf-8")
        parse = _parse_csv if path.suffix.lower() == ".csv" else _parse_yaml
        try:
            rows = parse(text, path.name)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path.name}: invalid YAML: {exc}") from None
        for row in rows:
            table.add(row)
    return table


@dataclass(frozen=True, slots=True)
class OwnershipOptions:
    """The `ownership:` section of an ownership enricher (`key`: where, for errors)."""

    tables: tuple[str, ...]
    precedence: tuple[str, ...] = KINDS
    reload_interval: float = 30.0
    key: str = "tables"


class OwnershipEnricher:
    """`enrichment.<name>`: the owner fields of the first matching row, and what matched."""

    default_timeout: ClassVar[float] = 1.0
    late: ClassVar[bool] = False

    def __init__(
        self,
        name: str,
        tables: Sequence[str],
        context: EnricherContext,
        *,
        precedence: Sequence[str] = KINDS,
        reload_interval: float = 30.0,
        initial: OwnershipTable | None = None,
    ) -> None:
        self.name = name
        self.tables = list(tables)
        self.precedence = tuple(precedence)
        self._metrics = context.metrics
        self._data: Refreshing[OwnershipTable] = Refreshing(
            "ownership tables", self._load, reload_interval, context.clock, self._count_error
        )
        if initial is not None:
            self._data.prime(initial)

    @classmethod
    def parse_options(cls, options: Fields) -> OwnershipOptions:
        tables = options.strings("tables")
        precedence = options.strings("precedence") or KINDS
        reload_interval = options.seconds("reload_interval", 30.0)
        options.finish()
        if not tables:
            raise ConfigError(f"{options.key('tables')}: required (YAML or CSV files)")
        for index, kind in enumerate(precedence):
            if kind not in KINDS:
                raise ConfigError(
                    f"{options.key('precedence')}[{index}]: unknown kind {short(kind)} "
                    f"(known: {', '.join(KINDS)})"
                )
        return OwnershipOptions(tables, precedence, reload_interval, options.key("tables"))

    @classmethod
    def create(
        cls, name: str, config: OwnershipOptions, context: EnricherContext
    ) -> OwnershipEnricher:
        try:  # a broken table stops the worker at start, not at the first incident
            initial = load_tables(config.tables)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{config.key}: {exc}") from None
        return cls(
            name,
            config.tables,
            context,
            precedence=config.precedence,
            reload_interval=config.reload_interval,
            initial=initial,
        )

    @classmethod
    def from_options(
        cls, name: str, options: Fields, context: EnricherContext
    ) -> OwnershipEnricher:
        return cls.create(name, cls.parse_options(options), context)

    async def enrich(self, incident: Mapping[str, Any]) -> dict[str, Any]:
        table = await self._data.get()
        context = incident.get("context")
        context = context if isinstance(context, Mapping) else {}
        image = image_from_incident(incident)
        values = {
            "pod_prefix": present(context.get("k8s.pod.name")),
            "image": image.repository if image is not None else None,
            "namespace": present(context.get("k8s.ns.name")),
            "hostname": (present(context.get("hostname")) or "").lower() or None,
        }
        for kind in self.precedence:
            value = values[kind]
            row = table.match(kind, value) if value else None
            if row is not None:
                return {
                    **row.fields,
                    "matched_by": {"kind": kind, "key": row.key, "table": row.table},
                }
        return {"status": "no owner"}

    async def close(self) -> None:
        await self._data.close()

    async def _load(self) -> OwnershipTable:
        return await asyncio.to_thread(load_tables, self.tables)

    def _count_error(self) -> None:
        self._metrics.source_errors.labels(enricher=self.name).inc()
