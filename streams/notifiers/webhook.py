"""Generic webhook: JSON body (the incident, or a sandboxed Jinja2 body template), custom
headers, an optional HMAC-SHA256 signature with a timestamp, TLS options."""

from __future__ import annotations

import hashlib
import hmac
import re
import ssl
from dataclasses import dataclass, field
from typing import ClassVar

import aiohttp
import jinja2
import orjson

from streams._config_fields import Fields
from streams._text import short
from streams.core.incident_record import Incident
from streams.core.templates import (
    BudgetedSandbox,
    RenderLimits,
    TemplateSyntaxError,
    compile_template,
    render_template,
)
from streams.errors import ConfigError, NotifyError
from streams.notifiers._delivery import (
    DeliveryPolicy,
    DeliveryResult,
    error_for_status,
    idempotency_key,
)
from streams.notifiers.base import NotifierContext, NotifierSpec
from streams.notifiers.routing import Route
from streams.secrets import Secret

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "TLSOptions",
    "WebhookConfig",
    "WebhookNotifier",
    "build_webhook_request",
    "signature",
]

SIGNATURE_HEADER = "X-Falco-Signature"
TIMESTAMP_HEADER = "X-Falco-Timestamp"
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Only the template source is compiled: incident values reach it as variables, never as code.
# A body may quote whole incidents, so its bounds are wider than those of a rule's `output`.
BODY_TEMPLATE_LIMITS = RenderLimits(max_output=4 << 20, max_value=4 << 20, max_alloc=64 << 20)
_TEMPLATES = BudgetedSandbox(BODY_TEMPLATE_LIMITS, autoescape=False, keep_trailing_newline=True)


@dataclass(frozen=True, slots=True)
class TLSOptions:
    verify: bool = True
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    url: Secret
    method: str = "POST"
    headers: tuple[tuple[str, Secret], ...] = ()
    body_template: str | None = None
    content_type: str = "application/json"
    hmac_secret: Secret | None = None
    signature_header: str = SIGNATURE_HEADER
    timestamp_header: str = TIMESTAMP_HEADER
    tls: TLSOptions = TLSOptions()
    template: jinja2.Template | None = field(default=None, compare=False, repr=False)
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)


def signature(secret: Secret, timestamp: int, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256(secret, "<timestamp>." + body)."""
    mac = hmac.new(secret.reveal().encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def _render_body(incident: Incident, config: WebhookConfig) -> bytes:
    if config.template is None:
        return orjson.dumps(incident, option=orjson.OPT_NON_STR_KEYS)
    variables = {str(k): v for k, v in incident.items()}
    variables["incident"] = incident
    return render_template(config.template, variables).encode()


def build_webhook_request(
    incident: Incident, config: WebhookConfig, *, timestamp: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """Body and headers for one incident (pure). With `hmac_secret` set, `timestamp` (Unix
    seconds) is required: the signature covers `"<timestamp>." + body`."""
    body = _render_body(incident, config)
    headers = {"Content-Type": config.content_type}
    headers.update((name, value.reveal()) for name, value in config.headers)
    headers["Idempotency-Key"] = idempotency_key(incident)
    if config.hmac_secret is not None:
        if timestamp is None:
            raise ValueError("a timestamp is required to sign the webhook body")
        headers[config.timestamp_header] = str(timestamp)
        headers[config.signature_header] = signature(config.hmac_secret, timestamp, body)
    return body, headers


def _ssl_context(fields: Fields, url: str) -> tuple[TLSOptions, ssl.SSLContext | None]:
    tls = TLSOptions(
        verify=fields.boolean("verify", True),
        ca_file=fields.string("ca_file", None),
        client_cert=fields.string("client_cert", None),
        client_key=fields.string("client_key", None),
    )
    fields.finish()
    if tls.client_key is not None and tls.client_cert is None:
        raise ConfigError(f"{fields.key('client_key')}: needs client_cert")
    if not url.startswith("https://"):
        return tls, None
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{fields.key('ca_file')}: cannot load CA bundle: {exc}") from None
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.client_cert is not None:
        try:
            context.load_cert_chain(tls.client_cert, tls.client_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{fields.key('client_cert')}: cannot load certificate/key: {exc}"
            ) from None
    return tls, context


def _parse_config(fields: Fields) -> WebhookConfig:
    url = fields.secret("url")
    assert url is not None  # required=True
    if not url.reveal().startswith(("https://", "http://")):
        raise ConfigError(f"{fields.key('url')}: expected an http(s) URL")
    method = fields.string("method", "POST").upper()
    if method not in {"POST", "PUT"}:
        raise ConfigError(f"{fields.key('method')}: expected POST or PUT, got {short(method)}")
    header_fields = fields.section("headers")
    headers: list[tuple[str, Secret]] = []
    for name in header_fields.data:
        if not _HEADER_NAME.fullmatch(name):
            raise ConfigError(f"{header_fields.key(name)}: invalid header name")
        value = header_fields.secret(name)
        assert value is not None
        if "\r" in value.reveal() or "\n" in value.reveal():
            raise ConfigError(f"{header_fields.key(name)}: header value contains a line break")
        headers.append((name, value))
    header_fields.finish()
    body_template = fields.string("body_template", None)
    template = None
    if body_template is not None:
        try:
            template = compile_template(body_template, _TEMPLATES)
        except TemplateSyntaxError as exc:
            raise ConfigError(
                f"{fields.key('body_template')}: line {exc.lineno}: {exc.message}"
            ) from None
    tls, context = _ssl_context(fields.section("tls"), url.reveal())
    config = WebhookConfig(
        url=url,
        method=method,
        headers=tuple(headers),
        body_template=body_template,
        content_type=fields.string("content_type", "application/json"),
        hmac_secret=fields.secret("hmac_secret", required=False),
        signature_header=fields.string("signature_header", SIGNATURE_HEADER),
        timestamp_header=fields.string("timestamp_header", TIMESTAMP_HEADER),
        tls=tls,
        template=template,
        ssl_context=context,
    )
    fields.finish()
    return config


class WebhookNotifier:
    """Sends each incident record as one HTTP request to a configured URL."""

    default_policy: ClassVar[DeliveryPolicy] = DeliveryPolicy()
    needs_thread_store = False

    def __init__(self, spec: NotifierSpec[WebhookConfig], context: NotifierContext) -> None:
        self.name = spec.name
        self.route: Route = spec.route
        self.config = spec.options
        secrets = [self.config.url, *(v for _, v in self.config.headers)]
        if self.config.hmac_secret is not None:
            secrets.append(self.config.hmac_secret)
        self.deliverer = context.deliverer(spec, secrets)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def parse_options(cls, fields: Fields) -> WebhookConfig:
        return _parse_config(fields)

    @classmethod
    def create(cls, spec: NotifierSpec[WebhookConfig], context: NotifierContext) -> WebhookNotifier:
        return cls(spec, context)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, incident: Incident) -> DeliveryResult:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=self.deliverer.policy.timeout)
            self._session = aiohttp.ClientSession(timeout=timeout)
        session = self._session
        config = self.config

        async def attempt(_number: int) -> str:
            try:
                body, headers = build_webhook_request(
                    incident, config, timestamp=int(self.deliverer.wall_clock())
                )
            except (
                jinja2.TemplateError,
                TypeError,
                ValueError,
                RecursionError,
                OverflowError,
            ) as exc:
                # SecurityError and UndefinedError are TemplateErrors: a config problem.
                raise NotifyError(f"body template: {exc}", retryable=False) from None
            async with session.request(
                config.method,
                config.url.reveal(),
                data=body,
                headers=headers,
                ssl=config.ssl_context if config.ssl_context is not None else True,
                # A redirect would carry the signed body and headers to another place.
                allow_redirects=False,
            ) as response:
                text = await response.text(errors="replace")
                if 200 <= response.status < 300:
                    return f"HTTP {response.status}"
                raise error_for_status(
                    response.status, response.headers, self.deliverer.wall_clock(), text
                )

        return await self.deliverer.run(incident["id"], attempt)
