"""`doctor`'s checks of the notifiers and enrichers: one authenticated call each, no spam.

Slack (bot token): `auth.test`. Webhooks and Slack incoming webhooks have no read-only call,
so they are only called with `--send-test` (a test incident). OpenSearch/Elasticsearch: the
cluster's root endpoint and the index template. Enrichers: the pipeline once, on an incident
made from the most recent event; Harbor also per configured project, and against the image
registries of the recent events.
"""

from __future__ import annotations

import base64
import datetime as dt
import ssl
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import aiohttp
from prometheus_client import CollectorRegistry

from streams.enrich import EnrichmentMetrics, load_enrichment
from streams.enrich._images import ImageRef, parse_image, present
from streams.enrich.harbor import HarborConfig, HarborEnricher
from streams.errors import ConfigError, NotifyError
from streams.notifiers import (
    Delivered,
    NotifierContext,
    NotifierMetrics,
    SearchIndexNotifier,
    load_notifiers,
)
from streams.notifiers.slack import SlackNotifier
from streams.runtime.config import WorkerConfig

if TYPE_CHECKING:
    from streams.runtime.doctor import Doctor

__all__ = ["check_enrichers", "check_notifiers", "test_incident"]


def test_incident(events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """An incident record shaped like the worker's, from the most recent event if any."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
    last = dict(events[-1]) if events else {}
    raw_fields = last.get("output_fields")
    fields: Mapping[str, Any] = raw_fields if isinstance(raw_fields, Mapping) else {}
    context = {
        name: fields.get(name)
        for name in ("k8s.ns.name", "k8s.pod.name", "container.id", "container.name",
                     "container.image.repository", "container.image.tag")
    }
    context["hostname"] = last.get("hostname")
    return {
        "id": f"doctor-{uuid.uuid4().hex}",
        "status": "new",
        "correlation": "falco-correlator doctor test",
        "type": "sequence",
        "severity": "Informational",
        "output": "Test incident from `falco-correlator doctor --send-test`: no action needed",
        "key": {"doctor": "test"},
        "count": 1,
        "first_seen": now,
        "last_seen": now,
        "events": [],
        "tags": ["falco-correlator-doctor"],
        "context": context,
        "enrichment": {},
        "detected_at": now,
        "ruleset": "doctor",
    }


async def check_notifiers(
    doctor: Doctor, config: WorkerConfig, env: Mapping[str, str], *, send_test: bool,
    timeout: float,
) -> None:
    if not config.notifiers:
        doctor.warn("notifiers", "none configured: incidents only go to the incidents topic",
                    "add a `notifiers:` section (docs/notifiers.md)")
        return
    context = NotifierContext(metrics=NotifierMetrics(CollectorRegistry()))
    notifiers_section: object = config.notifiers
    entries = (
        list(notifiers_section)
        if isinstance(notifiers_section, list | tuple)
        else [notifiers_section]
    )
    notifiers = []
    for index, entry in enumerate(entries):
        # One at a time, so that one broken entry does not hide the checks of the others.
        try:
            [built] = load_notifiers([entry], context, env=env)
        except ConfigError as exc:
            message = str(exc).replace("notifiers[0]", f"notifiers[{index}]", 1)
            doctor.fail("notifiers", message, "see docs/notifiers.md")
            continue
        notifiers.append(built)
    for notifier in notifiers:
        area = f"notifier {notifier.name}"
        # One attempt, bounded: doctor reports, the worker retries.
        deliverer = getattr(notifier, "deliverer", None)
        if deliverer is not None:
            deliverer.policy = replace(deliverer.policy, max_attempts=1, timeout=timeout)
        try:
            if isinstance(notifier, SlackNotifier) and notifier.config.token is not None:
                await _slack_auth_test(doctor, area, notifier, timeout)
            elif isinstance(notifier, SearchIndexNotifier):
                await _search_cluster(doctor, area, notifier)
            if send_test:
                result = await notifier.send(test_incident([]))
                if isinstance(result, Delivered):
                    doctor.ok(area, f"test incident delivered ({result.detail})")
                else:
                    doctor.fail(area, f"test incident not delivered: {result}",
                                "check the URL, credentials and the receiver's logs")
            elif not isinstance(notifier, SearchIndexNotifier) and not (
                isinstance(notifier, SlackNotifier) and notifier.config.token is not None
            ):
                doctor.warn(area, "not called: a webhook has no read-only request",
                            "run doctor --send-test to deliver one test incident")
        finally:
            await notifier.close()


async def _slack_auth_test(doctor: Doctor, area: str, notifier: SlackNotifier,
                           timeout: float) -> None:
    from slack_sdk.errors import SlackApiError, SlackClientError
    from slack_sdk.web.async_client import AsyncWebClient

    config = notifier.config
    assert config.token is not None
    client = AsyncWebClient(token=config.token.reveal(), base_url=config.base_url,
                            timeout=int(timeout))
    try:
        answer = await client.auth_test()
    except SlackApiError as exc:
        doctor.fail(area, f"auth.test: {exc.response.get('error')}",
                    "the bot token is wrong or revoked: reinstall the app, update the Secret")
        return
    except (SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        doctor.fail(area, f"Slack API unreachable: {type(exc).__name__}: {exc}",
                    "check egress to slack.com:443 (NetworkPolicy, proxy)")
        return
    doctor.ok(area, f"auth.test: bot {answer.get('user')} in team {answer.get('team')}"
              + (f", posts to {config.channel}" if config.channel else ""))


async def _search_cluster(doctor: Doctor, area: str, notifier: SearchIndexNotifier) -> None:
    config = notifier.config
    try:
        _status, info = await notifier.request("GET", "/")
        version = (info or {}).get("version", {}) if isinstance(info, Mapping) else {}
        how = "with the configured credentials" if config.auth_header() else "without credentials"
        doctor.ok(area, f"{config.url}: {version.get('distribution', 'elasticsearch')} "
                  f"{version.get('number', '?')} answers {how}")
    except NotifyError as exc:
        fix = "check username/password or api_key" if "HTTP 401" in str(exc) or (
            "HTTP 403" in str(exc)) else "check the URL, TLS settings and egress"
        doctor.fail(area, f"{config.url}: {exc}", fix)
        return
    except (aiohttp.ClientError, OSError, TimeoutError, ssl.SSLError) as exc:
        doctor.fail(area, f"{config.url} unreachable: {type(exc).__name__}: {exc}",
                    "check the URL, TLS settings and egress")
        return
    try:
        await notifier.request("GET", f"/_index_template/{config.template_name}")
        doctor.ok(area, f"index template {config.template_name} is installed")
    except NotifyError as exc:
        if "HTTP 404" not in str(exc):
            doctor.warn(area, f"index template {config.template_name}: {exc}")
        elif config.manage_template:
            doctor.ok(area, f"index template {config.template_name} is installed at the first "
                      "incident")
        else:
            doctor.warn(area, f"no index template {config.template_name} and "
                        "manage_template is false: incidents get dynamic mappings",
                        "install the template (docs/notifiers.md) or set manage_template: true")


async def check_enrichers(
    doctor: Doctor, config: WorkerConfig, env: Mapping[str, str],
    events: Sequence[Mapping[str, Any]], *, timeout: float,
) -> None:
    if not config.enrichment:
        return
    try:
        pipeline = load_enrichment(config.enrichment, env=env,
                                   metrics=EnrichmentMetrics(CollectorRegistry()))
    except ConfigError as exc:
        doctor.fail("enrichment", str(exc), "see docs/enrichment.md")
        return
    try:
        for slot in pipeline.slots:
            if isinstance(slot.enricher, HarborEnricher):
                await _harbor_projects(
                    doctor, slot.enricher.name, slot.enricher.config, events, timeout
                )
                _harbor_registries(doctor, slot.enricher.name, slot.enricher.config, events)
        incident = await pipeline.enrich(test_incident(events))
        for name in pipeline.names:
            section = incident["enrichment"].get(name, {})
            area = f"enricher {name}"
            if isinstance(section, Mapping) and "error" in section:
                doctor.fail(area, f"returned an error: {section['error']}",
                            "see the enricher's settings in docs/enrichment.md")
            else:
                status = section.get("status") if isinstance(section, Mapping) else None
                what = f"status {status!r}" if status else "a result"
                doctor.ok(area, f"answered with {what} for the most recent event's workload")
    finally:
        await pipeline.close()


def _event_images(events: Sequence[Mapping[str, Any]]) -> list[ImageRef]:
    images = []
    for event in events:
        fields = event.get("output_fields")
        if not isinstance(fields, Mapping):
            continue
        repository = present(fields.get("container.image.repository"))
        image = parse_image(repository, present(fields.get("container.image.tag"))) if (
            repository) else None
        if image is not None:
            images.append(image)
    return images


async def _harbor_projects(doctor: Doctor, name: str, config: HarborConfig,
                           events: Sequence[Mapping[str, Any]], timeout: float) -> None:
    area = f"enricher {name}"
    headers = {"X-Is-Resource-Name": "true"}
    if config.username is not None and config.password is not None:
        pair = f"{config.username.reveal()}:{config.password.reveal()}".encode()
        headers["Authorization"] = f"Basic {base64.b64encode(pair).decode()}"
    ssl_context: ssl.SSLContext | bool = True
    if config.ca_file or not config.verify_tls:
        ssl_context = ssl.create_default_context(cafile=config.ca_file)
        if not config.verify_tls:
            ssl_context.check_hostname = False
            ssl_context.verify_mode = ssl.CERT_NONE
    # The configured projects, and those the recent events' images resolve to.
    wanted = {rule.project for rule in config.rules if rule.project}
    for image in _event_images(events):
        resolved = config.resolve(image)
        if resolved is not None and len(wanted) < 10:
            wanted.add(resolved[1])
    projects = sorted(wanted)
    paths = [f"/api/v2.0/projects/{project}" for project in projects] or [
        "/api/v2.0/projects?page_size=1"
    ]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        for path in paths:
            try:
                async with session.get(
                    f"{config.url}{path}", ssl=ssl_context, headers=headers
                ) as answer:
                    status = answer.status
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                doctor.fail(area, f"{config.url} unreachable: {type(exc).__name__}: {exc}",
                            "check harbor.url, ca_file and egress")
                return
            what = path.rsplit("/", 1)[-1] if projects else "project list"
            if status == 200:
                doctor.ok(area, f"Harbor {config.url}: {what} readable")
            elif status == 401:
                doctor.fail(area, f"Harbor {config.url}: 401 for {what}",
                            "wrong robot name or secret: check the Secret behind "
                            "harbor.username/password (a robot name is robot$...)")
            elif status == 403:
                doctor.fail(area, f"Harbor {config.url}: 403 for {what}",
                            "give the robot account read access to the project's artifacts "
                            "and scans")
            elif status == 404 and projects:
                doctor.fail(area, f"Harbor {config.url}: project {what} not found",
                            "fix harbor.projects (or the image names' project segment)")
            elif status == 404:
                doctor.fail(area, f"Harbor {config.url}: no Harbor API here (404)",
                            "harbor.url must be Harbor's base address (without /api)")
            else:
                doctor.fail(area, f"Harbor {config.url}: HTTP {status} for {what}")


def _harbor_registries(doctor: Doctor, name: str, config: HarborConfig,
                       events: Sequence[Mapping[str, Any]]) -> None:
    """A registry seen in image names that no rule maps to Harbor gives "not in harbor" for
    every incident of that image, silently: say so, with the fix."""
    unmatched: Counter[str] = Counter()
    images = _event_images(events)
    seen = len(images)
    for image in images:
        if config.resolve(image) is None:
            unmatched[image.registry] += 1
    area = f"enricher {name}"
    if not seen:
        doctor.warn(area, "no image in the recent events to compare with Harbor's hosts",
                    "check again once Falco reports container events")
    elif unmatched:
        listed = ", ".join(f"{host} ({count} of {seen})" for host, count in unmatched.most_common())
        doctor.warn(
            area,
            f"images from {listed} recent events match no Harbor host or project rule, so "
            "their incidents say 'not in harbor'",
            "if Harbor serves these images under another name than its API address, add the "
            "registry hosts to harbor.hosts (or harbor.projects rules for proxy caches)",
        )
    else:
        doctor.ok(area, f"the {seen} images of the recent events all map to Harbor projects")
