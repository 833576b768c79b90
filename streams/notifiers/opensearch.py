"""OpenSearch / Elasticsearch: incidents indexed through the bulk API into dated indices.

Each `send` is one incident record, but records are not sent one request each: the sends that
arrive within `flush_interval` (up to `batch_size` documents or `batch_bytes`) share one
`POST /_bulk`, and each send gets the result of its own item. A failed item is retried by the
shared `Deliverer` like any failed request (429 and 5xx items are retried, a mapping error is
permanent and goes to the dead-letter topic), so retries, backoff, Retry-After, metrics and
dead-lettering are those of every other notifier.

The index template is installed (`PUT _index_template/<name>`) before the first bulk request
of the process, and again after a failure to install it; `manage_template: false` leaves
templates to the operator. The pure parts (documents, bulk body, template) are in
`_search_documents.py`.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp
import orjson

from streams._config_fields import Fields
from streams.core.incident_record import Incident
from streams.errors import ConfigError, NotifyError
from streams.notifiers._delivery import DeliveryPolicy, DeliveryResult, error_for_status
from streams.notifiers._search_documents import (
    BulkAction,
    IndexSuffix,
    build_bulk_body,
    build_index_template,
    build_search_action,
)
from streams.notifiers.base import NotifierContext, NotifierSpec
from streams.notifiers.routing import Route

# The webhook's TLS section (verify, ca_file, client_cert, client_key) is reused as is.
from streams.notifiers.webhook import TLSOptions, _ssl_context
from streams.secrets import Secret

__all__ = ["SearchConfig", "SearchIndexNotifier"]

# Lower-case, no characters the engines forbid in index names (\ / * ? " < > | space , #).
_INDEX_PREFIX = re.compile(r"[a-z0-9][a-z0-9._+-]{0,200}")
_TEMPLATE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,200}")


@dataclass(frozen=True, slots=True)
class SearchConfig:
    url: str
    index: str = "falco-incidents"
    suffix: IndexSuffix = IndexSuffix.DAILY
    username: str | None = None
    password: Secret | None = None
    api_key: Secret | None = None
    flatten_fields: bool = True
    manage_template: bool = True
    template_name: str = "falco-incidents"
    template_priority: int = 200
    shards: int = 1
    replicas: int = 1
    batch_size: int = 100
    batch_bytes: int = 5_000_000
    flush_interval: float = 0.2
    tls: TLSOptions = field(default_factory=TLSOptions)
    ssl_context: Any = field(default=None, compare=False, repr=False)

    def auth_header(self) -> str | None:
        if self.api_key is not None:
            return f"ApiKey {self.api_key.reveal()}"
        if self.username is not None and self.password is not None:
            pair = f"{self.username}:{self.password.reveal()}".encode()
            return f"Basic {base64.b64encode(pair).decode()}"
        return None

    def template(self) -> dict[str, Any]:
        return build_index_template(
            self.index,
            self.suffix,
            shards=self.shards,
            replicas=self.replicas,
            priority=self.template_priority,
        )


def _parse_config(fields: Fields) -> SearchConfig:
    url = fields.string("url").rstrip("/")
    if not url.startswith(("https://", "http://")):
        raise ConfigError(f"{fields.key('url')}: expected an http(s) URL")
    index = fields.string("index", "falco-incidents")
    if not _INDEX_PREFIX.fullmatch(index):
        raise ConfigError(
            f"{fields.key('index')}: {index!r} is not a valid index name "
            "(lower case letters, digits, '.', '_', '+', '-')"
        )
    suffix_name = fields.choice("suffix", tuple(s.value for s in IndexSuffix), "daily")
    username = fields.string("username", None)
    password = fields.secret("password", required=False)
    api_key = fields.secret("api_key", required=False)
    if (username is None) != (password is None):
        raise ConfigError(f"{fields.key('username')}: username and password go together")
    if api_key is not None and username is not None:
        raise ConfigError(f"{fields.key('api_key')}: use either api_key or username/password")
    template_name = fields.string("template_name", "falco-incidents")
    if not _TEMPLATE_NAME.fullmatch(template_name):
        raise ConfigError(f"{fields.key('template_name')}: {template_name!r} is not a valid name")
    tls, context = _ssl_context(fields.section("tls"), url)
    config = SearchConfig(
        url=url,
        index=index,
        suffix=IndexSuffix(suffix_name),
        username=username,
        password=password,
        api_key=api_key,
        flatten_fields=fields.boolean("flatten_fields", True),
        manage_template=fields.boolean("manage_template", True),
        template_name=template_name,
        template_priority=fields.integer("template_priority", 200, minimum=0),
        shards=fields.integer("shards", 1),
        replicas=fields.integer("replicas", 1, minimum=0),
        batch_size=fields.integer("batch_size", 100),
        batch_bytes=fields.integer("batch_bytes", 5_000_000, minimum=1000),
        flush_interval=fields.seconds("flush_interval", 0.2),
        tls=tls,
        ssl_context=context,
    )
    fields.finish()
    return config


@dataclass(slots=True)
class _Pending:
    action: BulkAction
    body: bytes
    future: asyncio.Future[str]


def _item_outcome(item: Mapping[str, Any], now: float) -> str | NotifyError:
    """One bulk item: a detail string when stored, a NotifyError (retryable or not) otherwise."""
    result: Mapping[str, Any] = next(iter(item.values()), {}) if item else {}
    status = int(result.get("status", 0))
    if 200 <= status < 300:
        return f"HTTP {status} {result.get('result', '')} {result.get('_index', '')}".strip()
    if status == 409:
        # external_gte versioning refused an older record: the stored one is newer. Done.
        return "HTTP 409: a newer record of this incident is stored"
    error = result.get("error")
    if isinstance(error, Mapping):
        detail = f"{error.get('type', '')}: {error.get('reason', '')}"
    else:
        detail = str(error)
    return error_for_status(status, {}, now, detail)


class SearchIndexNotifier:
    """Indexes incident records into OpenSearch or Elasticsearch (same API for both)."""

    default_policy: ClassVar[DeliveryPolicy] = DeliveryPolicy(concurrency=256)
    needs_thread_store = False

    def __init__(self, spec: NotifierSpec[SearchConfig], context: NotifierContext) -> None:
        self.name = spec.name
        self.route: Route = spec.route
        self.config = spec.options
        secrets = [s for s in (self.config.password, self.config.api_key) if s is not None]
        self.deliverer = context.deliverer(spec, secrets)
        self._session: aiohttp.ClientSession | None = None
        self._pending: list[_Pending] = []
        self._pending_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()
        self._template_ready = not self.config.manage_template
        self._template_lock: asyncio.Lock | None = None
        self.bulk_requests = 0  # requests sent, for tests and `doctor`

    @classmethod
    def parse_options(cls, fields: Fields) -> SearchConfig:
        return _parse_config(fields)

    @classmethod
    def create(
        cls, spec: NotifierSpec[SearchConfig], context: NotifierContext
    ) -> SearchIndexNotifier:
        return cls(spec, context)

    # -- HTTP -------------------------------------------------------------------------------

    def _headers(self, content_type: str) -> dict[str, str]:
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        auth = self.config.auth_header()
        if auth is not None:
            headers["Authorization"] = auth
        return headers

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=self.deliverer.policy.timeout)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def request(
        self, method: str, path: str, body: bytes | None = None, *, ndjson: bool = False
    ) -> tuple[int, Any]:
        """One request to the cluster; NotifyError for a non-2xx answer."""
        content_type = "application/x-ndjson" if ndjson else "application/json"
        async with self.session().request(
            method,
            f"{self.config.url}{path}",
            data=body,
            headers=self._headers(content_type),
            ssl=self.config.ssl_context if self.config.ssl_context is not None else True,
            allow_redirects=False,
        ) as response:
            text = await response.text(errors="replace")
            if not 200 <= response.status < 300:
                raise error_for_status(
                    response.status, response.headers, self.deliverer.wall_clock(), text
                )
            try:
                return response.status, orjson.loads(text) if text else None
            except orjson.JSONDecodeError:
                raise NotifyError(
                    f"HTTP {response.status}: not JSON: {text[:200]}", retryable=True
                ) from None

    async def install_template(self) -> None:
        """`PUT _index_template/<name>` (idempotent) unless it was installed by this process."""
        if self._template_ready:
            return
        if self._template_lock is None:
            self._template_lock = asyncio.Lock()
        async with self._template_lock:
            if self._template_ready:
                return
            body = orjson.dumps(self.config.template())
            await self.request("PUT", f"/_index_template/{self.config.template_name}", body)
            self._template_ready = True

    # -- batching ---------------------------------------------------------------------------

    def _enqueue(self, action: BulkAction) -> asyncio.Future[str]:
        loop = asyncio.get_running_loop()
        body = build_bulk_body([action])
        future: asyncio.Future[str] = loop.create_future()
        self._pending.append(_Pending(action, body, future))
        self._pending_bytes += len(body)
        if (
            len(self._pending) >= self.config.batch_size
            or self._pending_bytes >= self.config.batch_bytes
        ):
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.config.flush_interval, self._flush)
        return future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        if batch:
            task = asyncio.get_running_loop().create_task(self._send_batch(batch))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _send_batch(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if not p.future.done()]  # a timed-out send no longer waits
        if not live:
            return
        try:
            await self.install_template()
            self.bulk_requests += 1
            _status, answer = await self.request(
                "POST", "/_bulk", b"".join(p.body for p in live), ndjson=True
            )
            items = answer.get("items") if isinstance(answer, Mapping) else None
            if not isinstance(items, list) or len(items) != len(live):
                raise NotifyError("bulk answer does not list one item per document", retryable=True)
        except Exception as exc:  # every send of the batch gets the same failure
            for pending in live:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        now = self.deliverer.wall_clock()
        for pending, item in zip(live, items, strict=True):
            if pending.future.done():
                continue
            outcome = _item_outcome(item, now)
            if isinstance(outcome, NotifyError):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)

    # -- the Notifier protocol --------------------------------------------------------------

    def action(self, incident: Incident) -> BulkAction:
        config = self.config
        return build_search_action(
            incident,
            index_prefix=config.index,
            suffix=config.suffix,
            flatten=config.flatten_fields,
            now=dt.datetime.fromtimestamp(self.deliverer.wall_clock(), dt.UTC),
        )

    async def send(self, incident: Incident) -> DeliveryResult:
        async def attempt(_number: int) -> str:
            future = self._enqueue(self.action(incident))
            try:
                return await future
            finally:
                if not future.done():  # cancelled by the attempt timeout
                    future.cancel()

        return await self.deliverer.run(incident["id"], attempt)

    async def close(self) -> None:
        self._flush()
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
