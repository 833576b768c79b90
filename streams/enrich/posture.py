"""Cluster posture of the incident's node: failed CIS checks (kube-bench) and exposure
(kube-hunter), from files or http(s) URLs refreshed in the background.

kube-bench results do not name the node they ran on, so each source says it: a `kube_bench`
entry `{node, source}`, or one file per node named `<node>.json` in `kube_bench_dir`. The
incident's node is `k8s.node.name` (context, or an event's output fields; `k8smeta.node.name`
too), else its `hostname`: run Falco with `FALCO_HOSTNAME` set to the node name (the Falco Helm
chart sets it from `spec.nodeName`). Names compare case-insensitively, and a short name matches
its FQDN. kube-hunter findings match when the host part of their `location` (`10.0.0.5:10250`)
is the node's name or one of the addresses listed for it under `nodes`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import orjson

from streams.enrich._images import present
from streams.enrich._options import Options
from streams.enrich._sources import Refreshing, SourceReader
from streams.enrich.pipeline import EnricherContext
from streams.errors import ConfigError
from streams.secrets import Secret

__all__ = [
    "PostureData",
    "PostureEnricher",
    "PostureOptions",
    "incident_node",
    "parse_kube_bench",
    "parse_kube_hunter",
]

_MAX_TEXT = 200
_NODE_FIELDS = ("k8s.node.name", "k8smeta.node.name")


def _clip(value: object) -> str:
    text = str(value or "").strip()
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


def parse_kube_bench(data: object, source: str) -> dict[str, Any]:
    """Failed and warned checks of one `kube-bench --json` output: `{"Controls": [...],
    "Totals": {...}}`, a bare list of controls, or one controls object."""
    if isinstance(data, Mapping) and isinstance(data.get("Controls"), list):
        controls = data["Controls"]
    elif isinstance(data, list):
        controls = data
    elif isinstance(data, Mapping) and "tests" in data:
        controls = [data]
    else:
        raise ValueError(f"{source}: not kube-bench JSON output (no Controls)")
    failed: list[dict[str, Any]] = []
    warned = passed = 0
    versions: set[str] = set()
    for control in controls:
        if not isinstance(control, Mapping):
            continue
        if control.get("version"):
            versions.add(str(control["version"]))
        for group in control.get("tests") or ():
            for check in (group.get("results") if isinstance(group, Mapping) else ()) or ():
                if not isinstance(check, Mapping):
                    continue
                status = str(check.get("status", "")).upper()
                if status == "PASS":
                    passed += 1
                elif status == "WARN":
                    warned += 1
                elif status == "FAIL":
                    failed.append(
                        {
                            "id": str(check.get("test_number", "")),
                            "desc": _clip(check.get("test_desc")),
                            "section": str(group.get("section", "")),
                            "node_type": str(control.get("node_type", "")),
                            "scored": bool(check.get("scored", False)),
                            "remediation": _clip(check.get("remediation")),
                        }
                    )
    return {
        "benchmark": ", ".join(sorted(versions)) or None,
        "failed": failed,
        "warned": warned,
        "passed": passed,
    }


def parse_kube_hunter(data: object, source: str) -> list[dict[str, Any]]:
    """The findings of one `kube-hunter --report json` report."""
    if not isinstance(data, Mapping) or not isinstance(data.get("vulnerabilities"), list):
        raise ValueError(f"{source}: not a kube-hunter JSON report (no vulnerabilities)")
    kb = data.get("kburl") if isinstance(data.get("kburl"), str) else None
    findings = []
    for item in data["vulnerabilities"]:
        if not isinstance(item, Mapping):
            continue
        vid = str(item.get("vid", ""))
        finding = {
            "vid": vid,
            "vulnerability": _clip(item.get("vulnerability")),
            "category": str(item.get("category", "")),
            "severity": str(item.get("severity", "")).lower(),
            "location": str(item.get("location", "")),
            "hunter": str(item.get("hunter", "")),
            "evidence": _clip(item.get("evidence")),
        }
        if kb and vid and vid != "None":
            finding["kb"] = kb.replace("{vid}", vid.lower())
        findings.append(finding)
    return findings


def _location_host(location: str) -> str:
    host, sep, port = location.rpartition(":")
    return (host if sep and port.isdigit() else location).strip("[]").lower()


def _names(name: str) -> set[str]:
    lowered = name.lower()
    return {lowered, lowered.split(".", 1)[0]}


def incident_node(incident: Mapping[str, Any]) -> str | None:
    context = incident.get("context")
    context = context if isinstance(context, Mapping) else {}
    for field_name in _NODE_FIELDS:
        node = present(context.get(field_name))
        if node:
            return node
    for event in incident.get("events") or ():
        fields = event.get("output_fields") if isinstance(event, Mapping) else None
        if isinstance(fields, Mapping):
            for field_name in _NODE_FIELDS:
                node = present(fields.get(field_name))
                if node:
                    return node
    return present(context.get("hostname"))


@dataclass(frozen=True, slots=True)
class PostureData:
    cis: dict[str, dict[str, Any]]  # lower-case node name (and short name) -> parse
    findings: list[dict[str, Any]]
    errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PostureOptions:
    """The `posture:` section of a posture enricher; `token` is a Secret."""

    kube_bench: tuple[tuple[str, str], ...] = ()
    kube_bench_dir: str | None = None
    kube_hunter: tuple[str, ...] = ()
    nodes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    refresh: float = 300.0
    max_checks: int = 20
    max_findings: int = 10
    request_timeout: float = 5.0
    token: Secret | None = None


class PostureEnricher:
    """`enrichment.<name>`: `cis` (failed checks of the node) and `exposure` (findings)."""

    default_timeout: ClassVar[float] = 2.0
    late: ClassVar[bool] = False

    def __init__(
        self,
        name: str,
        context: EnricherContext,
        *,
        kube_bench: Iterable[tuple[str, str]] = (),
        kube_bench_dir: str | None = None,
        kube_hunter: Iterable[str] = (),
        nodes: Mapping[str, Iterable[str]] | None = None,
        refresh: float = 300.0,
        max_checks: int = 20,
        max_findings: int = 10,
        reader: SourceReader | None = None,
    ) -> None:
        self.name = name
        self._bench = list(kube_bench)
        self._bench_dir = Path(kube_bench_dir) if kube_bench_dir else None
        self._hunter = list(kube_hunter)
        self._addresses = {
            node.lower(): {a.lower() for a in addresses}
            for node, addresses in (nodes or {}).items()
        }
        self._max_checks = max_checks
        self._max_findings = max_findings
        self._reader = reader or SourceReader(timeout=5.0)
        self._metrics = context.metrics
        self._last_good: dict[str, Any] = {}
        self._data: Refreshing[PostureData] = Refreshing(
            # each failed source is counted in `_read`
            "posture reports",
            self._load,
            refresh,
            context.clock,
            lambda: None,
        )

    @classmethod
    def parse_options(cls, options: Options) -> PostureOptions:
        bench = []
        for item in options.items("kube_bench"):
            bench.append((str(item.string("node")), str(item.string("source"))))
            item.finish()
        nodes_raw = options.raw("nodes", {})
        if not isinstance(nodes_raw, Mapping):
            raise ConfigError(f"{options.key('nodes')}: expected a mapping node -> addresses")
        nodes_section = options.section("nodes")
        nodes = tuple((str(node), nodes_section.strings(str(node))) for node in nodes_raw)
        parsed = PostureOptions(
            kube_bench=tuple(bench),
            kube_bench_dir=options.string("kube_bench_dir", None),
            kube_hunter=options.strings("kube_hunter"),
            nodes=nodes,
            refresh=options.seconds("refresh", 300.0),
            max_checks=options.integer("max_checks", 20),
            max_findings=options.integer("max_findings", 10),
            request_timeout=options.seconds("request_timeout", 5.0),
            token=options.secret("token", required=False),
        )
        options.finish()
        if not parsed.kube_bench and not parsed.kube_bench_dir and not parsed.kube_hunter:
            raise ConfigError(f"{options.path}: give kube_bench, kube_bench_dir or kube_hunter")
        return parsed

    @classmethod
    def create(
        cls, name: str, config: PostureOptions, context: EnricherContext
    ) -> PostureEnricher:
        token = config.token
        headers = {"Authorization": f"Bearer {token.reveal()}"} if token is not None else None
        return cls(
            name,
            context,
            kube_bench=config.kube_bench,
            kube_bench_dir=config.kube_bench_dir,
            kube_hunter=config.kube_hunter,
            nodes=dict(config.nodes),
            refresh=config.refresh,
            max_checks=config.max_checks,
            max_findings=config.max_findings,
            reader=SourceReader(config.request_timeout, headers),
        )

    @classmethod
    def from_options(cls, name: str, options: Options, context: EnricherContext) -> PostureEnricher:
        return cls.create(name, cls.parse_options(options), context)

    async def enrich(self, incident: Mapping[str, Any]) -> dict[str, Any]:
        node = incident_node(incident)
        if node is None:
            return {"status": "no node"}
        data = await self._data.get()
        result: dict[str, Any] = {"node": node}
        if self._bench or self._bench_dir is not None:
            result["cis"] = self._cis(data, node)
        if self._hunter:
            result["exposure"] = self._exposure(data, node)
        if data.errors:
            result["source_errors"] = list(data.errors)
        return result

    async def close(self) -> None:
        await self._data.close()
        await self._reader.close()

    def _cis(self, data: PostureData, node: str) -> dict[str, Any]:
        parsed = next((data.cis[n] for n in _names(node) if n in data.cis), None)
        if parsed is None:
            return {"status": "no results for node"}
        failed = parsed["failed"]
        return {
            "benchmark": parsed["benchmark"],
            "failed": len(failed),
            "warned": parsed["warned"],
            "passed": parsed["passed"],
            "checks": failed[: self._max_checks],
            "truncated": max(len(failed) - self._max_checks, 0),
        }

    def _exposure(self, data: PostureData, node: str) -> dict[str, Any]:
        hosts = _names(node)
        for name in list(hosts):
            hosts |= self._addresses.get(name, set())
        matched = [f for f in data.findings if _location_host(f["location"]) in hosts]
        by_severity: dict[str, int] = {}
        for finding in matched:
            by_severity[finding["severity"]] = by_severity.get(finding["severity"], 0) + 1
        return {
            "count": len(matched),
            "by_severity": by_severity,
            "findings": matched[: self._max_findings],
        }

    async def _load(self) -> PostureData:
        sources: list[tuple[str, str, str]] = [("bench", node, src) for node, src in self._bench]
        if self._bench_dir is not None:
            found = await asyncio.to_thread(sorted, self._bench_dir.glob("*.json"))
            sources.extend(("bench", path.name[: -len(".json")], str(path)) for path in found)
        sources.extend(("hunter", "", src) for src in self._hunter)
        parsed = await asyncio.gather(*(self._read(*source) for source in sources))
        cis: dict[str, dict[str, Any]] = {}
        findings: list[dict[str, Any]] = []
        errors = []
        for (kind, node, _location), (value, error) in zip(sources, parsed, strict=True):
            if error:
                errors.append(error)
            if value is None:
                continue
            if kind == "hunter":
                findings.extend(value)
            else:
                for name in _names(node):
                    cis.setdefault(name, value)
        if errors and len(errors) == len(sources) and not self._last_good:
            raise OSError("; ".join(errors))
        return PostureData(cis, findings, tuple(errors))

    async def _read(self, kind: str, node: str, location: str) -> tuple[Any, str | None]:
        """(parsed, error): on error, the last good parse of this source (if any)."""
        key = f"{kind}:{node}:{location}"
        try:
            data = orjson.loads(await self._reader.read(location))
            value: Any = (
                parse_kube_bench(data, location)
                if kind == "bench"
                else parse_kube_hunter(data, location)
            )
        except Exception as exc:  # any failure of one source must not hide the others
            self._count_error()
            return self._last_good.get(key), f"{location}: {exc}"
        self._last_good[key] = value
        return value, None

    def _count_error(self) -> None:
        self._metrics.source_errors.labels(enricher=self.name).inc()
