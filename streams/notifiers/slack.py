"""Slack: a pure Block Kit payload builder and a thin send (incoming webhook or bot token).

Everything taken from an incident is escaped (`&`, `<`, `>`) because event text is
attacker-controlled: a command line must not be able to ping a channel or plant a link.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from streams._config_fields import Fields
from streams._text import short
from streams.core.incident_record import Incident, IncidentEvent
from streams.core.priority import canonical_priority
from streams.errors import ConfigError, NotifyError
from streams.notifiers._delivery import (
    DeliveryPolicy,
    DeliveryResult,
    error_for_status,
    idempotency_key,
)
from streams.notifiers._enrichment_text import enrichment_lines
from streams.notifiers._slack_text import (
    as_text,
    chunk_lines,
    code,
    fit,
    fit_line,
    key_text,
    short_time,
    timestamp,
)
from streams.notifiers.base import NotifierContext, NotifierSpec, ThreadStore
from streams.notifiers.routing import STATUSES, Route, incident_value
from streams.secrets import Secret

__all__ = ["SlackConfig", "SlackNotifier", "build_slack_payload"]

_CHANNEL = re.compile(r"#?[a-z0-9][a-z0-9._-]{0,79}|[CG][A-Z0-9]{8,}")

MAX_BLOCKS = 50
SLACK_API_URL = "https://slack.com/api/"
_SEVERITY_STYLE: dict[str, tuple[str, str]] = {
    "Emergency": (":rotating_light:", "#7A0019"),
    "Alert": (":rotating_light:", "#B00020"),
    "Critical": (":red_circle:", "#E01E5A"),
    "Error": (":large_orange_circle:", "#F2711C"),
    "Warning": (":large_yellow_circle:", "#ECB22E"),
    "Notice": (":large_blue_circle:", "#36C5F0"),
    "Informational": (":information_source:", "#439FE0"),
    "Debug": (":white_circle:", "#9E9E9E"),
}
_UNKNOWN_STYLE = (":grey_question:", "#9E9E9E")
# What the Slack section's own filters (a Route) say when they hold an incident back.
_SKIP_REASONS = {"min_severity": "below min_severity", "statuses": "send_updates is off"}
_CONTEXT_FIELDS = (
    ("Namespace", "k8s.ns.name"),
    ("Pod", "k8s.pod.name"),
    ("Container", "container.name"),
    ("Host", "hostname"),
)
# Slack API errors that a later identical call can succeed with.
_RETRYABLE_API_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
# slack-sdk logs URLs and bodies when its logger's own level is NOTSET or DEBUG; the webhook
# URL is a secret, so its logger gets an explicit level.
_SDK_LOG = logging.getLogger("streams.notifiers.slack.sdk")
_SDK_LOG.setLevel(logging.INFO)


@dataclass(frozen=True, slots=True)
class SlackConfig:
    """Exactly one of `webhook_url` (incoming webhook) or `token` (bot, needs `channel`)."""

    webhook_url: Secret | None = None
    token: Secret | None = None
    channel: str | None = None
    min_severity: str | None = None
    send_updates: bool = True
    username: str | None = None
    icon_emoji: str | None = None
    icon_url: str | None = None
    base_url: str = SLACK_API_URL
    max_timeline_events: int = 10
    # a dotted incident path (e.g. `enrichment.ownership.slack_channel`) naming the channel
    channel_from: str | None = None

    @property
    def mode(self) -> str:
        return "bot" if self.token is not None else "webhook"


def _fields(incident: Incident) -> list[dict[str, str]]:
    ctx = incident.get("context") or {}
    fields = [{"type": "mrkdwn", "text": f"*Key*\n{code(key_text(incident.get('key')), 200)}"}]
    for label, name in _CONTEXT_FIELDS:
        value = as_text(ctx.get(name))
        if name == "container.name" and as_text(ctx.get("container.id")):
            value = (
                f"{value} ({as_text(ctx.get('container.id'))})"
                if value
                else as_text(ctx.get("container.id"))
            )
        if value:
            fields.append({"type": "mrkdwn", "text": f"*{label}*\n{fit(value, 150)}"})
    image = as_text(ctx.get("container.image.repository"))
    if image:
        tag = as_text(ctx.get("container.image.tag"))
        fields.append(
            {"type": "mrkdwn", "text": f"*Image*\n{fit(f'{image}:{tag}' if tag else image, 150)}"}
        )
    return fields


def _event_line(event: IncidentEvent) -> str:
    cmdline = as_text((event.get("output_fields") or {}).get("proc.cmdline"))
    step = as_text(event.get("step"))
    head = f"• `{short_time(event.get('time'))}`"
    if step:
        head += f" *{fit(step, 40)}*"
    head += f" {fit(as_text(event.get('rule')) or '?', 80)}"
    return f"{head}\n      {code(cmdline, 150)}" if cmdline else head


def _timeline(incident: Incident, limit: int) -> list[str]:
    events = incident.get("events") or []
    hidden = truncated = max(0, incident.get("events_truncated", 0))
    if len(events) > limit:
        # Keep the first steps and the last one: the sequence's end is usually the point.
        hidden += len(events) - limit
        lines = [_event_line(e) for e in events[: limit - 1]]
        lines.append(f"_… {hidden} more events …_")
        lines.append(_event_line(events[-1]))
    else:
        lines = [_event_line(e) for e in events]
        if hidden:
            lines.append(f"_… {hidden} more events …_")
    total = len(events) + truncated
    header = f"*Timeline* ({total} event{'s' if total != 1 else ''})"
    return [header, *lines]


def _style(severity: str | None) -> tuple[str, str]:
    return _SEVERITY_STYLE.get(severity or "", _UNKNOWN_STYLE)


def _new_payload(
    incident: Incident, config: SlackConfig, enricher_kinds: Mapping[str, str]
) -> dict[str, Any]:
    severity = canonical_priority(incident.get("severity"))
    emoji, colour = _style(severity)
    sev_text = severity or fit(as_text(incident.get("severity")) or "Unknown", 20)
    name = fit(as_text(incident.get("correlation")) or "incident", 150)
    output = as_text(incident.get("output"))
    blocks: list[dict[str, Any]] = [
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": f"{emoji} *{sev_text}* · *{name}*\n{fit(output, 500)}",
            },
        },
        {"type": "section", "fields": _fields(incident)},
    ]
    enrichment = enrichment_lines(incident, enricher_kinds)
    if enrichment:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": fit_line("\n".join(enrichment))}}
        )
    for chunk in chunk_lines(_timeline(incident, max(2, config.max_timeline_events))):
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": chunk}})
    tags = incident.get("tags") or []
    if tags:
        tag_text = " ".join(code(t, 40) for t in tags[:15]) + (" …" if len(tags) > 15 else "")
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": fit_line(tag_text)}]}
        )
    footer = (
        f"Incident {code(as_text(incident.get('id')), 40)}"
        f" · first {timestamp(incident.get('first_seen'))}"
        f" · last {timestamp(incident.get('last_seen'))}"
    )
    fallback = f"{emoji} [{sev_text}] {name}: {fit(output, 200)}"
    return {
        "text": fallback,
        "blocks": blocks[: MAX_BLOCKS - 1],
        "attachments": [
            {
                "color": colour,
                "fallback": fallback,
                "blocks": [{"type": "context", "elements": [{"type": "mrkdwn", "text": footer}]}],
            }
        ],
    }


def _update_payload(incident: Incident) -> dict[str, Any]:
    count = incident.get("count", 0)
    total = count if count > 1 else 2
    more = total - 1
    name = fit(as_text(incident.get("correlation")) or "incident", 150)
    emoji, _ = _style(canonical_priority(incident.get("severity")))
    matches = f"{more} more match{'es' if more != 1 else ''}"
    head = f":repeat: *{matches}* · {emoji} *{name}* ({total} in total)"
    events = incident.get("events") or []
    key = code(key_text(incident.get("key")), 200)
    lines = [head, f"Key {key} · last {timestamp(incident.get('last_seen'))}"]
    if events:
        lines.append(_event_line(events[-1]))
    footer = f"Incident {code(as_text(incident.get('id')), 40)}"
    return {
        "text": f"{matches}: {name} ({total} in total)",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": fit_line("\n".join(lines))}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": footer}]},
        ],
    }


def build_slack_payload(
    incident: Incident,
    config: SlackConfig,
    enricher_kinds: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The chat.postMessage / incoming-webhook body for one incident record (pure).
    `enricher_kinds` maps enricher names to their types (a name not in it is its own type)."""
    if incident.get("status") == "update":
        payload = _update_payload(incident)
    else:
        payload = _new_payload(incident, config, enricher_kinds or {})
    for option in ("channel", "username", "icon_emoji", "icon_url"):
        value = getattr(config, option)
        if value:
            payload[option] = value
    if config.channel_from:
        # The owner's channel from enrichment tables (our configuration, not event content);
        # still only a plain channel name or id is accepted.
        routed = incident_value(incident, config.channel_from)
        if isinstance(routed, str) and _CHANNEL.fullmatch(routed):
            payload["channel"] = routed
    return payload


def _parse_config(fields: Fields) -> SlackConfig:
    webhook_url = fields.secret("webhook_url", required=False)
    token = fields.secret("token", required=False)
    channel = fields.string("channel", None)
    min_severity = fields.string("min_severity", None)
    base_url = fields.string("base_url", SLACK_API_URL)
    config = SlackConfig(
        webhook_url=webhook_url,
        token=token,
        channel=channel,
        min_severity=min_severity,
        send_updates=fields.boolean("send_updates", True),
        username=fields.string("username", None),
        icon_emoji=fields.string("icon_emoji", None),
        icon_url=fields.string("icon_url", None),
        base_url=base_url,
        max_timeline_events=fields.integer("max_timeline_events", 10, minimum=2),
        channel_from=fields.string("channel_from", None),
    )
    fields.finish()  # before the checks that combine keys: a typo is reported as itself
    if (webhook_url is None) == (token is None):
        raise ConfigError(f"{fields.path}: set exactly one of webhook_url or token")
    if webhook_url is not None and not webhook_url.reveal().startswith(("https://", "http://")):
        raise ConfigError(f"{fields.key('webhook_url')}: expected an http(s) URL")
    if token is not None and channel is None:
        raise ConfigError(f"{fields.key('channel')}: required with token (bot mode)")
    if min_severity is not None:
        canonical = canonical_priority(min_severity)
        if canonical is None:
            raise ConfigError(
                f"{fields.key('min_severity')}: unknown priority {short(min_severity)}"
            )
        config = replace(config, min_severity=canonical)
    if not base_url.startswith(("https://", "http://")):
        raise ConfigError(f"{fields.key('base_url')}: expected an http(s) URL")
    return config


class SlackNotifier:
    """Posts incidents to Slack; in bot mode updates go to the incident's thread."""

    default_policy: ClassVar[DeliveryPolicy] = DeliveryPolicy(rate=1.0, burst=1, concurrency=1)

    def __init__(self, spec: NotifierSpec[SlackConfig], context: NotifierContext) -> None:
        self.name = spec.name
        self.route: Route = spec.route
        self.config = spec.options
        # `slack.min_severity` and `slack.send_updates` are a second route, checked at send so
        # that what they hold back is counted as skipped
        self.filter = Route(
            min_severity=self.config.min_severity,
            statuses=STATUSES if self.config.send_updates else frozenset({"new"}),
        )
        self.threads: ThreadStore = context.thread_store
        self.enricher_kinds = context.enricher_kinds
        secrets = [s for s in (self.config.webhook_url, self.config.token) if s is not None]
        self.deliverer = context.deliverer(spec, secrets)
        self._session: aiohttp.ClientSession | None = None

    @property
    def needs_thread_store(self) -> bool:
        """In bot mode updates go to the incident's thread: its `ts` is kept in the store."""
        return self.config.mode == "bot"

    @classmethod
    def parse_options(cls, fields: Fields) -> SlackConfig:
        return _parse_config(fields)

    @classmethod
    def create(cls, spec: NotifierSpec[SlackConfig], context: NotifierContext) -> SlackNotifier:
        return cls(spec, context)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=self.deliverer.policy.timeout)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, incident: Incident) -> DeliveryResult:
        incident_id = as_text(incident.get("id"))
        status = incident.get("status", "new")
        refused = self.filter.refusal(incident)
        if refused is not None:
            return self.deliverer.skip(incident_id, _SKIP_REASONS[refused])
        if self.config.mode == "bot" and status != "update" and self.threads.get(incident_id):
            return self.deliverer.skip(incident_id, "already posted (thread exists)")
        payload = build_slack_payload(incident, self.config, self.enricher_kinds)
        headers = {"Idempotency-Key": idempotency_key(incident)}

        async def attempt(_number: int) -> str:
            try:
                if self.config.mode == "bot":
                    return await self._post_message(incident_id, status, payload)
                return await self._post_webhook(payload, headers)
            except SlackApiError as exc:
                raise self._api_error(exc) from None
            except SlackClientError as exc:
                raise NotifyError(f"{type(exc).__name__}: {exc}", retryable=True) from None

        return await self.deliverer.run(incident_id, attempt)

    async def _post_webhook(self, payload: dict[str, Any], headers: dict[str, str]) -> str:
        assert self.config.webhook_url is not None  # webhook mode
        client = AsyncWebhookClient(
            self.config.webhook_url.reveal(),
            session=self._get_session(),
            logger=_SDK_LOG,
            retry_handlers=[],  # the Deliverer owns retries
        )
        response = await client.send_dict(payload, headers=dict(headers))
        if 200 <= response.status_code < 300:
            return f"HTTP {response.status_code}"
        raise error_for_status(
            response.status_code,
            response.headers,
            self.deliverer.wall_clock(),
            str(response.body or ""),
        )

    async def _post_message(self, incident_id: str, status: object, payload: dict[str, Any]) -> str:
        assert self.config.token is not None  # bot mode
        client = AsyncWebClient(
            token=self.config.token.reveal(),
            base_url=self.config.base_url,
            session=self._get_session(),
            logger=_SDK_LOG,
            retry_handlers=[],
        )
        body = dict(payload)
        channel = body.pop("channel", self.config.channel)
        thread_ts = self.threads.get(incident_id) if status == "update" else None
        if thread_ts:
            body["thread_ts"] = thread_ts
        response = await client.chat_postMessage(channel=channel, **body)
        ts = response.get("ts")
        if not isinstance(ts, str):
            raise NotifyError("chat.postMessage answered without ts", retryable=False)
        if status != "update":
            self.threads.set(incident_id, ts)
        return f"ts={ts}"

    def _api_error(self, exc: SlackApiError) -> NotifyError:
        response = exc.response
        status = int(getattr(response, "status_code", 0) or 0)
        data = getattr(response, "data", None)
        code_ = data.get("error", "") if isinstance(data, Mapping) else ""
        headers = getattr(response, "headers", None) or {}
        if status != 200:
            return error_for_status(status, headers, self.deliverer.wall_clock(), str(code_))
        return NotifyError(f"Slack API error {code_}", retryable=code_ in _RETRYABLE_API_ERRORS)
