"""Trivy reports without Harbor: `trivy image --format json` files from a directory.

Each report is indexed under its `ArtifactName` and the `Metadata.RepoTags` and
`Metadata.RepoDigests` it lists. With `normalize: true` (default) every reference goes through
Docker's normalisation (see `_images`), so `nginx:1.25`, `docker.io/library/nginx:1.25` and
`index.docker.io/library/nginx:1.25` are one image; with `normalize: false` references are
compared as written (`repository:tag`, `repository@digest`). A digest match wins over a tag
match; when two reports name one image the newer `CreatedAt` wins. The directory is scanned
again every `reload_interval`; only files whose size or modification time changed are re-read.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import orjson

from streams._config_fields import Fields
from streams.enrich._images import ImageRef, image_from_incident, parse_image, present
from streams.enrich._sources import Refreshing
from streams.enrich.pipeline import EnricherContext
from streams.enrich.vulns import (
    Vulnerability,
    canonical_severity,
    cvss_score,
    summarize_vulnerabilities,
    text,
)

__all__ = [
    "TrivyIndex",
    "TrivyOptions",
    "TrivyReportsEnricher",
    "parse_trivy_report",
    "scan_directory",
    "trivy_keys",
]

log = logging.getLogger("streams.enrich")


def _score(item: Mapping[str, Any]) -> float | None:
    cvss = item.get("CVSS")
    if not isinstance(cvss, Mapping):
        return None
    preferred = cvss.get(item.get("SeveritySource")) or cvss.get("nvd")
    for source in [preferred, *cvss.values()]:
        if isinstance(source, Mapping):
            score = cvss_score(source.get("V3Score"))
            if score is not None:
                return score
    return None


def parse_trivy_report(data: object, top: int, source: str) -> dict[str, Any]:
    """The summary of one `trivy image --format json` report; ValueError if not one."""
    if not isinstance(data, Mapping) or not isinstance(data.get("ArtifactName"), str):
        raise ValueError(f"{source}: not a trivy JSON report (no ArtifactName)")
    vulns = []
    for result in data.get("Results") or ():
        for item in (result.get("Vulnerabilities") if isinstance(result, Mapping) else ()) or ():
            if not isinstance(item, Mapping):
                continue
            vulns.append(
                Vulnerability(
                    id=text(item, "VulnerabilityID"),
                    package=text(item, "PkgName"),
                    version=text(item, "InstalledVersion"),
                    fixed_version=text(item, "FixedVersion"),
                    severity=canonical_severity(item.get("Severity")),
                    score=_score(item),
                    link=text(item, "PrimaryURL") or None,
                )
            )
    trivy = data.get("Trivy")
    version = text(trivy, "Version") if isinstance(trivy, Mapping) else ""
    return {
        "status": "scanned",
        "image": data["ArtifactName"],
        "report": source,
        "scanner": {"name": "Trivy", "vendor": "Aqua Security", "version": version},
        "scanned_at": text(data, "CreatedAt") or None,
        **summarize_vulnerabilities(vulns, top),
    }


def trivy_keys(data: Mapping[str, Any], normalize: bool) -> set[str]:
    """Every reference a report answers for."""
    names = [data.get("ArtifactName")]
    metadata = data.get("Metadata")
    if isinstance(metadata, Mapping):
        for key in ("RepoTags", "RepoDigests"):
            values = metadata.get(key)
            if isinstance(values, list):
                names.extend(values)
    keys: set[str] = set()
    for name in names:
        if not isinstance(name, str) or not name.strip():
            continue
        if not normalize:
            keys.add(name.strip())
            continue
        image = parse_image(name)
        if image is None:
            continue
        digest_key = image.digest_key()
        if digest_key:
            keys.add(digest_key)
        if image.tag or not image.digest:
            keys.add(image.tag_key())
    return keys


@dataclass
class TrivyIndex:
    """Reports by reference; `files` remembers (size, mtime) and the parse of each file."""

    by_key: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, tuple[tuple[int, int], list[str], dict[str, Any] | None]] = field(
        default_factory=dict
    )
    errors: list[str] = field(default_factory=list)


def scan_directory(directory: Path, previous: TrivyIndex, top: int, normalize: bool) -> TrivyIndex:
    """Re-read the changed `*.json` files of `directory`; raises OSError if it is unreadable."""
    index = TrivyIndex()
    for path in sorted(directory.glob("*.json")):
        try:
            stat = path.stat()
        except OSError:
            continue
        signature = (stat.st_size, stat.st_mtime_ns)
        known = previous.files.get(path.name)
        if known is not None and known[0] == signature:
            index.files[path.name] = known
            continue
        try:
            data = orjson.loads(path.read_bytes())
            summary = parse_trivy_report(data, top, path.name)
            keys = sorted(trivy_keys(data, normalize))
        except (OSError, ValueError) as exc:
            index.errors.append(f"{path.name}: {exc}")
            index.files[path.name] = (signature, [], None)
            continue
        index.files[path.name] = (signature, keys, summary)
    for _signature, file_keys, parsed in index.files.values():
        if parsed is None:
            continue
        for key in file_keys:
            current = index.by_key.get(key)
            if current is None or (parsed["scanned_at"] or "") > (current["scanned_at"] or ""):
                index.by_key[key] = parsed
    return index


@dataclass(frozen=True, slots=True)
class TrivyOptions:
    """The `trivy:` section of a trivy enricher."""

    directory: str
    top: int = 5
    normalize: bool = True
    reload_interval: float = 30.0


class TrivyReportsEnricher:
    """`enrichment.<name>`: the Trivy report summary of the incident's image."""

    default_timeout: ClassVar[float] = 2.0
    late: ClassVar[bool] = False

    def __init__(
        self,
        name: str,
        directory: str,
        context: EnricherContext,
        *,
        top: int = 5,
        normalize: bool = True,
        reload_interval: float = 30.0,
    ) -> None:
        self.name = name
        self.directory = Path(directory)
        self.top = top
        self.normalize = normalize
        self._metrics = context.metrics
        self._index = TrivyIndex()
        self._reports: Refreshing[TrivyIndex] = Refreshing(
            f"trivy reports in {directory}",
            self._load,
            reload_interval,
            context.clock,
            self._count_error,
        )

    @classmethod
    def parse_options(cls, options: Fields) -> TrivyOptions:
        parsed = TrivyOptions(
            directory=str(options.string("directory")),
            top=options.integer("top", 5),
            normalize=options.boolean("normalize", True),
            reload_interval=options.seconds("reload_interval", 30.0),
        )
        options.finish()
        return parsed

    @classmethod
    def create(
        cls, name: str, config: TrivyOptions, context: EnricherContext
    ) -> TrivyReportsEnricher:
        return cls(
            name,
            config.directory,
            context,
            top=config.top,
            normalize=config.normalize,
            reload_interval=config.reload_interval,
        )

    @classmethod
    def from_options(
        cls, name: str, options: Fields, context: EnricherContext
    ) -> TrivyReportsEnricher:
        return cls.create(name, cls.parse_options(options), context)

    async def enrich(self, incident: Mapping[str, Any]) -> dict[str, Any]:
        image = image_from_incident(incident)
        if image is None:
            return {"status": "no image"}
        index = await self._reports.get()
        for key in self._lookup_keys(image, incident):
            summary = index.by_key.get(key)
            if summary is not None:
                return copy.deepcopy(summary)
        return {"status": "unknown image", "image": str(image)}

    async def close(self) -> None:
        await self._reports.close()

    def _lookup_keys(self, image: ImageRef, incident: Mapping[str, Any]) -> list[str]:
        if self.normalize:
            return [key for key in (image.digest_key(), image.tag_key()) if key]
        context = incident.get("context") or {}
        repository = present(context.get("container.image.repository")) or ""
        keys = [f"{repository}@{image.digest}"] if image.digest else []
        keys.append(f"{repository}:{image.tag}" if image.tag else repository)
        return keys

    async def _load(self) -> TrivyIndex:
        if not os.path.isdir(self.directory):
            raise OSError(f"{self.directory} is not a directory")
        index = await asyncio.to_thread(
            scan_directory, self.directory, self._index, self.top, self.normalize
        )
        for error in index.errors:  # only files that changed since the last scan
            log.warning("trivy report skipped: %s", error)
            self._count_error()
        self._index = index
        return index

    def _count_error(self) -> None:
        self._metrics.source_errors.labels(enricher=self.name).inc()
