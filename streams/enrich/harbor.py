"""Harbor (with its Trivy scanner): the vulnerability report of the incident's image.

`GET {url}/api/v2.0/projects/{project}/repositories/{repository}/artifacts/{reference}
/additions/vulnerabilities` answers a JSON object keyed by report MIME type; the native
report (`application/vnd.security.vulnerability.report; version=1.1`) has `generated_at`,
`scanner`, `severity` and `vulnerabilities` [{id, package, version, fix_version, severity,
description, links, preferred_cvss, ...}]. Repository names are URL-encoded twice, as Harbor
requires (`team/app` -> `team%252Fapp`). Results are cached per artifact; concurrent lookups of
one artifact share one request; a circuit breaker stops calls while Harbor is failing.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn
from urllib.parse import quote, urlsplit

import aiohttp
import orjson
from yarl import URL

from streams._text import short
from streams.enrich._images import ImageRef, image_from_incident, parse_image
from streams.enrich._options import Options
from streams.enrich._resilience import CircuitBreaker, TTLCache
from streams.enrich.pipeline import EnricherContext, EnrichmentError
from streams.enrich.vulns import (
    Vulnerability,
    canonical_severity,
    cvss_score,
    summarize_vulnerabilities,
    text,
)
from streams.errors import ConfigError
from streams.secrets import Secret

__all__ = ["REPORT_MIME_TYPES", "HarborConfig", "HarborEnricher", "ProjectRule", "harbor_path"]

# Preferred first: Harbor's native report, then the scanner adapter's raw Harbor report.
REPORT_MIME_TYPES = (
    "application/vnd.security.vulnerability.report; version=1.1",
    "application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.0",
)
_LINK = "{ui_url}/harbor/projects/{project_id}/repositories/{repository}/artifacts-tab"


@dataclass(frozen=True, slots=True)
class ProjectRule:
    """Images from `registry` (`*`: any) whose path starts with `prefix` live in Harbor
    project `project`, as the path after the prefix; without `project`, the first segment
    after the prefix is the project (Harbor's own `host/project/repo` naming)."""

    registry: str
    prefix: str = ""
    project: str | None = None
    project_id: int | None = None

    def resolve(self, image: ImageRef) -> tuple[str, str] | None:
        if self.registry not in ("*", image.registry):
            return None
        path = image.path
        if self.prefix:
            if not path.startswith(self.prefix + "/"):
                return None
            path = path[len(self.prefix) + 1 :]
        if self.project is not None:
            return self.project, path
        project, _, repository = path.partition("/")
        return (project, repository) if repository else None


@dataclass(frozen=True)
class HarborConfig:
    url: str
    ui_url: str
    username: Secret | None = None
    password: Secret | None = None
    rules: tuple[ProjectRule, ...] = ()
    top: int = 5
    cache_ttl: float = 300.0
    unknown_ttl: float = 60.0
    cache_size: int = 1024
    concurrency: int = 4
    request_timeout: float = 2.0
    failure_threshold: int = 5
    cooldown: float = 30.0
    ca_file: str | None = None
    verify_tls: bool = True

    @classmethod
    def from_options(cls, options: Options) -> HarborConfig:
        url = str(options.string("url")).rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"{options.key('url')}: expected an http(s) URL, got {short(url)}"
            )
        username = options.secret("username", required=False)
        password = options.secret("password", required=False)
        rules = [_parse_rule(item) for item in options.items("projects")]
        hosts = options.strings("hosts") or (parts.netloc.lower(),)
        rules.extend(ProjectRule(host.lower()) for host in hosts)
        config = cls(
            url=url,
            ui_url=str(options.string("ui_url", url)).rstrip("/"),
            username=username,
            password=password,
            rules=tuple(rules),
            top=options.integer("top", cls.top),
            cache_ttl=options.seconds("cache_ttl", cls.cache_ttl),
            unknown_ttl=options.seconds("unknown_ttl", cls.unknown_ttl),
            cache_size=options.integer("cache_size", cls.cache_size),
            concurrency=options.integer("concurrency", cls.concurrency),
            request_timeout=options.seconds("request_timeout", cls.request_timeout),
            failure_threshold=options.integer("failure_threshold", cls.failure_threshold),
            cooldown=options.seconds("cooldown", cls.cooldown),
            ca_file=options.string("ca_file", None),
            verify_tls=options.boolean("verify_tls", True),
        )
        options.finish()  # before the check that combines keys: `passwrd` is reported as itself
        if (username is None) != (password is None):
            missing = "password" if password is None else "username"
            raise ConfigError(f"{options.key(missing)}: username and password go together")
        return config

    def resolve(self, image: ImageRef) -> tuple[ProjectRule, str, str] | None:
        for rule in self.rules:
            found = rule.resolve(image)
            if found is not None:
                return rule, found[0], found[1]
        return None


def _parse_rule(item: Options) -> ProjectRule:
    registry = str(item.string("registry")).lower()
    prefix = str(item.raw("prefix", "")).strip("/")
    project = item.string("project", None)
    project_id = item.raw("project_id", None)
    if project_id is not None and (isinstance(project_id, bool) or not isinstance(project_id, int)):
        raise ConfigError(f"{item.key('project_id')}: expected an integer")
    item.finish()
    if registry != "*" and parse_image(f"{registry}/x/y") is None:
        raise ConfigError(f"{item.key('registry')}: not a registry host: {short(registry)}")
    return ProjectRule(registry, prefix, project, project_id)


def harbor_path(project: str, repository: str, reference: str) -> str:
    """The API path, encoded: the repository twice (`a/b` -> `a%252Fb`), as Harbor requires."""
    return (
        f"/api/v2.0/projects/{quote(project, safe='')}"
        f"/repositories/{quote(quote(repository, safe=''), safe='')}"
        f"/artifacts/{quote(reference, safe=':')}/additions/vulnerabilities"
    )


class HarborEnricher:
    """`enrichment.<name>`: the Harbor vulnerability summary of the incident's image."""

    default_timeout: ClassVar[float] = 2.0
    late: ClassVar[bool] = False

    def __init__(self, name: str, config: HarborConfig, context: EnricherContext) -> None:
        self.name = name
        self.config = config
        self._metrics = context.metrics
        self._cache: TTLCache[dict[str, Any]] = TTLCache(
            config.cache_ttl, config.cache_size, context.clock
        )
        self._breaker = CircuitBreaker(
            config.failure_threshold,
            config.cooldown,
            context.clock,
            lambda state: context.metrics.set_circuit(name, state),
        )
        self._last_failure = ""
        self._semaphore = asyncio.Semaphore(config.concurrency)
        self._inflight: dict[str, asyncio.Task[dict[str, Any]]] = {}
        self._project_ids: dict[str, int] = {
            rule.project: rule.project_id
            for rule in config.rules
            if rule.project is not None and rule.project_id is not None
        }
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def parse_options(cls, options: Options) -> HarborConfig:
        return HarborConfig.from_options(options)

    @classmethod
    def create(cls, name: str, config: HarborConfig, context: EnricherContext) -> HarborEnricher:
        return cls(name, config, context)

    @classmethod
    def from_options(cls, name: str, options: Options, context: EnricherContext) -> HarborEnricher:
        return cls.create(name, cls.parse_options(options), context)

    @property
    def circuit_state(self) -> str:
        return self._breaker.state

    async def enrich(self, incident: Mapping[str, Any]) -> dict[str, Any]:
        image = image_from_incident(incident)
        if image is None:
            return {"status": "no image"}
        target = self.config.resolve(image)
        if target is None:
            return {"status": "not in harbor", "image": str(image)}
        _rule, project, repository = target
        key = f"{project}/{repository}@{image.reference}"
        cached = self._cache.get(key)
        if cached is not None:
            self._metrics.cache_hits.labels(enricher=self.name).inc()
            return copy.deepcopy(cached)
        self._metrics.cache_misses.labels(enricher=self.name).inc()
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._lookup(key, image, project, repository))
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        # shielded: a caller that runs out of time leaves the answer to fill the cache
        return copy.deepcopy(await asyncio.shield(task))

    async def close(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _lookup(
        self, key: str, image: ImageRef, project: str, repository: str
    ) -> dict[str, Any]:
        if not self._breaker.allow():
            raise EnrichmentError(f"circuit open: Harbor unavailable ({self._last_failure})")
        try:
            async with self._semaphore:
                status, body = await self._get(harbor_path(project, repository, image.reference))
        except asyncio.CancelledError:
            self._breaker.release()
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._fail(f"request failed: {type(exc).__name__}: {exc}".rstrip(": "))
        base: dict[str, Any] = {
            "image": str(image),
            "project": project,
            "repository": repository,
            "reference": image.reference,
        }
        if status == 404:
            self._breaker.record_success()
            result = {**base, "status": "unknown image"}
            self._cache.put(key, result, self.config.unknown_ttl)
            return result
        if status in (401, 403):
            self._fail("unauthorized" if status == 401 else "forbidden")
        if status != 200:
            self._fail(f"HTTP {status}")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            self._fail("response is not JSON")
        self._breaker.record_success()
        result = {**base, **self._summary(data)}
        result["link"] = await self._link(project, repository, image, data)
        self._cache.put(key, result)
        return result

    def _fail(self, reason: str) -> NoReturn:
        self._last_failure = reason
        self._breaker.record_failure()
        raise EnrichmentError(reason)

    async def _get(self, path: str, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        if self._session is None:
            self._session = self._new_session()
        url = URL(self.config.url + path, encoded=True)
        request_headers = {
            "Accept": "application/json",
            "X-Accept-Vulnerabilities": ", ".join(REPORT_MIME_TYPES),
            **(headers or {}),
        }
        async with self._session.get(url, headers=request_headers) as response:
            return response.status, await response.read()

    def _new_session(self) -> aiohttp.ClientSession:
        config = self.config
        headers = {}
        if config.username is not None and config.password is not None:
            # built by hand: aiohttp 3.14 deprecates BasicAuth, older versions lack its successor
            pair = f"{config.username.reveal()}:{config.password.reveal()}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        ssl_option: ssl.SSLContext | bool = True
        if config.ca_file:
            ssl_option = ssl.create_default_context(cafile=config.ca_file)
        elif not config.verify_tls:
            ssl_option = False
        return aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=config.request_timeout),
            connector=aiohttp.TCPConnector(ssl=ssl_option, limit=config.concurrency),
        )

    def _summary(self, data: object) -> dict[str, Any]:
        report = _pick_report(data)
        if report is None:
            return {"status": "not scanned"}
        vulns = []
        for item in report.get("vulnerabilities") or ():
            if not isinstance(item, Mapping):
                continue
            cvss = item.get("preferred_cvss")
            links = item.get("links")
            vulns.append(
                Vulnerability(
                    id=text(item, "id"),
                    package=text(item, "package"),
                    version=text(item, "version"),
                    fixed_version=text(item, "fix_version"),
                    severity=canonical_severity(item.get("severity")),
                    score=cvss_score(cvss.get("score_v3")) if isinstance(cvss, Mapping) else None,
                    link=links[0] if isinstance(links, list) and links else None,
                )
            )
        scanner = report.get("scanner")
        scanner = scanner if isinstance(scanner, Mapping) else {}
        return {
            "status": "scanned",
            "scanner": {key: text(scanner, key) for key in ("name", "vendor", "version")},
            "scanned_at": text(report, "generated_at") or None,
            "severity": canonical_severity(report.get("severity")),
            **summarize_vulnerabilities(vulns, self.config.top),
        }

    async def _link(
        self, project: str, repository: str, image: ImageRef, data: object
    ) -> str | None:
        project_id = self._project_ids.get(project)
        if project_id is None:
            project_id = await self._project_id(project)
        if project_id is None:
            return None
        link = _LINK.format(
            ui_url=self.config.ui_url,
            project_id=project_id,
            repository=quote(quote(repository, safe=""), safe=""),
        )
        digest = image.digest or _report_digest(data)
        return f"{link}/artifacts/{digest}" if digest else link

    async def _project_id(self, project: str) -> int | None:
        """Harbor's UI addresses projects by id: look it up once per project."""
        try:
            async with self._semaphore:
                status, body = await self._get(
                    f"/api/v2.0/projects/{quote(project, safe='')}",
                    {"X-Is-Resource-Name": "true"},
                )
            data = orjson.loads(body) if status == 200 else None
        except (aiohttp.ClientError, TimeoutError, OSError, orjson.JSONDecodeError):
            return None
        project_id = data.get("project_id") if isinstance(data, dict) else None
        if isinstance(project_id, int) and not isinstance(project_id, bool):
            self._project_ids[project] = project_id
            return project_id
        return None


def _pick_report(data: object) -> Mapping[str, Any] | None:
    if not isinstance(data, Mapping):
        return None
    for mime in REPORT_MIME_TYPES:
        report = data.get(mime)
        if isinstance(report, Mapping):
            return report
    for report in data.values():
        if isinstance(report, Mapping) and "vulnerabilities" in report:
            return report
    return None


def _report_digest(data: object) -> str | None:
    report = _pick_report(data)
    for item in (report or {}).get("vulnerabilities") or ():
        digest = item.get("artifact_digest") if isinstance(item, Mapping) else None
        if isinstance(digest, str) and digest.startswith("sha256:"):
            return digest
    return None
