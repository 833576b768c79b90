"""Real local HTTP servers (127.0.0.1, port 0), a fake clock and sample incidents."""

from __future__ import annotations

import asyncio
import base64
import copy
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson
from aiohttp import web

__all__ = [
    "FIXTURES",
    "REPORT_MIME",
    "FakeClock",
    "FakeHarbor",
    "LocalServer",
    "fixture_json",
    "make_incident",
]

FIXTURES = Path(__file__).parent / "fixtures"
REPORT_MIME = "application/vnd.security.vulnerability.report; version=1.1"

_INCIDENT: dict[str, Any] = {
    "id": "0" * 32,
    "status": "new",
    "correlation": "Shell then outbound connection",
    "type": "sequence",
    "severity": "Warning",
    "output": "Shell in checkout-7d9f (payments) then connection to 203.0.113.7:4444",
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
            "hostname": "worker-1",
            "output": "13:44:05.478445995: Notice A shell was spawned in a container",
            "output_fields": {"container.id": "ee97d9c4186f", "proc.name": "sh"},
            "tags": ["container", "shell", "mitre_execution"],
        },
        {
            "step": "connect",
            "uuid": "8b3b6e3c-1c0e-4e8f-9c59-5f6c1a0b0002",
            "time": "2023-05-25T13:46:01Z",
            "rule": "Outbound Connection to C2 Servers",
            "priority": "Warning",
            "hostname": "worker-1",
            "output": "13:46:01: Warning Outbound connection to C2 server",
            "output_fields": {"container.id": "ee97d9c4186f", "fd.name": "10.0.0.5:51234"},
            "tags": ["network", "mitre_command_and_control"],
        },
    ],
    "tags": ["mitre_execution", "mitre_command_and_control"],
    "context": {
        "hostname": "worker-1",
        "k8s.ns.name": "payments",
        "k8s.pod.name": "checkout-7d9f-x2",
        "container.id": "ee97d9c4186f",
        "container.name": "checkout",
        "container.image.repository": "harbor.example.com/payments/checkout-api",
        "container.image.tag": "1.4.2",
    },
    "enrichment": {},
    "detected_at": "2023-05-25T13:46:02.000000000Z",
    "ruleset": "5f1d0c3a",
}


def make_incident(**context: Any) -> dict[str, Any]:
    """A realistic incident (RULES-SPEC section 5); keyword arguments replace context
    fields (`container_image_repository=...` for `container.image.repository`)."""
    incident = copy.deepcopy(_INCIDENT)
    for key, value in context.items():
        incident["context"][key.replace("_", ".")] = value
    return incident


def fixture_json(name: str) -> Any:
    return orjson.loads((FIXTURES / name).read_bytes())


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class LocalServer:
    """An aiohttp app on 127.0.0.1 with an OS-chosen port; `async with` starts and stops it."""

    def __init__(self, app: web.Application) -> None:
        self._runner = web.AppRunner(app, handle_signals=False)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> LocalServer:
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()


@dataclass
class FakeHarbor:
    """Harbor's v2 API, as much as the enricher uses: the vulnerabilities addition (a JSON
    object keyed by report MIME type) and project lookup by name. Checks basic auth of the
    robot account. `mode`: `ok`, `500`, `slow` (answers after `delay`)."""

    username: str = "robot$falco-enricher"
    password: str = "s3cret"
    artifacts: dict[tuple[str, str, str], Any] = field(default_factory=dict)
    project_ids: dict[str, int] = field(default_factory=lambda: {"payments": 7})
    mode: str = "ok"
    delay: float = 1.0
    raw_paths: list[str] = field(default_factory=list)
    vulnerability_requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        raw = request.raw_path
        self.raw_paths.append(raw)
        expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401)
        if request.path == "/api/v2.0/projects":  # the project list (first page)
            return web.json_response(
                [{"project_id": i, "name": n} for n, i in sorted(self.project_ids.items())]
            )
        parts = raw.split("/")
        # /api/v2.0/projects/{p}/repositories/{r}/artifacts/{ref}/additions/vulnerabilities
        if len(parts) == 11 and parts[-2:] == ["additions", "vulnerabilities"]:
            return await self._vulnerabilities(parts[4], parts[6], parts[8])
        if len(parts) == 5 and parts[3] == "projects":
            if request.headers.get("X-Is-Resource-Name") != "true":
                return web.json_response({"errors": [{"code": "BAD_REQUEST"}]}, status=400)
            project_id = self.project_ids.get(parts[4])
            if project_id is None:
                return web.json_response({"errors": [{"code": "NOT_FOUND"}]}, status=404)
            return web.json_response({"project_id": project_id, "name": parts[4]})
        return web.json_response({"errors": [{"code": "NOT_FOUND"}]}, status=404)

    async def _vulnerabilities(self, project: str, repository: str, ref: str) -> web.Response:
        self.vulnerability_requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.mode == "500":
                return web.json_response({"errors": [{"code": "UNKNOWN"}]}, status=500)
            if self.mode == "slow":
                await asyncio.sleep(self.delay)
            else:
                await asyncio.sleep(0.01)
            # the router decodes once, Harbor once more for the repository name
            key = (unquote(project), unquote(unquote(repository)), unquote(ref))
            if key not in self.artifacts:
                return web.json_response(
                    {"errors": [{"code": "NOT_FOUND", "message": "artifact not found"}]},
                    status=404,
                )
            return web.json_response(self.artifacts[key])
        finally:
            self.in_flight -= 1
