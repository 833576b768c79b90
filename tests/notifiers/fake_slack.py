"""A Slack look-alike on 127.0.0.1: incoming webhook and chat.postMessage, with scripted faults.

It checks what Slack would reject or what would be dangerous (no `text`, no `blocks`, too many
blocks, oversize text, unescaped `<` or `&` that could ping `<!channel>` or plant a link) and
records every request so tests can assert on timing, threads and idempotency keys.
Reusable by integration tests: `async with FakeSlack(...) as slack: slack.webhook_url`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .servers import LocalServer

__all__ = ["FakeSlack", "SlackRequest", "payload_problems"]

_BARE_AMP = re.compile(r"&(?!amp;|lt;|gt;)")


@dataclass
class SlackRequest:
    endpoint: str  # "webhook" or "chat.postMessage"
    at: float
    payload: dict[str, Any]
    headers: dict[str, str]
    outcome: str  # "ok", "slow", an HTTP status, or "invalid"
    ts: str | None = None


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def payload_problems(payload: dict[str, Any]) -> list[str]:
    """What is wrong with a message payload, by Slack's limits and our escaping rules."""
    problems: list[str] = []
    if not isinstance(payload.get("text"), str) or not payload["text"].strip():
        problems.append("text missing")
    blocks = payload.get("blocks")
    if not isinstance(blocks, list) or not blocks:
        problems.append("blocks missing")
        blocks = []
    all_blocks = list(blocks)
    for attachment in payload.get("attachments") or []:
        all_blocks.extend(attachment.get("blocks") or [])
    if len(all_blocks) > 50:
        problems.append(f"{len(all_blocks)} blocks > 50")
    for block in all_blocks:
        text = block.get("text", {}).get("text") if isinstance(block.get("text"), dict) else None
        if text is not None and len(text) > 3000:
            problems.append(f"section text {len(text)} > 3000")
        fields = block.get("fields") or []
        if len(fields) > 10:
            problems.append(f"{len(fields)} fields > 10")
        problems.extend(
            f"field text {len(f['text'])} > 2000" for f in fields if len(f["text"]) > 2000
        )
        elements = block.get("elements") or []
        if len(elements) > 10:
            problems.append(f"{len(elements)} context elements > 10")
    for text in _strings(
        {k: v for k, v in payload.items() if k in {"text", "blocks", "attachments"}}
    ):
        if "<" in text or ">" in text:
            problems.append(f"unescaped angle bracket in {text[:80]!r}")
        if _BARE_AMP.search(text):
            problems.append(f"unescaped & in {text[:80]!r}")
    return problems


@dataclass
class FakeSlack:
    """Faults, one per request in order: "429" (with Retry-After), "500", "400", or "slow"
    (accepted, but answered after `slow_seconds`). After the faults, everything succeeds."""

    faults: Iterable[str] = ()
    retry_after: int = 1
    slow_seconds: float = 1.0
    token: str = "xoxb-fake-token"
    webhook_path: str = "/services/T0000/B0000/secretpath"
    requests: list[SlackRequest] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._faults = deque(self.faults)
        self._server: LocalServer | None = None
        self._ts = 0

    @property
    def webhook_url(self) -> str:
        assert self._server is not None
        return f"{self._server.url}{self.webhook_path}"

    @property
    def api_url(self) -> str:
        assert self._server is not None
        return f"{self._server.url}/api/"

    @property
    def accepted(self) -> list[SlackRequest]:
        return [r for r in self.requests if r.outcome in {"ok", "slow"}]

    async def __aenter__(self) -> FakeSlack:
        app = web.Application()
        app.router.add_post(self.webhook_path, self._webhook)
        app.router.add_post("/api/chat.postMessage", self._post_message)
        self._server = LocalServer(app)
        await self._server.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        await self._server.__aexit__(*exc)

    async def _record(self, request: web.Request, endpoint: str) -> tuple[SlackRequest, str | None]:
        try:
            payload = await request.json()
        except ValueError:
            payload = {}
        record = SlackRequest(endpoint, time.monotonic(), payload, dict(request.headers), "ok")
        self.requests.append(record)
        problems = payload_problems(payload)
        if problems:
            self.problems.extend(problems)
            record.outcome = "invalid"
            return record, "invalid"
        fault = self._faults.popleft() if self._faults else None
        if fault is not None:
            record.outcome = fault
        return record, fault

    async def _webhook(self, request: web.Request) -> web.Response:
        _, fault = await self._record(request, "webhook")
        if fault == "invalid":
            return web.Response(status=400, text="invalid_blocks")
        if fault is not None and fault != "slow":
            headers = {"Retry-After": str(self.retry_after)} if fault == "429" else {}
            return web.Response(status=int(fault), text=f"fault_{fault}", headers=headers)
        if fault == "slow":
            await asyncio.sleep(self.slow_seconds)
        return web.Response(status=200, text="ok")

    async def _post_message(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        record, fault = await self._record(request, "chat.postMessage")
        if fault == "invalid":
            return web.json_response({"ok": False, "error": "invalid_blocks"})
        if fault is not None and fault != "slow":
            headers = {"Retry-After": str(self.retry_after)} if fault == "429" else {}
            error = "ratelimited" if fault == "429" else "internal_error"
            return web.json_response(
                {"ok": False, "error": error}, status=int(fault), headers=headers
            )
        self._ts += 1
        record.ts = f"1700000000.{self._ts:06d}"
        if fault == "slow":
            await asyncio.sleep(self.slow_seconds)
        channel = record.payload.get("channel", "C0")
        return web.json_response({"ok": True, "channel": channel, "ts": record.ts})
